"""ISTIO_KUBE_APP_PROBERS parsing, status mapping, and real probes against local servers (the kubelet
probes Istio's injector rewrites to /app-health/<container>/<kind> on the status port)."""
import asyncio
import time

import pytest
from aiohttp import web

from agent.sidecar.probe_config import ProbeConfigError, Prober, parse_probers
from agent.sidecar.probes import AppProber, forward_headers, map_status
from tests.support.process import free_port


def test_parse_http_tcp_grpc():
    got = parse_probers({
        "/app-health/app/livez": {"httpGet": {"path": "healthz", "port": 8080, "scheme": "HTTPS"}, "timeoutSeconds": 2},
        "/app-health/app/readyz": {"tcpSocket": {"port": 8081}, "timeoutSeconds": 1, "initialDelaySeconds": 9},
        "/app-health/app/startupz": {"grpc": {"port": 9090, "service": None}},
    })
    assert got["/app-health/app/livez"] == Prober("http", 8080, "/healthz", "https", 2.0)
    assert got["/app-health/app/readyz"] == Prober("tcp", 8081, timeout=1.0)
    assert got["/app-health/app/startupz"].kind == "grpc"
    assert parse_probers({}) == {}


@pytest.mark.parametrize("probers, message", [
    ({"/bad/app/livez": {"tcpSocket": {"port": 1}}}, "invalid path"),
    ({"/app-health/app/livez": {}}, "invalid prober type"),
    ({"/app-health/app/livez": {"tcpSocket": {"port": 1}, "httpGet": {"port": 2}}}, "invalid prober type"),
    ({"/app-health/app/livez": {"httpGet": {"port": "http"}}}, "the port must be int type"),
])
def test_parse_errors_name_the_setting(probers, message):
    with pytest.raises(ProbeConfigError, match=message) as e:
        parse_probers(probers)
    assert "ISTIO_KUBE_APP_PROBERS" in str(e.value)


@pytest.mark.parametrize("status, elsewhere, want", [
    (None, False, 500), (200, False, 200), (204, False, 204), (302, False, 200), (301, True, 200),
    (404, False, 404), (500, False, 500), (503, False, 503),
])
def test_map_status(status, elsewhere, want):
    assert map_status(status, elsewhere) == want


def test_forward_headers_rewrites_status_port_host():
    got = forward_headers({"Host": "10.0.0.1:15020", "User-Agent": "kube-probe/1.30", "X-Custom": "y"}, 15020, 8080)
    assert got["Host"] == "10.0.0.1:8080" and got["User-Agent"] == "kube-probe/1.30"
    assert got["X-Custom"] == "y" and got["Connection"] == "close"
    assert forward_headers({"Host": "a:9"}, 15020, 8080)["Host"] == "a:9"


async def test_real_probes(serve):
    seen = {}

    async def ok(request):
        seen["peer"] = request.transport.get_extra_info("peername")[0]
        seen["ua"] = request.headers.get("User-Agent")
        seen["conn"] = request.headers.get("Connection")
        return web.Response(text="fine")

    async def fail(_):
        return web.Response(status=500, text="x" * 20000)

    async def slow(_):
        await asyncio.sleep(1.5)
        return web.Response()

    async def redirect_same(_):
        raise web.HTTPFound("/ok")

    async def redirect_away(_):
        raise web.HTTPFound("http://198.18.9.9:1/elsewhere")

    port = await serve({"/ok": ok, "/fail": fail, "/slow": slow, "/same": redirect_same, "/away": redirect_away})
    closed = free_port()
    cfg = {f"/app-health/c/{n}": {"httpGet": {"path": p, "port": port}, "timeoutSeconds": 1}
           for n, p in (("livez", "/ok"), ("readyz", "/fail"), ("startupz", "/slow"))}
    cfg["/app-health/d/livez"] = {"httpGet": {"path": "/same", "port": port}, "timeoutSeconds": 1}
    cfg["/app-health/d/readyz"] = {"httpGet": {"path": "/away", "port": port}, "timeoutSeconds": 1}
    cfg["/app-health/t/livez"] = {"tcpSocket": {"port": port}, "timeoutSeconds": 1}
    cfg["/app-health/t/readyz"] = {"tcpSocket": {"port": closed}, "timeoutSeconds": 1}
    prober = AppProber(parse_probers(cfg), pod_ip="", status_port=15020)
    out = {}
    for path in [*cfg, "/app-health/nope/livez"]:
        out[path] = await prober.probe(path, {"User-Agent": "kube-probe/1.30", "Host": "x:15020"})

    assert out["/app-health/c/livez"].status == 200 and out["/app-health/c/livez"].body == b"fine"
    assert seen == {"peer": "127.0.0.6", "ua": "kube-probe/1.30", "conn": "close"}
    assert out["/app-health/c/readyz"].status == 500 and len(out["/app-health/c/readyz"].body) == 10 * 1024
    assert out["/app-health/c/startupz"].status == 500  # timeout
    assert out["/app-health/d/livez"].status == 200 and out["/app-health/d/livez"].body == b"fine"
    assert out["/app-health/d/readyz"].status == 200  # redirect to another host: success, not followed
    assert out["/app-health/t/livez"].status == 200
    assert out["/app-health/t/readyz"].status == 500
    nope = out["/app-health/nope/livez"]
    assert nope.status == 400 and nope.body == b"app prober config does not exists for /app-health/nope/livez"


async def test_grpc_health_probe_against_a_real_grpc_server():
    """grpcio (test-only) serves grpc.health.v1.Health/Check with raw bytes; the agent's h2c client asks."""
    from concurrent import futures

    import grpc

    answers = {b"": b"\x08\x01", b"\n\x04slow": b"\x08\x01", b"\n\x04down": b"\x08\x02"}
    seen = []

    def check(request, context):
        seen.append((request, dict(context.invocation_metadata()).get("user-agent", "")))
        if request == b"\n\x04slow":
            time.sleep(1.5)
        if request not in answers:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return answers[request]

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        cases = {"ok": None, "down": "down", "missing": "nope", "slow": "slow", "long": "x" * 200}
        cfg = {f"/app-health/{name}/livez": {"grpc": {"port": port, "service": svc}, "timeoutSeconds": 1}
               for name, svc in cases.items()}
        prober = AppProber(parse_probers(cfg), pod_ip="", status_port=15020)
        got = {name: (await prober.probe(f"/app-health/{name}/livez", {"User-Agent": "kube-probe/1.30"})).status
               for name in cases}
    finally:
        server.stop(0)
    assert got == {"ok": 200, "down": 500, "missing": 500, "slow": 500, "long": 500}
    assert seen[0][0] == b"" and seen[0][1].startswith("kube-probe/1.30")
    assert (b"\n\xc8\x01" + b"x" * 200, ) == (seen[-1][0], )  # a 200-byte name is varint-length-prefixed


async def test_grpc_probe_to_a_closed_port_is_500():
    prober = AppProber(parse_probers({"/app-health/a/livez": {"grpc": {"port": free_port()}, "timeoutSeconds": 1}}),
                       pod_ip="", status_port=15020)
    assert (await prober.probe("/app-health/a/livez", {})).status == 500
