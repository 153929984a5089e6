"""Benchmark: the agent's resident memory, idle and ready in the mesh (Envoy excluded).

    /opt/agent/bin/python bench/agent_rss.py [--window 10] [-n 3]

The agent starts as today's injection starts it against the test istiod (bench/mesh_common.py):
workload certificate by CSR, SDS and the xDS proxy serving Envoy, status server. Once
:15020/healthz/ready answers 200 it is left idle for `--window` seconds and the agent process's
VmRSS (its own, not Envoy's: a separate process) is sampled every 0.5 s; VmHWM is its peak since
exec. Repeated `-n` times, fresh agent each time. Target: <= 55 MiB. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mesh_common import MeshBench  # noqa: E402
from bench.sidecar_common import emit, http_get, median, proc_rss_kib, wait_for  # noqa: E402

TARGET_MIB = 55.0


def one_run(bench: MeshBench, window: float, env: dict[str, str]) -> dict:
    proc = bench.start_agent(env)
    try:
        wait_for(lambda: http_get(15020, "/healthz/ready", timeout=1)[0] == 200, 60, 0.01, "agent ready")
        at_ready = proc_rss_kib(proc.pid) / 1024
        samples = []
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            samples.append(proc_rss_kib(proc.pid) / 1024)
            time.sleep(0.5)
        return {"at_ready_mib": at_ready, "idle_median_mib": median(samples), "idle_max_mib": max(samples),
                "peak_hwm_mib": proc_rss_kib(proc.pid, "VmHWM") / 1024}
    finally:
        bench.stop_agent(proc)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=10.0, help="idle seconds sampled after ready")
    ap.add_argument("-n", type=int, default=3, help="fresh agents")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra agent environment "
                    "(e.g. MALLOC_ARENA_MAX=2, to see what an allocator setting is worth)")
    args = ap.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    bench = MeshBench.create()
    try:
        runs = [one_run(bench, args.window, env) for _ in range(args.n)]
    finally:
        bench.close()
    idle = median([r["idle_median_mib"] for r in runs])
    emit({"figure": "agent_rss_ready_idle", "ours_mib": round(idle, 1), "target_mib": TARGET_MIB,
          "ratio_to_target": round(idle / TARGET_MIB, 3),
          "at_ready_mib": round(median([r["at_ready_mib"] for r in runs]), 1),
          "idle_max_mib": round(max(r["idle_max_mib"] for r in runs), 1),
          "peak_hwm_mib": round(max(r["peak_hwm_mib"] for r in runs), 1),
          "window_s": args.window, "runs": args.n, "env": env,
          "baseline": "Istio's Go agent: about 25 MB (proxyless-gRPC blog) to 50 MB observed (istio/istio#38000)"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
