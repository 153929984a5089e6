"""Every exit code the agent uses, in one place. Only the edge (agent.cli) maps errors to them.

Plain ints in a namespace class rather than an IntEnum: `enum` is a few milliseconds of start-up
in every pod's init container (istio-iptables), and nothing here needs more than the numbers.
Iterating the class (`set(Exit)`) yields the codes.
"""


class _Codes(type):
    def __iter__(cls):
        return iter([value for name, value in vars(cls).items() if name.isupper()])


class Exit(metaclass=_Codes):
    OK = 0
    #: A failure while running: host facts, validation, iptables-restore, route setup, Envoy failing.
    FAILURE = 1
    #: istio-iptables --run-validation failed (what Istio CNI's repair controller looks for).
    VALIDATION_FAILED = 126
    #: A bad command line or start-up error; pilot-agent's os.Exit(-1).
    USAGE = 255
