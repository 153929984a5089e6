"""The DNS proxy as a process, and a dnspython client, for tests and the benchmark that run them in
a pod network namespace as another uid (this file is copied somewhere every uid can read; it
imports only the agent and dnspython).

    dns_runner.py serve --table T.json [--address localhost:15053] [--resolv-conf F] ...
        prints `ready <host>:<port> ...`; on SIGHUP reads T.json again (a NameTable in protobuf
        JSON), swaps it in and prints `updated <hosts>`; SIGTERM stops it.
    dns_runner.py query --server 198.18.0.20 [--port 53] [--tcp] [--edns 4096] A:name AAAA:name ...
        prints one JSON list: per query {rcode, answers: [[name, type, value]], tc, ms} or {error}.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import signal
import sys
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from google.protobuf import json_format

from agent.mesh.dns import DnsOptions, DnsProxy, DnsProxyError
from agent.mesh.protos import nds_pb2
from agent.sidecar import logs


def load(path: str) -> nds_pb2.NameTable:
    with open(path) as f:
        text = f.read()
    return json_format.Parse(text, nds_pb2.NameTable()) if text.strip() else nds_pb2.NameTable()


def settle() -> None:
    """Drop the garbage of reading the JSON file and hand freed heap back to the kernel (the
    agent's xDS relay trims after big pushes too), so RSS shows what the proxy keeps."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def serve(args: argparse.Namespace) -> int:
    logs.configure(f"default:info,dns:{args.log_level}", target="stderr")
    proxy = DnsProxy(DnsOptions(
        address=args.address, resolv_conf=args.resolv_conf, pod_namespace=args.namespace,
        proxy_domain=args.domain, forward_parallel=args.parallel, timeout=args.timeout,
        attempt_timeout=args.attempt_timeout, upstream_port=args.upstream_port,
        istio_cnames=args.istio_cnames))
    if args.table:
        proxy.update(load(args.table))
    try:
        await proxy.start()
    except DnsProxyError as e:
        print(e, file=sys.stderr)
        return 1
    print("ready", *(f"{h}:{p}" for h, p in proxy.addresses), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def reload() -> None:
        start = time.perf_counter()
        table = await asyncio.to_thread(load, args.table)  # the agent gets it parsed from istiod
        await proxy.on_name_table(table)  # as the xDS proxy hands it over
        del table
        settle()
        print(f"updated {proxy.table.hosts} {time.perf_counter() - start:.4f}", flush=True)

    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps(
        {"requests": proxy.stats.requests, "local": proxy.stats.local_answers,
         "upstream": proxy.stats.upstream_requests, "failures": proxy.stats.upstream_failures}),
        flush=True))
    await stop.wait()
    await proxy.stop()
    return 0


def query(args: argparse.Namespace) -> int:
    out = []
    for spec in args.queries:
        rdtype, name = spec.split(":", 1)
        q = dns.message.make_query(name, rdtype, use_edns=0 if args.edns else None,
                                   payload=args.edns or 1232)
        start = time.perf_counter()
        try:
            send = dns.query.tcp if args.tcp else dns.query.udp
            r = send(q, args.server, timeout=args.timeout, port=args.port)
        except Exception as e:
            out.append({"error": f"{type(e).__name__}: {e}", "ms": (time.perf_counter() - start) * 1e3})
            continue
        out.append({"rcode": dns.rcode.to_text(r.rcode()), "tc": bool(r.flags & dns.flags.TC),
                    "ms": (time.perf_counter() - start) * 1e3,
                    "answers": [[rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype), rd.to_text()]
                                for rr in r.answer for rd in rr]})
    print(json.dumps(out), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--table", default="")
    s.add_argument("--address", default="localhost:15053")
    s.add_argument("--resolv-conf", default="/etc/resolv.conf")
    s.add_argument("--namespace", default="ns1")
    s.add_argument("--domain", default="ns1.svc.cluster.local")
    s.add_argument("--parallel", action="store_true")
    s.add_argument("--istio-cnames", action="store_true")
    s.add_argument("--timeout", type=float, default=4.0)
    s.add_argument("--attempt-timeout", type=float, default=2.0)
    s.add_argument("--upstream-port", type=int, default=53)
    s.add_argument("--log-level", default="info")
    q = sub.add_parser("query")
    q.add_argument("--server", required=True)
    q.add_argument("--port", type=int, default=53)
    q.add_argument("--tcp", action="store_true")
    q.add_argument("--edns", type=int, default=0)
    q.add_argument("--timeout", type=float, default=10.0)
    q.add_argument("queries", nargs="+")
    args = parser.parse_args()
    return asyncio.run(serve(args)) if args.command == "serve" else query(args)


if __name__ == "__main__":
    sys.exit(main())
