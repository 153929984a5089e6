"""Every exit code the agent uses, in one place. Only the edges (agent.cli and each mode's `run`)
map errors to them."""
import enum


class Exit(enum.IntEnum):
    OK = 0
    #: A failure while running: host facts, validation, iptables-restore, route setup, Envoy failing.
    FAILURE = 1
    #: istio-iptables --run-validation failed (what Istio CNI's repair controller looks for).
    VALIDATION_FAILED = 126
    #: A bad command line or start-up error; pilot-agent's os.Exit(-1).
    USAGE = 255
