"""The DNS proxy's latency and memory: mesh names answered from a 10,000-name table, and forwarded
names against the same queries sent straight to the resolver (Debian's dnsmasq on loopback).

    /opt/agent/bin/python bench/dns_proxy.py [--rate 1000] [--seconds 5] [--names 10000]

The proxy runs in a process of its own (tests/mesh/dns_runner.py), as in the agent. The client
sends UDP queries paced at --rate per second (one outstanding at a time, the next at its scheduled
time), latency = reply received minus query sent. Series: mesh names (random names of the table),
forwarded names through the proxy, and the same forwarded names straight to dnsmasq; series are
interleaved in rounds so background load hits them alike. Target: forwarded p50 and p99 at most
1.2x direct + 0.5 ms. Memory: the proxy's VmRSS with an empty table, then after the 10,000-name
table was swapped in (SIGHUP; the runner drops the garbage of reading its JSON file and trims the
heap first, as the agent's xDS relay does after a big push), and how long building it took. The last stdout line is one JSON
object (bench/run_all.py's convention).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dns.message  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from agent.mesh.protos import nds_pb2  # noqa: E402
from tests.mesh.dns_helpers import dnsmasq_argv, external, kube  # noqa: E402

PY = sys.executable
RUNNER = str(REPO / "tests" / "mesh" / "dns_runner.py")
EXTERNAL = 200


def big_table(n: int) -> nds_pb2.NameTable:
    """n hosts: 80 % Kubernetes services over 100 namespaces (4 aliases each, some dual-stack),
    20 % ServiceEntries with auto-allocated VIPs."""
    t = nds_pb2.NameTable()
    for i in range(n):
        v4 = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        if i % 5:
            ips = (v4, f"fd00::{i:x}") if i % 3 == 0 else (v4,)
            kube(t, f"svc{i}", f"ns{i % 100}", *ips)
        else:
            external(t, f"host{i}.example.com", f"240.240.{i // 256 % 256}.{i % 256}")
    return t


def mesh_names(n: int) -> list[str]:
    names = []
    for i in range(n):
        names.append(f"svc{i}.ns{i % 100}.svc.cluster.local." if i % 5 else f"host{i}.example.com.")
    return names


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def series(addr: tuple[str, int], names: list[str], rate: float, seconds: float) -> list[float]:
    """Latencies in ms of paced UDP A queries for random `names`."""
    count = int(rate * seconds)
    rng = random.Random(7)
    wires = [dns.message.make_query(rng.choice(names), "A") for _ in range(count)]
    out: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.settimeout(2)
        start = time.perf_counter()
        for i, q in enumerate(wires):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            wire = q.to_wire()
            sent = time.perf_counter()
            s.send(wire)
            try:
                while True:
                    data = s.recv(65535)
                    if data[:2] == wire[:2]:
                        break
            except TimeoutError:
                out.append(2000.0)
                continue
            out.append((time.perf_counter() - sent) * 1e3)
            reply = dns.message.from_wire(data)
            assert reply.answer, f"no answer for {q.question[0].name}"
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(values: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(values), 3), "p99_ms": round(pct(values, 99), 3),
            "n": len(values)}


def start_proxy(workdir: Path, table: Path, resolver_port: int) -> tuple[subprocess.Popen, tuple]:
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\n")
    proc = subprocess.Popen([PY, RUNNER, "serve", "--table", str(table), "--address", "127.0.0.1:0",
                             "--resolv-conf", str(resolv), "--upstream-port", str(resolver_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        raise RuntimeError(f"proxy did not start: {line}")
    host, port = line[1].rsplit(":", 1)
    return proc, (host, int(port))


def start_resolver(workdir: Path) -> tuple[subprocess.Popen, int]:
    hosts = workdir / "hosts"
    hosts.write_text("".join(f"198.18.5.{i % 250 + 1} ext{i}.external.test\n" for i in range(EXTERNAL)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(dnsmasq_argv(["127.0.0.1"], hosts, port=port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            series(("127.0.0.1", port), ["ext0.external.test."], 100, 0.01)
            return proc, port
        except (AssertionError, OSError):
            time.sleep(0.1)
    raise RuntimeError("dnsmasq did not answer")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--names", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    procs: list[subprocess.Popen] = []
    try:
        resolver, port = start_resolver(workdir)
        procs.append(resolver)
        table_file = workdir / "table.json"
        table_file.write_text("")
        proxy, addr = start_proxy(workdir, table_file, port)
        procs.append(proxy)
        time.sleep(0.5)
        empty_kib = rss_kib(proxy.pid)
        table_file.write_text(json_format.MessageToJson(big_table(args.names)))
        proxy.send_signal(signal.SIGHUP)
        updated = proxy.stdout.readline().split()  # "updated <hosts> <seconds>"
        time.sleep(0.5)
        full_kib = rss_kib(proxy.pid)
        mesh = mesh_names(args.names)
        external_names = [f"ext{i}.external.test." for i in range(EXTERNAL)]
        runs: dict[str, list[float]] = {"mesh": [], "forwarded": [], "direct": []}
        per = args.seconds / args.rounds
        for _ in range(args.rounds):
            runs["mesh"] += series(addr, mesh, args.rate, per)
            runs["forwarded"] += series(addr, external_names, args.rate, per)
            runs["direct"] += series(("127.0.0.1", port), external_names, args.rate, per)
        # an NDS push of the whole table again while mesh names are being asked
        threading.Timer(0.3, proxy.send_signal, (signal.SIGHUP,)).start()
        during = series(addr, mesh, args.rate, 1.5)
        rebuilt = proxy.stdout.readline().split()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    out = {"figure": "dns_proxy", "rate_qps": args.rate, "names": args.names,
           **{k: summary(v) for k, v in runs.items()},
           "mesh_during_update": {**summary(during), "max_ms": round(max(during), 3),
                                  "rebuild_s": float(rebuilt[2]) if len(rebuilt) > 2 else None},
           "table_build_s": float(updated[2]) if len(updated) > 2 else None,
           "rss_empty_kib": empty_kib, "rss_table_kib": full_kib,
           "rss_growth_kib": full_kib - empty_kib}
    f, d = out["forwarded"], out["direct"]
    out["target_ok"] = all(f[k] <= 1.2 * d[k] + 0.5 for k in ("p50_ms", "p99_ms"))
    for name in ("mesh", "forwarded", "direct"):
        s = out[name]
        print(f"{name:>9}: p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  ({s['n']} queries)")
    u = out["mesh_during_update"]
    print(f"mesh names during a {args.names}-name table rebuild ({u['rebuild_s']} s): p50 {u['p50_ms']:.3f} ms "
          f"p99 {u['p99_ms']:.3f} ms max {u['max_ms']:.3f} ms")
    print(f"forwarded vs direct: p50 {f['p50_ms'] / d['p50_ms']:.2f}x, p99 {f['p99_ms'] / d['p99_ms']:.2f}x "
          f"(target <= 1.2x + 0.5 ms: {'met' if out['target_ok'] else 'NOT met'})")
    print(f"memory: empty table {empty_kib / 1024:.1f} MiB, {args.names} names "
          f"{full_kib / 1024:.1f} MiB (+{(full_kib - empty_kib) / 1024:.1f} MiB), "
          f"table built in {out['table_build_s']} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
