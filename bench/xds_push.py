"""A push of 5,000 clusters (about 6 MB) from the test istiod to a real Envoy: through the xDS proxy
vs Envoy connected straight to istiod (TLS + token either way).

    /opt/agent/bin/python bench/xds_push.py [--clusters 5000] [--rounds 3] [--flavour delta|sotw|both]

Per round and path: Envoy starts with one cluster, then istiod replaces it with N clusters; the figure
is the time from istiod's set() to Envoy's `cluster_manager.cds.update_success` counting the push
(Envoy's admin polled every 10 ms). The proxy runs in a process of its own; its memory growth at peak
is VmHWM (peak RSS) after the push minus VmRSS just before it, and settled growth VmRSS 0.3 s after
the update minus the same. Rounds alternate the two paths; medians
are printed, and the last stdout line is one JSON object (bench/run_all.py's convention).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402

from tests.mesh.ca_server import TestPKI  # noqa: E402
from tests.mesh.envoy_mesh import bootstrap, envoy, envoy_log, free_port, plain_clusters, stat  # noqa: E402
from tests.mesh.istiod import CLUSTER, TestIstiod  # noqa: E402
from tests.mesh.sds_fakes import short_tmp  # noqa: E402

PROXY_MAIN = """
import asyncio, sys
from agent.mesh.upstream import UpstreamOptions
from agent.mesh.xds_proxy import XdsProxy, XdsProxyOptions
address, root, token, path = sys.argv[1:5]
async def main():
    proxy = XdsProxy(UpstreamOptions(address=address, root_cert_path=root, token_path=token),
                     XdsProxyOptions(socket_path=path))
    await proxy.start()
    print("listening", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


async def wait_stat(admin: int, name: str, at_least: int, timeout: float, workdir: str) -> float:
    deadline = time.monotonic() + timeout
    while await stat(admin, name) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} < {at_least} after {timeout}s:\n{envoy_log(workdir)}")
        await asyncio.sleep(0.01)
    return time.monotonic()


class Bench:
    def __init__(self, istiod: TestIstiod, workdir: str, clusters: list, small: list) -> None:
        self.istiod, self.workdir, self.clusters, self.small = istiod, workdir, clusters, small
        self.root = f"{workdir}/root-cert.pem"
        self.token = f"{workdir}/istio-token"

    def start_proxy(self, path: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", PROXY_MAIN, f"localhost:{self.istiod.port}", self.root,
                                 self.token, path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        for line in proc.stdout:  # its log lines, then ours
            if line.strip() == b"listening":
                return proc
        raise RuntimeError("the proxy process exited before listening")

    async def round(self, via_proxy: bool, delta: bool) -> dict:
        self.istiod.set(CLUSTER, self.small)
        admin = free_port()
        proxy = None
        if via_proxy:
            proxy = self.start_proxy(f"{self.workdir}/XDS")
            config = bootstrap(admin, delta=delta, xds_pipe=f"{self.workdir}/XDS")
        else:
            with open(self.token) as f:
                config = bootstrap(admin, delta=delta, istiod=("127.0.0.1", self.istiod.port),
                                   root_pem_path=self.root, token=f.read())
        try:
            with envoy(config, self.workdir):
                await wait_stat(admin, "cluster_manager.cds.update_success", 1, 30, self.workdir)
                await asyncio.sleep(0.3)  # settle: ACKs in, proxy idle
                before = memory_kib(proxy.pid) if proxy else {}
                started = time.monotonic()
                self.istiod.set(CLUSTER, self.clusters)
                done = await wait_stat(admin, "cluster_manager.cds.update_success", 2, 120, self.workdir)
                await asyncio.sleep(0.3)
                after = memory_kib(proxy.pid) if proxy else {}
        finally:
            if proxy:
                proxy.kill()
                proxy.wait()
        result = {"seconds": done - started}
        if proxy:
            result.update(rss_before_kib=before["VmRSS"], hwm_before_kib=before["VmHWM"], peak_kib=after["VmHWM"],
                          growth_kib=max(0, after["VmHWM"] - before["VmRSS"]),
                          settled_kib=after["VmRSS"] - before["VmRSS"])
        return result


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flavour", choices=("delta", "sotw", "both"), default="both")
    args = ap.parse_args()
    workdir = short_tmp("bxp")
    pki = TestPKI()
    pki.write_root(f"{workdir}/root-cert.pem")
    with open(f"{workdir}/istio-token", "w") as f:
        f.write(pki.token("ns1", "productpage"))
    clusters, small = plain_clusters(args.clusters), plain_clusters(1)
    size = discovery_pb2.DiscoveryResponse(resources=[_any(c) for c in clusters]).ByteSize()
    print(f"push: {args.clusters} clusters, {size / 1e6:.2f} MB serialized", flush=True)
    out = {"figure": "xds_push", "clusters": args.clusters, "push_bytes": size}
    try:
        async with TestIstiod(pki) as istiod:
            bench = Bench(istiod, workdir, clusters, small)
            flavours = ("delta", "sotw") if args.flavour == "both" else (args.flavour,)
            for flavour in flavours:
                out[flavour] = await measure(bench, flavour == "delta", args.rounds, size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out))
    return 0


def _any(message):
    from google.protobuf import any_pb2

    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def measure(bench: Bench, delta: bool, rounds: int, size: int) -> dict:
    direct, proxied = [], []
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for via_proxy in order:
            (proxied if via_proxy else direct).append(await bench.round(via_proxy, delta))
    d = statistics.median(r["seconds"] for r in direct)
    p = statistics.median(r["seconds"] for r in proxied)
    growth = statistics.median(r["growth_kib"] for r in proxied) * 1024
    settled = statistics.median(r["settled_kib"] for r in proxied) * 1024
    name = "delta" if delta else "sotw"
    print(f"{name}: direct {d:.3f} s, through the proxy {p:.3f} s, ratio {p / d:.2f}; proxy memory growth "
          f"at peak {growth / 1e6:.1f} MB = {growth / size:.2f}x the push, {settled / 1e6:.1f} MB = "
          f"{settled / size:.2f}x 0.3 s after (RSS before "
          f"{statistics.median(r['rss_before_kib'] for r in proxied) / 1024:.1f} MiB, peak before "
          f"{statistics.median(r['hwm_before_kib'] for r in proxied) / 1024:.1f} MiB)", flush=True)
    return {"direct_s": d, "proxy_s": p, "ratio": p / d, "proxy_growth_bytes": growth,
            "growth_vs_push": growth / size, "settled_growth_bytes": settled, "settled_vs_push": settled / size,
            "direct_runs": [r["seconds"] for r in direct],
            "proxy_runs": [r["seconds"] for r in proxied]}


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
