"""The status server's routes, methods and access rules: the real server on a real dual-stack socket,
stub dependencies behind it, one test per route and rule."""
from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import pytest

from agent.sidecar.probes import AppProber
from agent.sidecar.startup import bind_status
from agent.sidecar.status import StatusDeps, StatusServer, is_loopback


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


@dataclass
class Calls:
    """What the server's dependencies answer and saw."""

    reason: str | None = "config not received"
    quit: int = 0
    drain: int = 0


@dataclass
class Status:
    session: aiohttp.ClientSession
    port: int
    calls: Calls

    def request(self, method: str, path: str, host: str = "127.0.0.1", **kw):
        return self.session.request(method, f"http://{host}:{self.port}{path}", **kw)

    async def answer(self, method: str, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
        async with self.request(method, path, host) as r:
            return r.status, await r.text()


@pytest.fixture
async def status():
    calls = Calls()

    async def readiness():
        return calls.reason

    async def on_quit():
        calls.quit += 1

    async def on_drain():
        calls.drain += 1

    sock = bind_status(0)
    port = sock.getsockname()[1]
    prober = AppProber({}, pod_ip="", status_port=port)
    server = StatusServer(StatusDeps(readiness, prober, StubMetrics(), on_drain, on_quit), sock)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Status(session, port, calls)
    finally:
        await server.stop()


@pytest.mark.parametrize("peer, want", [
    ("127.0.0.1", True), ("127.0.0.6", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("198.18.0.20", False), ("::ffff:198.18.0.20", False), ("2001:db8::1", False), (None, False), ("junk", False),
])
def test_is_loopback(peer, want):
    assert is_loopback(peer) is want


async def test_ready_is_503_while_there_is_a_reason(status):
    assert (await status.answer("GET", "/healthz/ready"))[0] == 503


async def test_ready_is_200_for_any_method_once_there_is_none(status):
    status.calls.reason = None
    assert (await status.answer("HEAD", "/healthz/ready"))[0] == 200


async def test_ready_answers_on_ipv6_loopback_too(status):
    status.calls.reason = None
    assert (await status.answer("GET", "/healthz/ready", "[::1]"))[0] == 200


async def test_prometheus_route_passes_the_query_on(status):
    assert await status.answer("GET", "/stats/prometheus?usedonly") == (200, "m 1 usedonly\n")


async def test_metrics_is_an_alias(status):
    assert await status.answer("GET", "/metrics") == (200, "m 1 \n")


async def test_small_scrape_is_written_at_once(status):
    async with status.request("GET", "/metrics") as r:
        assert r.headers.get("Content-Length") is not None and r.headers.get("Transfer-Encoding") is None


async def test_big_scrape_is_streamed(status):
    async with status.request("GET", "/metrics?big") as r:
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.text() == "".join(f"big_{i} 1\n" for i in range(10000))


async def test_scrape_is_gzipped_when_accepted(status):
    async with status.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as r:
        assert (r.headers.get("Content-Encoding"), await r.text()) == ("gzip", "m 1 \n")


async def test_quitquitquit_stops_on_post(status):
    assert await status.answer("POST", "/quitquitquit") == (200, "OK")
    assert status.calls.quit == 1


async def test_quitquitquit_refuses_other_methods(status):
    assert (await status.answer("GET", "/quitquitquit"))[0] == 405
    assert status.calls.quit == 0


async def test_drain_drains_on_post(status):
    assert await status.answer("POST", "/drain") == (200, "OK")
    assert status.calls.drain == 1


async def test_drain_refuses_other_methods(status):
    assert (await status.answer("PUT", "/drain"))[0] == 405
    assert status.calls.drain == 0


async def test_app_health_without_a_prober_is_400(status):
    assert (await status.answer("GET", "/app-health/x/livez"))[0] == 400


async def test_unknown_path_is_404(status):
    assert (await status.answer("GET", "/nope"))[0] == 404


def test_bind_reports_port_in_use():
    first = bind_status(0)
    try:
        with pytest.raises(OSError):
            bind_status(first.getsockname()[1])
    finally:
        first.close()
