"""Benchmark: the agent's memory and CPU when idle and ready (Envoy excluded), in a netns of its own.

    /opt/agent/bin/python bench/sidecar_idle.py [--window 60]

* RSS: VmRSS of the agent process (not Envoy, its child) 2 s after ready, vs the peak RSS of a bare
  `python -c pass` of the same interpreter (target: report MiB, <= 40 MiB for the agent).
* CPU: utime+stime of the agent process over `--window` seconds of idleness after ready
  (target <= 1% of one core). Envoy's own CPU is excluded (it is a child not yet waited for).

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sidecar_common import PY, Agent, emit, in_own_netns, median, proc_cpu_seconds, proc_rss_kib  # noqa: E402


def bare_python_rss_kib(runs: int = 5) -> float:
    """ru_maxrss of `python -c pass` (the process's own peak RSS), median of `runs`."""
    values = []
    for _ in range(runs):
        proc = subprocess.Popen([PY, "-c", "pass"])
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        values.append(usage.ru_maxrss)
    return median(values)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=60.0, help="idle CPU window, seconds")
    args = ap.parse_args()
    if (code := in_own_netns()) is not None:
        return code
    agent = Agent("--concurrency", "2", env={"TERMINATION_DRAIN_DURATION_SECONDS": "0"})
    try:
        agent.wait_ready()
        time.sleep(2.0)
        rss = proc_rss_kib(agent.pid)
        hwm = proc_rss_kib(agent.pid, "VmHWM")
        envoy_rss = proc_rss_kib(agent.envoy_pid()) if agent.envoy_pid() else None
        cpu0, t0 = proc_cpu_seconds(agent.pid), time.monotonic()
        time.sleep(args.window)
        cpu1, t1 = proc_cpu_seconds(agent.pid), time.monotonic()
        rss_after = proc_rss_kib(agent.pid)
        agent.stop()
    finally:
        agent.close()
    bare = bare_python_rss_kib()
    emit({"figure": "idle", "rss_mib": rss / 1024, "rss_after_window_mib": rss_after / 1024, "peak_mib": hwm / 1024,
          "bare_python_mib": bare / 1024, "rss_ratio": rss / bare,
          "envoy_rss_mib": envoy_rss / 1024 if envoy_rss else None,
          "cpu_window_s": t1 - t0, "cpu_s": cpu1 - cpu0, "cpu_pct_core": 100 * (cpu1 - cpu0) / (t1 - t0)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
