"""Run inside a test's network namespace: a real Envoy with an inbound HTTP listener, an inbound TCP
listener on [::1], an inbound listener with its own stat prefix and an outbound one (static), and an
inbound one from a control plane (dynamic, tests/support/ads.py), connections of every kind through
them, and the agent's admin client counting what is in flight (agent.sidecar.in_flight) before and
after the inbound listeners are closed.

    in_flight_client.py ENVOY_BINARY WORK_DIR     -> one JSON object on stdout

The upstream (one thread) answers `/fast` at once, holds `/slow` until told, and holds raw TCP
connections open.
"""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.ads import LISTENER, AdsServer

ADMIN, UPSTREAM = 19000, 19100
def tcp_listener(name: str, address: str, port: int, direction: str, **extra) -> dict:
    proxy = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
             "stat_prefix": "t", "cluster": "up"}
    return {"name": name, "traffic_direction": direction, **extra,
            "address": {"socket_address": {"address": address, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}]}


HCM = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
       "stat_prefix": "inbound_http",
       "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
           {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "60s"}}]}]},
       "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
           "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}


def cluster(name: str, port: int, **extra) -> dict:
    return {"name": name, **extra, "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def config(ads_port: int) -> dict:
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    inbound_http = {"name": "inbound_http", "traffic_direction": "INBOUND",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 19006}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": HCM}]}]}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN}}},
        "node": {"id": "in-flight", "cluster": "test"},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                              "lds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {
            "clusters": [cluster("up", UPSTREAM), cluster("xds", ads_port, typed_extension_protocol_options=h2)],
            "listeners": [inbound_http,
                          tcp_listener("inbound_tcp6", "::1", 19007, "INBOUND"),
                          tcp_listener("inbound_named", "127.0.0.1", 19008, "INBOUND", stat_prefix="named"),
                          tcp_listener("outbound", "127.0.0.1", 19001, "OUTBOUND")]}}


release = threading.Event()


def upstream() -> None:
    srv = socket.create_server(("127.0.0.1", UPSTREAM))
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def serve(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
        if not data.startswith(b"GET"):
            conn.recv(1)  # raw TCP: held until the peer closes
            return
    while True:
        if b"GET /slow" in data:
            release.wait()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        data = conn.recv(4096)
        if not data:
            return


def request(path: str, sock: socket.socket | None = None) -> socket.socket:
    sock = sock or socket.create_connection(("127.0.0.1", 19006))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def response(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"ok\n"):
        data += sock.recv(4096)
    return data


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except OSError:
        return True


async def counts(out: dict) -> None:
    import aiohttp

    from agent.sidecar.admin import AdminClient

    async with aiohttp.ClientSession() as session:
        admin = AdminClient(ADMIN, session)
        plan = await admin.in_flight_plan(True, (15021, 15090))
        out["listeners"] = sorted(plan.listener_stats)
        out["http"] = sorted(plan.http_prefixes)
        out["router_listeners"] = len((await admin.in_flight_plan(False, (15021, 15090))).listener_stats)
        out["before_close"] = (await admin.listener_counts(plan)).in_flight
        await admin.stop_listeners(True)
        # Envoy closes the sockets just after the call returns (its workers stop accepting first)
        await asyncio.sleep(0.2)
        out["inbound_refused"] = refused("127.0.0.1", 19006) and refused("::1", 19007)
        out["outbound_open"] = not refused("127.0.0.1", 19001)
        out["after_close"] = (await admin.listener_counts(plan)).in_flight
        release.set()
        out["slow_answered"] = response(slow).endswith(b"ok\n")
        await asyncio.sleep(0.3)
        out["after_slow"] = (await admin.listener_counts(plan)).in_flight
        for s in held:
            s.close()
        await asyncio.sleep(0.3)
        out["after_all"] = (await admin.listener_counts(plan)).in_flight


def wait_port(port: int) -> None:
    for _ in range(300):
        if not refused("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise SystemExit(f"Envoy did not listen on {port}")


if __name__ == "__main__":
    binary, work = sys.argv[1], Path(sys.argv[2])
    ads = AdsServer().start()
    ads.set(listeners=[tcp_listener("inbound_dynamic", "127.0.0.1", 19009, "INBOUND")])
    (work / "envoy.json").write_text(json.dumps(config(ads.port)))
    threading.Thread(target=upstream, daemon=True).start()
    envoy = subprocess.Popen([binary, "-c", str(work / "envoy.json"), "--concurrency", "1", "-l", "error",
                              "--disable-hot-restart", "--drain-strategy", "immediate"])
    try:
        ads.wait_acked(LISTENER, ads.version)
        for port in (ADMIN, 19006, 19008, 19001, 19009):
            wait_port(port)
        idle = request("/fast")
        response(idle)  # served: this keep-alive connection is idle from now on
        slow = request("/slow")  # in flight until released
        held = [socket.create_connection(addr) for addr in (("::1", 19007), ("127.0.0.1", 19008), ("127.0.0.1", 19009))]
        outbound = socket.create_connection(("127.0.0.1", 19001))  # not an inbound listener's
        for s in held + [outbound]:
            s.sendall(b"raw\n")
        time.sleep(0.3)
        out: dict = {}
        asyncio.run(counts(out))
        print(json.dumps(out), flush=True)
    finally:
        envoy.terminate()
        envoy.wait(10)
        ads.stop()
