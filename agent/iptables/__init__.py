"""`pilot-agent istio-iptables`: the pod's traffic capture, as Istio's init container sets it up.

Start-up cost, measured once (bench/iptables_imports.py: each import on top of what this path
imports anyway). This runs in every pod's init container, so the rule here is: a construct that
avoids a standard-library import stays only where it saves 5 ms or more of the run, or where the
idioms together would make the apply more than 5 ms slower. What that leaves:

* value classes are `agent.iptables.record.Record`, not `@dataclass(frozen=True, slots=True)`: the
  five of this path cost 7.8 ms as dataclasses (5.3 ms of it the dataclasses import), 0.7 ms as
  Records;
* modules only some flags need are imported where they are used: ipaddress (1.2 ms) for CIDR
  flags, shlex and difflib (2.0 ms) for --verify, validation's threads for --run-validation, routes
  for TPROXY/IPv6. subprocess (3.7 ms) and socket (1.5 ms), which every run needs, already take
  the apply 3-4 ms past its old time; ipaddress on top would pass the 5 ms;
* the log writer is not `logging` (agent.iptables.logger).

Everything else is the plain idiom: typing, re, enum, subprocess, socket, collections.abc.
"""
