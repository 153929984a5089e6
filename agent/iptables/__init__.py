"""`pilot-agent istio-iptables`: the pod's traffic capture, as Istio's init container sets it up.

Start-up cost, measured once (bench/iptables_imports.py: each import on top of what this path
imports anyway). This runs in every pod's init container, so the rule here is: a construct that
avoids a standard-library import stays only where it saves 5 ms or more of the run; otherwise the
idiom is used. What that leaves:

* value classes are `agent.iptables.record.Record`, not `@dataclass(frozen=True, slots=True)`: the
  five of this path cost 6.1-6.4 ms as dataclasses (3.5 of it the dataclasses import) and 0.3 ms as
  Records.
* modules only some flags need are imported in the function that needs them, as optional features
  usually are: ipaddress (0.7 ms) for CIDR flags, shlex and difflib (0.7 ms) for --verify,
  validation's threads for --run-validation, routes for TPROXY/IPv6. Importing them at the top
  would be the idiom as well, but subprocess (2.0 ms) and socket (1.1 ms), which replaced
  os.posix_spawnp and _socket, already make the apply 3-4 ms slower, and these would take it past
  the 5 ms it may grow by.
* the log writer is not `logging` (agent.iptables.logger).

Everything else is the plain idiom: typing, re, enum, subprocess, socket, collections.abc.
"""
