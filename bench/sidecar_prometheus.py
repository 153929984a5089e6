"""Benchmark: the merged /stats/prometheus with 1,000 clusters pushed by the test control plane.

    /opt/agent/bin/python bench/sidecar_prometheus.py [-n 15] [--clusters 1000]

In a netns of its own: the test ADS server (tests/support/ads.py, in this process) serves N STATIC
clusters and one listener; the agent runs with the 2020 control-plane flags (`--discoveryAddress
127.0.0.1:15010 --controlPlaneAuthPolicy NONE`). Once Envoy ACKed the clusters and the agent is ready:

* time:   GET :15020/stats/prometheus (ours: Envoy's stats + the agent's, merged) vs GET
          :15090/stats/prometheus (Envoy's own), alternating, medians (target <= 1.3x);
* memory: the agent's peak RSS during the measured scrapes (VmHWM, reset through
          /proc/<pid>/clear_refs) minus its RSS after one warm-up scrape, vs the merged body size
          (target <= 2x the body). The first scrape's one-time cost (the agent imports and builds
          its metrics registry on first use) is reported apart: RSS after it minus the idle RSS.

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sidecar_common import (Agent, emit, http_get, in_own_netns, median, proc_rss_kib,
                                  wait_for)  # noqa: E402

ENV = {"POD_NAME": "bench-0", "POD_NAMESPACE": "bench", "INSTANCE_IP": "127.0.0.1",
       "TERMINATION_DRAIN_DURATION_SECONDS": "0", "ISTIO_DELTA_XDS": "false"}  # the test ADS server: SotW only


def timed_get(port: int, path: str) -> tuple[float, int, int]:
    start = time.perf_counter()
    status, body = http_get(port, path, timeout=30)
    return time.perf_counter() - start, status, len(body)


def active_clusters() -> int:
    _, body = http_get(15000, "/stats?filter=^cluster_manager.active_clusters$", timeout=5)
    try:
        return int(body.split(b":")[-1])
    except ValueError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=15, help="scrapes per side")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--matcher", choices=("cluster", "istio-default"), default="cluster",
                    help="cluster: proxyStatsMatcher inclusionPrefixes [cluster.] (every cluster's stats, the "
                         "heavy case); istio-default: Istio's default inclusion list (small body)")
    args = ap.parse_args()
    if (code := in_own_netns()) is not None:
        return code
    from tests.support.ads import CLUSTER, AdsServer, many_clusters, tcp_listener

    with AdsServer("127.0.0.1", 15010) as ads:
        ads.set(clusters=many_clusters(args.clusters), listeners=[tcp_listener("front", "127.0.0.1", 10000, "cluster-00000")])
        env = dict(ENV)
        if args.matcher == "cluster":
            env["PROXY_CONFIG"] = json.dumps({"proxyStatsMatcher": {"inclusionPrefixes": ["cluster."]}})
        agent = Agent("--discoveryAddress", "127.0.0.1:15010", "--controlPlaneAuthPolicy", "NONE", "--concurrency", "2",
                      env=env, standalone=False)
        try:
            agent.wait_ready(60)
            ads.wait_acked(CLUSTER, timeout=60)
            wait_for(lambda: active_clusters() >= args.clusters, 60, 0.2, "every cluster active in Envoy")
            ours_t, envoy_t, ours_size, envoy_size, sizes = [], [], 0, 0, []
            rss_idle = proc_rss_kib(agent.pid)
            timed_get(15020, "/stats/prometheus"), timed_get(15090, "/stats/prometheus")  # warm up
            rss_before = proc_rss_kib(agent.pid)
            Path(f"/proc/{agent.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            timed_get(15020, "/stats/prometheus"), timed_get(15090, "/stats/prometheus")
            for i in range(args.n):
                for side in (("ours", "envoy") if i % 2 == 0 else ("envoy", "ours")):
                    if side == "ours":
                        t, status, ours_size = timed_get(15020, "/stats/prometheus")
                        sizes.append(ours_size)
                        ours_t.append(t)
                    else:
                        t, status, envoy_size = timed_get(15090, "/stats/prometheus")
                        envoy_t.append(t)
                    if status != 200:
                        raise SystemExit(f"{side}: HTTP {status}")
            peak = proc_rss_kib(agent.pid, "VmHWM")
            rss_after = proc_rss_kib(agent.pid)
            agent.stop()
        finally:
            agent.close()
    growth = (peak - rss_before) * 1024
    emit({"figure": "prometheus", "clusters": args.clusters, "matcher": args.matcher, "ours_ms": median(ours_t) * 1000,
          "envoy_ms": median(envoy_t) * 1000, "ratio": median(ours_t) / median(envoy_t),
          "ours_body_bytes": ours_size, "envoy_body_bytes": envoy_size,
          "rss_idle_mib": rss_idle / 1024, "first_scrape_bytes": (rss_before - rss_idle) * 1024,
          "rss_before_mib": rss_before / 1024, "peak_mib": peak / 1024, "rss_after_mib": rss_after / 1024,
          "growth_bytes": growth, "ours_sizes": sizes, "growth_over_body": growth / ours_size if ours_size else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
