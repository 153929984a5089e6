"""Benchmark: the Istio init-container rule set applied with --native-nftables in a fresh pod
namespace, against one bare `nft -f -` of the same script.

    /opt/agent/bin/python bench/nft_apply.py [-n 15]

* ours:  `pilot-agent istio-iptables --native-nftables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15020`
  (reads our tables back, then one `nft -f -` that deletes and recreates them);
* floor: one bare `nft -f -` of Istio's transaction for the same flags (our --dry-run's stdout).

Each run gets a fresh pod netns (veth + address, as the test harness builds it) for each side; both
are started through `ip netns exec`, so the wrapper's cost is the same on both sides. Sides
alternate to spread drift. Prints the median wall and CPU times, their ratio, and the processes our
command spawned (counting PATH shims, tests/support/netns.Shims); the last line is the same as
JSON, for bench/run_all.py. Figures only, no pass/fail.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iptables_apply import INIT_ARGS, count_with_shims, run_python, timed  # noqa: E402
from tests.support.netns import IP, PILOT_AGENT, Pod  # noqa: E402

NFT_ARGS = ["--native-nftables", *INIT_ARGS]


def script_text() -> str:
    with Pod.create(prefix="bn") as pod:
        res = pod.istio_iptables(*NFT_ARGS, "--dry-run")
    if res.returncode != 0 or not res.stdout.startswith("add table"):
        raise SystemExit(f"dry run failed: {res.stderr}")
    return res.stdout


def run_ours() -> tuple[float, float]:
    with Pod.create(prefix="bo") as pod:
        return timed([IP, "netns", "exec", pod.ns.name, PILOT_AGENT, "istio-iptables", *NFT_ARGS])


def run_floor(text: str) -> tuple[float, float]:
    with Pod.create(prefix="bf") as pod:
        return timed([IP, "netns", "exec", pod.ns.name, "nft", "-f", "-"], stdin=text)


def measure(n: int) -> dict:
    text = script_text()
    run_ours(), run_floor(text)  # warm caches (modules, page cache) before measuring
    ours, floor = [], []
    for i in range(n):
        pair = (run_ours, lambda: run_floor(text))
        for fn in (pair if i % 2 == 0 else pair[::-1]):
            (ours if fn is run_ours else floor).append(fn())
    with Pod.create(prefix="bp") as pod:
        bare = [run_python(pod) for _ in range(n)]
    calls = count_with_shims(NFT_ARGS)

    def med(xs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(x[i] for x in xs) * 1000

    return {"figure": "nft_apply", "runs": n, "ours_ms": med(ours, 0), "floor_ms": med(floor, 0),
            "ratio": med(ours, 0) / med(floor, 0), "ours_cpu_ms": med(ours, 1), "floor_cpu_ms": med(floor, 1),
            "python_S_ms": med(bare, 0), "processes": len(calls), "process_list": calls,
            "script_lines": len(text.splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=15, help="runs per side (default 15)")
    args = ap.parse_args()
    r = measure(args.n)
    print(f"runs per side: {r['runs']}   script: {r['script_lines']} lines   "
          f"(load average now: {open('/proc/loadavg').read().split()[0]})")
    print(f"{'':38} {'wall median':>12} {'cpu median':>11}")
    for name, wall, cpu in (("pilot-agent istio-iptables --native-nftables", r["ours_ms"], r["ours_cpu_ms"]),
                            ("bare nft -f - (same script)", r["floor_ms"], r["floor_cpu_ms"])):
        print(f"{name:44} {wall:6.1f} ms {cpu:8.1f} ms")
    print(f"{'python -S -c pass (context)':44} {r['python_S_ms']:6.1f} ms")
    print(f"ratio ours/floor: wall median {r['ratio']:.2f}x")
    print(f"processes spawned (shims): {r['processes']}: {'; '.join(r['process_list'])}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
