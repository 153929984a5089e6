"""Benchmark: /healthz/ready latency at a steady 200 requests/s, vs Envoy's admin /ready at the same rate.

    /opt/agent/bin/python bench/sidecar_latency.py [--requests 2000] [--rounds 3]

Like kubelet, every probe is a new connection (`Connection: close`). Requests are sent on a fixed
schedule (every 5 ms; a late one goes at once, none are skipped) from this process, inside the
agent's own netns, alternating targets per round. Latency = connect to the end of the response.
p50/p99 per round; the figure is the median over rounds. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sidecar_common import Agent, emit, http_get, in_own_netns, median, percentile  # noqa: E402


def steady(port: int, path: str, n: int, rate: float) -> tuple[list[float], int]:
    """Latencies (s) of n GETs at `rate`/s, and how many did not answer 200."""
    period, lat, bad = 1.0 / rate, [], 0
    next_at = time.perf_counter()
    for _ in range(n):
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        start = time.perf_counter()
        status, _ = http_get(port, path, timeout=2.0)
        lat.append(time.perf_counter() - start)
        bad += status != 200
        next_at += period
    return lat, bad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="requests per target per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0)
    args = ap.parse_args()
    if (code := in_own_netns()) is not None:
        return code
    agent = Agent("--concurrency", "2", env={"TERMINATION_DRAIN_DURATION_SECONDS": "0"})
    rounds: dict[str, list[tuple[float, float]]] = {"ours": [], "envoy": []}
    errors = {"ours": 0, "envoy": 0}
    try:
        agent.wait_ready()
        steady(15020, "/healthz/ready", 100, args.rate)  # warm both paths
        steady(15000, "/ready", 100, args.rate)
        targets = [("ours", 15020, "/healthz/ready"), ("envoy", 15000, "/ready")]
        for r in range(args.rounds):
            for name, port, path in (targets if r % 2 == 0 else targets[::-1]):
                lat, bad = steady(port, path, args.requests, args.rate)
                rounds[name].append((percentile(lat, 0.5), percentile(lat, 0.99)))
                errors[name] += bad
        agent.stop()
    finally:
        agent.close()
    p = {name: (median(x[0] for x in v) * 1000, median(x[1] for x in v) * 1000) for name, v in rounds.items()}
    emit({"figure": "ready_latency", "rate": args.rate, "requests": args.requests, "rounds": args.rounds,
          "ours_p50_ms": p["ours"][0], "ours_p99_ms": p["ours"][1],
          "envoy_p50_ms": p["envoy"][0], "envoy_p99_ms": p["envoy"][1],
          "p99_ratio": p["ours"][1] / p["envoy"][1], "p50_ratio": p["ours"][0] / p["envoy"][0],
          "non_200": errors})
    return 0


if __name__ == "__main__":
    sys.exit(main())
