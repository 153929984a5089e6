"""Benchmark: the Istio init-container rule set applied in a fresh pod namespace, two ways.

    /opt/agent/bin/python bench/iptables_apply.py [-n 15]

* ours:  `pilot-agent istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15020`
* floor: one bare `iptables-restore --noflush` of the same rule text (taken from our --dry-run).

Each run gets a fresh pod netns (veth + address, as the harness builds it) for each side; both
are started through `ip netns exec`, so the wrapper's cost is the same on both sides. Sides
alternate to spread drift. Prints the median wall times, their ratio, and the number of
processes our command spawned, counted two ways:

* counting shims: PATH points at a directory of shims (one per executable in the system bin
  directories) that log their name and exec the real program; every process spawned by name is
  logged (our runner only spawns by name);
* strace, when installed: `strace -f -e trace=execve`, counting the processes that exec'd,
  minus our own interpreter.

Prints figures only; no pass/fail (the issue's targets: ratio <= 4, processes <= 4).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.netns import IP, PILOT_AGENT, Pod, Shims  # noqa: E402

INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
             "-b", "*", "-d", "15090,15020"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rule_text() -> str:
    with Pod.create(prefix="bn") as pod:
        out = pod.istio_iptables(*INIT_ARGS, "--dry-run").stdout
    return "".join(line + "\n" for line in out.splitlines() if not line.endswith("-save"))


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: list[str], stdin: str | None = None, env: dict | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds of one command and all its children."""
    cpu0, start = _cpu(), time.perf_counter()
    cp = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env or {"PATH": PATH})
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu0
    if cp.returncode != 0:
        raise SystemExit(f"{argv!r} failed: {cp.stderr}")
    return elapsed, cpu


def run_ours() -> tuple[float, float]:
    with Pod.create(prefix="bo") as pod:
        return timed([IP, "netns", "exec", pod.ns.name, PILOT_AGENT, "istio-iptables", *INIT_ARGS])


def run_floor(text: str) -> tuple[float, float]:
    with Pod.create(prefix="bf") as pod:
        return timed([IP, "netns", "exec", pod.ns.name, "iptables-restore", "--noflush"], stdin=text)


def run_python(pod: Pod) -> tuple[float, float]:
    """Context: a bare interpreter start (no site) through the same wrapper."""
    return timed([IP, "netns", "exec", pod.ns.name, sys.executable, "-S", "-c", "pass"])


def count_with_shims(args: Sequence[str] = tuple(INIT_ARGS)) -> list[str]:
    """The processes `pilot-agent istio-iptables <args>` spawns in a fresh pod, counted by PATH shims."""
    with tempfile.TemporaryDirectory() as tmp, Pod.create(prefix="bs") as pod:
        shims = Shims(Path(tmp))
        res = pod.istio_iptables(*args, env=shims.env)
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        return shims.calls()


def count_with_strace() -> list[str] | None:
    if not shutil.which("strace"):
        return None
    with tempfile.TemporaryDirectory() as tmp, Pod.create(prefix="bt") as pod:
        log = Path(tmp) / "trace"
        pod.ns.run(["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", str(log),
                    PILOT_AGENT, "istio-iptables", *INIT_ARGS], env={"PATH": PATH})
        execs = [line for line in log.read_text().splitlines() if "execve(" in line and "= 0" in line]
    # the first successful execs are our own command (the script, then its interpreter via the
    # shebang); everything after is a child
    pids = list(dict.fromkeys(line.split()[0] for line in execs))
    return [next(line for line in execs if line.startswith(pid + " ")) for pid in pids[1:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=15, help="runs per side (default 15)")
    args = ap.parse_args()
    text = rule_text()
    run_ours(), run_floor(text)  # warm caches (modules, page cache) before measuring
    ours, floor = [], []
    for i in range(args.n):
        if i % 2:
            floor.append(run_floor(text))
            ours.append(run_ours())
        else:
            ours.append(run_ours())
            floor.append(run_floor(text))
    with Pod.create(prefix="bp") as pod:
        bare = [run_python(pod) for _ in range(args.n)]
    shim_calls = count_with_shims()
    strace_calls = count_with_strace()
    def med(xs, i):
        return statistics.median(x[i] for x in xs) * 1000

    print(f"runs per side: {args.n}   (load average now: {open('/proc/loadavg').read().split()[0]})")
    print(f"{'':28} {'wall median':>12} {'wall min':>9} {'cpu median':>11}")
    for name, xs in (("pilot-agent istio-iptables", ours), ("bare iptables-restore", floor),
                     ("python -S -c pass (context)", bare)):
        print(f"{name:28} {med(xs, 0):9.1f} ms {min(x[0] for x in xs) * 1000:6.1f} ms {med(xs, 1):8.1f} ms")
    print(f"ratio ours/floor: wall median {med(ours, 0) / med(floor, 0):.2f}x, wall min "
          f"{min(x[0] for x in ours) / min(x[0] for x in floor):.2f}x, cpu median {med(ours, 1) / med(floor, 1):.2f}x"
          "   (target <= 4x)")
    print(f"processes spawned (shims):  {len(shim_calls)}   (target <= 4): {'; '.join(shim_calls)}")
    if strace_calls is None:
        print("processes spawned (strace): strace not installed")
    else:
        names = [line.split('execve("', 1)[1].split('"', 1)[0] for line in strace_calls]
        print(f"processes spawned (strace): {len(names)}: {'; '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
