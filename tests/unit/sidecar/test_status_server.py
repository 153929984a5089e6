"""The status server's routing, methods and access rules with stub dependencies and real HTTP."""
import aiohttp
import pytest

from agent.sidecar.probes import AppProber, parse_probers
from agent.sidecar.status import StatusDeps, StatusServer, bind, is_loopback
from tests.unit.sidecar._servers import run


class StubScrape:
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, query):
        self.query = query

    async def chunks(self):
        yield b"m 1 "
        yield f"{self.query}\n".encode()

    def close(self):
        pass


class BigScrape(StubScrape):
    async def chunks(self):
        for i in range(10000):  # ~120 KB in small pieces: more than one block, so streamed
            yield b"big_%d 1\n" % i


class StubMetrics:
    async def open(self, query, headers):
        return BigScrape(query) if query == "big" else StubScrape(query)


@pytest.mark.parametrize("peer, want", [
    ("127.0.0.1", True), ("127.0.0.6", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("198.18.0.20", False), ("::ffff:198.18.0.20", False), ("2001:db8::1", False), (None, False), ("junk", False),
])
def test_is_loopback(peer, want):
    assert is_loopback(peer) is want


async def _exercise():
    state = {"reason": "config not received", "quit": 0, "drain": 0}

    async def readiness():
        return state["reason"]

    async def on_quit():
        state["quit"] += 1

    async def on_drain():
        state["drain"] += 1

    sock = bind(0)
    port = sock.getsockname()[1]
    deps = StatusDeps(readiness, AppProber(parse_probers({}), pod_ip="", status_port=port), StubMetrics(),
                      on_drain, on_quit)
    server = StatusServer(deps, sock)
    await server.start()
    out = {}
    try:
        async with aiohttp.ClientSession() as s:
            async def status(method, path, host="127.0.0.1"):
                async with s.request(method, f"http://{host}:{port}{path}") as r:
                    return r.status, await r.text()
            out["ready503"] = await status("GET", "/healthz/ready")
            state["reason"] = None
            out["ready200"] = await status("HEAD", "/healthz/ready")
            out["ready_v6"] = await status("GET", "/healthz/ready", "[::1]")
            out["metrics"] = await status("GET", "/stats/prometheus?usedonly")
            out["metrics_alias"] = await status("GET", "/metrics")
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                out["small_framing"] = (r.headers.get("Content-Length"), r.headers.get("Transfer-Encoding"))
            async with s.get(f"http://127.0.0.1:{port}/metrics?big") as r:
                out["big"] = (r.headers.get("Transfer-Encoding"), await r.text())
            async with s.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
                out["gzip"] = (r.headers.get("Content-Encoding"), await r.text())
            out["quit_get"] = await status("GET", "/quitquitquit")
            out["quit"] = await status("POST", "/quitquitquit")
            out["drain_put"] = await status("PUT", "/drain")
            out["drain"] = await status("POST", "/drain")
            out["probe400"] = await status("GET", "/app-health/x/livez")
            out["unknown"] = await status("GET", "/nope")
    finally:
        await server.stop()
    return out, state


def test_status_endpoints():
    out, state = run(_exercise())
    assert out["ready503"][0] == 503 and out["ready200"][0] == 200 and out["ready_v6"][0] == 200
    assert out["metrics"] == (200, "m 1 usedonly\n") and out["metrics_alias"][0] == 200
    assert out["gzip"] == ("gzip", "m 1 \n")
    assert out["small_framing"][0] is not None and out["small_framing"][1] is None  # small: written at once
    assert out["big"] == ("chunked", "".join(f"big_{i} 1\n" for i in range(10000)))  # a big one streamed
    assert out["quit_get"][0] == 405 and out["drain_put"][0] == 405
    assert out["quit"] == (200, "OK") and out["drain"] == (200, "OK")
    assert state["quit"] == 1 and state["drain"] == 1
    assert out["probe400"][0] == 400 and out["unknown"][0] == 404


def test_bind_reports_port_in_use():
    first = bind(0)
    try:
        with pytest.raises(OSError):
            bind(first.getsockname()[1])
    finally:
        first.close()
