"""Benchmark: mesh start to ready, the agent against bare Envoy, against the same test istiod.

    /opt/agent/bin/python bench/mesh_start.py [-n 7]

* ours:     exec `pilot-agent proxy sidecar` with today's injected args and env (uid 1337, the pod's root
            as working directory, istiod at istiod.istio-system.svc:15012 in another namespace)
            -> first 200 from :15020/healthz/ready. Ready means Envoy has its config (CDS and LDS)
            and the workload certificate the agent got by CSR, over the agent's SDS and xDS proxy.
* baseline: exec Envoy with the agent's own Envoy argv but a static bootstrap dialling istiod itself
            (TLS, token as initial metadata) with pre-issued file certificates as static secrets
            -> admin /ready `LIVE` with cluster_manager.cds.update_success and
            listener_manager.lds.update_success both >= 1. The bootstrap is the one the agent
            rendered (Istio's, so Envoy does the same work) with xds-grpc pointed at istiod; a
            minimal bootstrap (admin, ADS, the secrets) is measured too (`baseline_minimal_s`).

Both get the same resources (an ISTIO_MUTUAL outbound cluster that waits for its secrets, and the
listeners). Polled every 2 ms with a raw HTTP GET from inside the pod namespace; runs alternate
sides. Prints one JSON line: medians, the ratio (target <= 2.5x), when the agent spawned Envoy, and
the last run's agent log as a timeline (ms since exec), and with --profile the agent's slowest
top-level imports (PYTHONPROFILEIMPORTTIME) in one more run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mesh_common import MeshBench, bare_argv, envoy_spawned_after, timeline  # noqa: E402
from bench.sidecar_common import emit, http_get, median, wait_for  # noqa: E402

TARGET = 2.5
CONFIG_STATS = "/stats?filter=^(cluster_manager.cds.update_success|listener_manager.lds.update_success)$"


@dataclass
class OurRun:
    seconds: float
    envoy_spawned_after: float | None  # as the agent logs it
    envoy_argv: list[str]
    bootstrap: dict
    csr: bool  # the certificate came from a CSR (not from files)
    timeline: list[tuple[float, str]]  # the agent's log, ms since exec


def run_ours(bench: MeshBench) -> OurRun:
    exec_wall = time.time()
    start = time.monotonic()
    proc = bench.start_agent()
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}:\n{bench.agent_log()[-3000:]}")
            return http_get(15020, "/healthz/ready", timeout=1)[0] == 200
        wait_for(ready, 60, 0.002, "agent ready")
        took = time.monotonic() - start
        argv, rendered = bench.envoy_argv(proc), bench.rendered_bootstrap()
    finally:
        bench.stop_agent(proc)
    log = bench.agent_log().rsplit("Version ", 1)[-1]
    return OurRun(took, envoy_spawned_after(log), argv, rendered, "generated new workload certificate" in log,
                  timeline("Version " + log, exec_wall))


def import_profile(bench: MeshBench) -> dict:
    """One more agent run with PYTHONPROFILEIMPORTTIME=1: where its start-up time goes on imports."""
    offset = bench.pod.root.parent.joinpath(f"{bench.pod.name}-agent.log").stat().st_size
    start = time.monotonic()
    proc = bench.start_agent(env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        wait_for(lambda: http_get(15020, "/healthz/ready", timeout=1)[0] == 200, 60, 0.002, "agent ready")
        took = time.monotonic() - start
    finally:
        bench.stop_agent(proc)
    top: list[tuple[str, float]] = []
    total = 0.0
    for line in bench.agent_log()[offset:].splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not name.startswith("  "):  # top-level imports only (nested ones are indented further)
            ms = int(cumulative) / 1000
            total += ms
            top.append((name.strip(), round(ms, 1)))
    top.sort(key=lambda t: -t[1])
    return {"profiled_run_s": round(took, 4), "imports_total_ms": round(total, 1), "imports_top_ms": top[:10]}


def _bare_ready(proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"envoy exited {proc.returncode}")
    status, body = http_get(15000, "/ready", timeout=1)
    if status != 200 or body.strip() != b"LIVE":
        return False
    _, stats = http_get(15000, CONFIG_STATS, timeout=1)
    values = [int(line.rpartition(b": ")[2]) for line in stats.splitlines() if b": " in line]
    return len(values) == 2 and min(values) >= 1


def run_bare(bench: MeshBench, argv: list[str]) -> float:
    start = time.monotonic()
    proc = bench.start_bare_envoy(argv)
    try:
        wait_for(lambda: _bare_ready(proc), 60, 0.002, "envoy LIVE with CDS and LDS")
        return time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=7, help="runs per side")
    ap.add_argument("--profile", action="store_true", help="add an import-time profile of one more agent run")
    args = ap.parse_args()
    bench = MeshBench.create()
    try:
        warm = run_ours(bench)  # warm-up; its Envoy argv and bootstrap make the baselines
        sides = {"istio": bare_argv(warm.envoy_argv, bench.istio_bare_config(warm.bootstrap)),
                 "minimal": bare_argv(warm.envoy_argv, bench.bare_config())}
        for argv in sides.values():
            run_bare(bench, argv)
        ours: list[OurRun] = []
        bare: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(args.n):
            order = ["ours", *sides] if i % 2 == 0 else [*sides, "ours"]
            for side in order:
                if side == "ours":
                    ours.append(run_ours(bench))
                else:
                    bare[side].append(run_bare(bench, sides[side]))
        profile = import_profile(bench) if args.profile else {}
        ours_s = median([r.seconds for r in ours])
        spawned = [r.envoy_spawned_after for r in ours if r.envoy_spawned_after is not None]
        emit({"figure": "mesh_start_to_ready", "ours_s": ours_s, "baseline_s": median(bare["istio"]),
              "ratio": ours_s / median(bare["istio"]), "target": TARGET, "runs": args.n,
              "baseline_minimal_s": median(bare["minimal"]), "ratio_to_minimal": ours_s / median(bare["minimal"]),
              "all_by_csr": all(r.csr for r in ours),
              "agent_spawned_envoy_after_s": median(spawned) if spawned else None,
              "ours_all": [round(r.seconds, 4) for r in ours],
              "baseline_all": [round(x, 4) for x in bare["istio"]],
              "baseline_minimal_all": [round(x, 4) for x in bare["minimal"]],
              "envoy_argv": " ".join(sides["istio"]), "last_run_timeline_ms": ours[-1].timeline, **profile})
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
