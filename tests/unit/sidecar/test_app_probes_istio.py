"""Istio's status-server probe tests (TestAppProbe, TestProbeHeader, TestGRPCAppProbe in
https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/server_test.go), case by
case, against the agent's real status server, a real HTTP app and gRPC's own health server; a
kubelet-style client sends the rewritten probe's headers, a `Host` included, as kubelet does."""
from __future__ import annotations

import asyncio
import http
from concurrent import futures

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from multidict import CIMultiDict

from agent.sidecar.probe_config import parse_probers
from agent.sidecar.probes import AppProber
from agent.sidecar.startup import bind_status
from agent.sidecar.status import StatusDeps, StatusServer
from tests.support.process import free_port

HEADER, HEADER_VALUE, HOST_VALUE = "Some-Header", "some-value", "test.com:9999"


async def _app(request: web.Request) -> web.Response:
    """Istio's test handler: /header checks Host and Some-Header, redirects, /status/<code>."""
    first, _, rest = request.path[1:].partition("/")
    if first == "header":
        ok = request.host == HOST_VALUE and request.headers.get(HEADER) == HEADER_VALUE
        return web.Response(status=200 if ok else 400)
    if first == "redirect":
        raise web.HTTPMovedPermanently("/")
    if first == "redirect-loop":
        raise web.HTTPMovedPermanently("/redirect-loop")
    if first == "remote-redirect":
        raise web.HTTPMovedPermanently("http://example.com/foo")
    if first == "status":
        return web.Response(status=int(rest), headers={"Location": "/"})
    return web.Response(text="welcome, it works")


@pytest.fixture
async def app_port(aiohttp_server):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _app)
    return (await aiohttp_server(app, host="::")).port  # dual-stack: the IPv6 cases reach it on ::1


@pytest.fixture
async def agent():
    """`await agent(probers, pod_ip=..., source=...)` -> the port of a real status server."""
    servers = []

    async def start(probers: dict, pod_ip: str = "", source: str | None = None) -> int:
        sock = bind_status(0)
        port = sock.getsockname()[1]
        prober = AppProber(parse_probers(probers), pod_ip=pod_ip, status_port=port,
                           legacy_localhost=pod_ip == "localhost")
        if source:  # Istio's IPv6 cases bind ::1: ::6 is not a loopback address
            prober.source = source
        server = StatusServer(StatusDeps(_never_ready, prober, None, _nothing, _nothing), sock)
        await server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop()


async def _never_ready():
    return "not under test"


async def _nothing():
    pass


async def kubelet(port: int, path: str, headers: list[tuple[str, str]] = ()) -> tuple[int, bytes]:
    """A probe as kubelet sends it: the probe's httpHeaders; a Host among them is the request's Host."""
    async with aiohttp.ClientSession(skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent")) as session:
        async with session.get(f"http://127.0.0.1:{port}/{path}", headers=CIMultiDict(headers)) as r:
            return r.status, await r.read()


def http_get(port: int, path: str = "/", **extra) -> dict:
    return {"httpGet": {"port": port, "path": path, **extra}}


SIMPLE_HTTP = ("app-health/hello-world/readyz", "/hello/sunnyvale"), ("app-health/hello-world/livez", "")


@pytest.mark.parametrize("case, probe_path, config, pod_ip, want", [
    ("http-bad-path", "bad-path-should-be-404", "http", "", 404),
    ("http-readyz", "app-health/hello-world/readyz", "http", "", 200),
    ("http-livez", "app-health/hello-world/livez", "http", "", 200),
    ("http-livez-localhost", "app-health/hello-world/livez", "http", "localhost", 200),
    ("http-readyz-path", "app-health/hello-world/readyz", "texas", "", 200),
    ("http-prestopz-path", "app-lifecycle/hello-world/prestopz", "texas", "", 200),
    ("http-poststartz-path", "app-lifecycle/hello-world/poststartz", "texas", "", 200),
    ("tcp-readyz", "app-health/hello-world/readyz", "tcp", "", 200),
    ("tcp-livez-ipv4", "app-health/hello-world/livez", "tcp", "127.0.0.1", 200),
    ("tcp-livez-ipv6", "app-health/hello-world/livez", "tcp", "::1", 200),
    ("tcp-livez-wrapped-ipv6", "app-health/hello-world/livez", "tcp", "[::1]", 500),
    ("tcp-livez-localhost", "app-health/hello-world/livez", "tcp", "localhost", 200),
    ("redirect", "app-health/redirect/livez", "redirect", "", 200),
    ("redirect loop", "app-health/redirect-loop/livez", "redirect-loop", "", 500),
    ("remote redirect", "app-health/remote-redirect/livez", "remote-redirect", "", 200),
])
async def test_istio_app_probe_cases(agent, app_port, case, probe_path, config, pod_ip, want):
    probers = {
        "http": {f"/{p}": http_get(app_port, path) for p, path in SIMPLE_HTTP},
        "tcp": {f"/{p}": {"tcpSocket": {"port": app_port}} for p, _ in SIMPLE_HTTP},
        "texas": {f"/{probe_path}": http_get(app_port, "hello/texas")},  # no leading slash: one is added
    }.get(config) or {f"/{probe_path}": http_get(app_port, config)}
    port = await agent(probers, pod_ip=pod_ip, source="::1" if ":" in pod_ip else None)
    status, _ = await kubelet(port, probe_path)
    assert status == want, case


async def test_istio_readyz_header_case_kubelet_sends_the_host(agent, app_port):
    headers = [(HEADER, HEADER_VALUE), ("Host", HOST_VALUE)]
    port = await agent({"/app-health/header/readyz": http_get(app_port, "/header", httpHeaders=[
        {"name": n, "value": v} for n, v in headers])})
    assert (await kubelet(port, "app-health/header/readyz", headers))[0] == 200
    assert (await kubelet(port, "app-health/header/readyz", headers[:1]))[0] == 400  # Host is the app's check


async def test_istio_status_codes(agent, app_port):
    codes = [c.value for c in http.HTTPStatus if c.value >= 200]
    port = await agent({f"/app-health/c{c}/livez": {**http_get(app_port, f"status/{c}"), "timeoutSeconds": 1}
                        for c in codes})
    got = {c: (await kubelet(port, f"app-health/c{c}/livez"))[0] for c in codes}
    assert got == {c: 200 if 300 <= c < 400 else c for c in codes}


@pytest.mark.parametrize("origin, proxy, want", [
    ([(HEADER, HEADER_VALUE)], [], [(HEADER, HEADER_VALUE)]),  # only origin
    ([(HEADER, HEADER_VALUE)] * 2, [], [(HEADER, HEADER_VALUE)] * 2),  # every value of a repeated header
    ([], [(HEADER, HEADER_VALUE)], []),  # only the configured copy: not added by the agent
    ([], [(HEADER, HEADER_VALUE)] * 2, []),
    ([(HEADER, HEADER_VALUE)], [(HEADER, HEADER_VALUE + "over")], [(HEADER, HEADER_VALUE)]),  # origin wins
])
async def test_istio_probe_header(agent, aiohttp_server, origin, proxy, want):
    seen = []

    async def check(request):
        seen.append([(k, v) for k, v in request.headers.items() if k not in ("Host", "User-Agent", "Accept-Encoding")])
        return web.Response()

    app = web.Application()
    app.router.add_get("/header", check)
    server = await aiohttp_server(app)
    port = await agent({"/app-health/hello-world/livez": http_get(
        server.port, "/header", host="198.18.0.1", httpHeaders=[{"name": n, "value": v} for n, v in proxy])})
    assert (await kubelet(port, "app-health/hello-world/livez", origin))[0] == 200
    assert seen == [want + [("Connection", "close")]]  # nothing of the agent's own: no Accept, no gzip


@pytest.fixture(scope="module")
def grpc_app():
    """gRPC's own health server (grpcio-health-checking), the services of Istio's TestGRPCAppProbe."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    for name, status in (("serving-svc", "SERVING"), ("unknown-svc", "UNKNOWN"), ("not-serving-svc", "NOT_SERVING")):
        servicer.set(name, health_pb2.HealthCheckResponse.ServingStatus.Value(status))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("[::]:0")
    server.start()
    yield port
    server.stop(0)


GRPC_CASES = {  # path: (service, timeoutSeconds, status, body)
    "/app-health/foo/livez": (None, 1, 200, b""),
    "/app-health/foo/readyz": ("not-serving-svc", 1, 500, b"grpc probe failed: service unhealthy (responded with NOT_SERVING)"),
    "/app-health/bar/livez": ("serving-svc", 10, 200, b""),
    "/app-health/bar/readyz": ("unknown-svc", 10, 500, b"grpc probe failed: service unhealthy (responded with UNKNOWN)"),
    "/app-health/baz/readyz": ("no-such-svc", 1, 500, b"grpc probe failed: health check failed: NOT_FOUND"),
}


@pytest.mark.parametrize("pod_ip, source", [("", None), ("::1", "::1")])
async def test_istio_grpc_app_probe(agent, grpc_app, pod_ip, source):
    port = await agent({path: {"grpc": {"port": grpc_app, "service": svc}, "timeoutSeconds": t}
                        for path, (svc, t, _, _) in GRPC_CASES.items()}, pod_ip=pod_ip, source=source)
    assert (await kubelet(port, "bad-path-should-be-disallowed"))[0] == 404
    got = {path: await kubelet(port, path[1:]) for path in GRPC_CASES}
    assert got == {path: (status, body) for path, (_, _, status, body) in GRPC_CASES.items()}


async def test_grpc_probe_of_a_server_without_the_health_service(agent):
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        status_port = await agent({"/app-health/a/livez": {"grpc": {"port": port}, "timeoutSeconds": 2}})
        got = await kubelet(status_port, "app-health/a/livez")
    finally:
        server.stop(0)
    assert got == (500, b"grpc probe failed: the app does not implement the gRPC health protocol "
                        b"(grpc.health.v1.Health)")


async def test_grpc_probe_of_an_http1_server(agent):
    """An HTTP/1 server answers HTTP/2's preface with a 400 (as Go's and nginx do; aiohttp just closes)."""
    async def http1(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    try:
        port = await agent({"/app-health/a/livez": {"grpc": {"port": server.sockets[0].getsockname()[1]},
                                                    "timeoutSeconds": 2}})
        got = await kubelet(port, "app-health/a/livez")
    finally:
        server.close()
    assert got == (500, b"grpc probe failed: the app did not answer in HTTP/2 (is it a gRPC server?)")


@pytest.mark.parametrize("kind", ["httpGet", "tcpSocket", "grpc"])
async def test_failure_bodies_are_our_words_not_the_librarys(agent, kind):
    closed = free_port()
    port = await agent({"/app-health/a/livez": {kind: {"port": closed}, "timeoutSeconds": 1}})
    status, body = await kubelet(port, "app-health/a/livez")
    short = {"httpGet": "http", "tcpSocket": "tcp", "grpc": "grpc"}[kind]
    assert (status, body) == (500, f"{short} probe failed: connection refused".encode())


async def test_a_slow_app_times_out_in_our_words(agent, aiohttp_server):
    async def slow(_):
        await asyncio.sleep(3)
        return web.Response()

    app = web.Application()
    app.router.add_get("/", slow)
    server = await aiohttp_server(app)
    port = await agent({"/app-health/a/livez": {**http_get(server.port), "timeoutSeconds": 0.5}})
    assert await kubelet(port, "app-health/a/livez") == (500, b"http probe failed: timed out after 0.5s")
