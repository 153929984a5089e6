"""ISTIO_KUBE_APP_PROBERS parsing, status mapping, and real probes against local servers (the kubelet
probes Istio's injector rewrites to /app-health/<container>/<kind> on the status port)."""
import asyncio
import io
import socket
import ssl
import time

import pytest
from aiohttp import web

from agent.sidecar import logs
from agent.sidecar.probe_config import ProbeConfigError, Prober, parse_probers
from agent.sidecar.probes import AppProber, forward_headers, map_status
from agent.sidecar.statelog import StateLog
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
        got = {name: await prober.probe(f"/app-health/{name}/livez", {"User-Agent": "kube-probe/1.30"})
               for name in cases}
    finally:
        server.stop(0)
    assert {name: r.status for name, r in got.items()} == {"ok": 200, "down": 500, "missing": 500, "slow": 500,
                                                           "long": 500}
    # the call's status and message, not the empty message's default status
    assert got["missing"].body == b"grpc probe failed: health check failed: NOT_FOUND: unknown service"
    assert got["down"].body == b"grpc probe failed: service unhealthy (responded with NOT_SERVING)"
    # our 1 s, or the app's own deadline from the grpc-timeout header, whichever ends first
    assert got["slow"].body in (b"grpc probe failed: timed out after 1s",
                                b"grpc probe failed: health check failed: DEADLINE_EXCEEDED: Deadline Exceeded")
    assert seen[0][0] == b"" and seen[0][1].startswith("kube-probe/1.30")
    assert (b"\n\xc8\x01" + b"x" * 200, ) == (seen[-1][0], )  # a 200-byte name is varint-length-prefixed


async def test_grpc_probe_to_a_closed_port_is_500():
    prober = AppProber(parse_probers({"/app-health/a/livez": {"grpc": {"port": free_port()}, "timeoutSeconds": 1}}),
                       pod_ip="", status_port=15020)
    assert (await prober.probe("/app-health/a/livez", {})).status == 500


@pytest.mark.parametrize("headers, trailers, body, want", [
    ({":status": "200"}, {"grpc-status": "0"}, b"\x00\x00\x00\x00\x02\x08\x01", None),
    ({":status": "200"}, {"grpc-status": "0"}, b"\x00\x00\x00\x00\x02\x08\x02", "service unhealthy (responded with NOT_SERVING)"),
    ({":status": "200"}, {"grpc-status": "0"}, b"\x00\x00\x00\x00\x00", "service unhealthy (responded with UNKNOWN)"),
    ({":status": "200"}, {"grpc-status": "0"}, b"\x00\x00\x00\x00\x02\x08\x09", "service unhealthy (responded with 9)"),
    # an unknown field before the status is skipped
    ({":status": "200"}, {"grpc-status": "0"}, b"\x00\x00\x00\x00\x05\x12\x01x\x08\x01", None),
    # a trailers-only answer: the status is in the headers; the message is percent-decoded, control characters not kept
    ({":status": "200", "grpc-status": "5", "grpc-message": "no%20such%0Aservice"}, {}, b"",
     "health check failed: NOT_FOUND: no such service"),
    # status first: an unknown service whose server still sent an empty message (status 0) is NOT_FOUND
    ({":status": "200"}, {"grpc-status": "5"}, b"\x00\x00\x00\x00\x00", "health check failed: NOT_FOUND"),
    ({":status": "200"}, {"grpc-status": "12"}, b"",
     "the app does not implement the gRPC health protocol (grpc.health.v1.Health)"),
    ({":status": "200"}, {"grpc-status": "99"}, b"", "health check failed: code 99"),
    ({":status": "200"}, {}, b"", "no gRPC status in the app's answer"),
    ({":status": "404"}, {}, b"", "HTTP status 404 from the app (is it a gRPC server?)"),
])
def test_grpc_verdict(headers, trailers, body, want):
    from agent.sidecar.grpc_health import verdict

    assert verdict(headers, trailers, body) == want


@pytest.mark.parametrize("body", [b"", b"\x00\x00", b"\x01\x00\x00\x00\x02\x08\x01", b"\x00\x00\x00\x00\x02\x08\xff",
                                  b"\x00\x00\x00\x00\x01\x0b"])
def test_grpc_malformed_answers_are_health_errors(body):
    from agent.sidecar.grpc_health import HealthError, decode_status

    with pytest.raises(HealthError):
        decode_status(body)


def test_grpc_request_encoding():
    from agent.sidecar.grpc_health import encode_request

    assert encode_request("") == b"\x00\x00\x00\x00\x00"
    assert encode_request("foo") == b"\x00\x00\x00\x00\x05\x0a\x03foo"
    assert encode_request("x" * 200)[5:8] == b"\x0a\xc8\x01"  # a varint length past 127


@pytest.fixture
def lines():
    buf = io.StringIO()
    logs.configure("default:info", stream=buf)
    return lambda: [line for line in buf.getvalue().splitlines() if "\tprobes\t" in line]  # not the test app's


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def test_probe_logs_changes_and_a_summary_not_each_probe(serve, lines):
    """A poller every 62.5 ms (exact in binary) for 5 s on an injected clock: 80 probes, failing, then
    passing, then failing; the lines are the three changes, then one summary per 30 s of the failure."""
    state = {"code": 503}

    async def app(_):
        return web.Response(status=state["code"])

    port = await serve({"/h": app})
    clock = Clock()
    prober = AppProber(parse_probers({"/app-health/c/readyz": {"httpGet": {"path": "/h", "port": port}}}),
                       pod_ip="", status_port=15020, states=StateLog(every=30.0, clock=clock))
    for i in range(80):
        state["code"] = 200 if 30 <= i < 50 else 503
        await prober.probe("/app-health/c/readyz", {})
        clock.now += 0.0625
    assert [line.split("\t", 3)[3] for line in lines()] == [
        "app probe failed path=/app-health/c/readyz kind=http port=%d status=503" % port,
        "app probe succeeded path=/app-health/c/readyz kind=http port=%d status=200" % port,
        "app probe failed path=/app-health/c/readyz kind=http port=%d status=503" % port]
    for _ in range(960):  # then a minute more of the failure: two summaries
        await prober.probe("/app-health/c/readyz", {})
        clock.now += 0.0625
    summaries = [line for line in lines() if "still failing" in line]
    assert len(lines()) == 5 and len(summaries) == 2
    assert "app probe still failing for 30s (481 probes) path=/app-health/c/readyz" in summaries[0]


async def test_probes_of_unconfigured_paths_are_one_line_then_summaries(lines):
    clock = Clock()
    prober = AppProber({}, pod_ip="", status_port=15020, states=StateLog(every=30.0, clock=clock))
    for i in range(1000):  # 1000 different paths, 0.1 s apart
        assert (await prober.probe(f"/app-health/c{i}/livez", {})).status == 400
        clock.now += 0.1
    got = lines()
    assert len(got) == 4 and "Prober does not exist path=/app-health/c0/livez" in got[0]
    assert "probes without a prober still asked for after 30s (301 requests)" in got[1]


@pytest.mark.parametrize("error, want", [
    (TimeoutError(), "timed out after 1s"),
    (ConnectionRefusedError(111, "Connect call failed ('198.18.0.10', 8080)"), "connection refused"),
    (OSError(99, "Cannot assign requested address"), "cannot assign requested address"),
    (socket.gaierror(-2, "Name or service not known"), "cannot resolve the probe's destination"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"), "TLS handshake with the app failed"),
    (ConnectionResetError(104, "Connection reset by peer"), "the app closed the connection before answering"),
    (ValueError("Forbidden control character detected in headers"), "a header to forward or a redirect is not valid HTTP"),
    (RuntimeError("anything else"), "connection to the app failed"),
])
def test_failures_are_described_in_our_words(error, want):
    from agent.sidecar.probes import describe

    assert describe(error, 1.0) == want
