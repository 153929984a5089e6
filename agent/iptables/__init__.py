"""`pilot-agent istio-iptables`: the pod's traffic capture, as Istio's init container sets it up.

Start-up cost, measured once (bench/iptables_imports.py, on top of what this path imports anyway):
this runs in every pod's init container, and the whole apply takes about 15-30 ms, so an import
matters here. The rule this package follows: a construct that avoids a standard-library import
stays only where it saves 5 ms or more of the run, or where the idioms together would cost more
than the 5 ms the apply may grow by. What that leaves:

* value classes are `agent.record.Record`, not `@dataclass(frozen=True, slots=True)`: the five of
  this path cost 7.8 ms as dataclasses (5.3 ms of it the dataclasses import) and 0.7 ms as Records;
* commands are spawned with os.posix_spawnp and pipes (agent.iptables.runner), and host facts use
  `_socket` (agent.iptables.host): subprocess and socket would add 3.7 and 1.5 ms, and on top of
  typing (3.1 ms, which this path does import: Protocol, dataclass_transform) they would take the
  apply past its 5 ms budget;
* modules needed only by some flags (ipaddress for CIDRs, shlex/difflib for --verify, validation's
  sockets and threads for --run-validation, routes for TPROXY/IPv6) are imported where used;
* the log writer is not `logging` (agent.iptables.logger).

Everything else is the plain idiom: typing, re, enum, collections.abc.
"""
