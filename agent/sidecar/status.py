"""The status server on statusPort (15020), as an aiohttp application (Istio's is
https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/server.go).

It is given a readiness probe, the app prober, the metrics merger and two callbacks (drain, quit),
nothing else: it never imports the orchestrator, so its handlers can be exercised on their own.

| path                                   | method | who      | answer |
|----------------------------------------|--------|----------|--------|
| /healthz/ready                         | any    | anyone   | 200 ready / 503 + reason logged |
| /app-health/<c>/{livez,readyz,startupz}| any    | anyone   | the app's probe result, 400 if not configured |
| /stats/prometheus, /metrics            | any    | anyone*  | merged metrics, always 200 (*loopback only with METRICS_LOCALHOST_ACCESS_ONLY) |
| /quitquitquit                          | POST   | loopback | 200 OK: stop Envoy without draining, exit 0 |
| /drain                                 | POST   | loopback | 200 OK: drain inbound listeners for good; the later SIGTERM skips the drain wait |

The server's limits (header timeout, connection cap, head sizes) are agent.sidecar.http_server's.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from agent.sidecar.http_server import BoundedServer, Limits
from agent.sidecar.metrics import MetricsMerger
from agent.sidecar.probes import AppProber

Callback = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StatusDeps:
    readiness: Callable[[], Awaitable[str | None]]
    prober: AppProber
    metrics: MetricsMerger
    on_drain: Callback
    on_quit: Callback
    metrics_localhost_only: bool = False


def is_loopback(peer: str | None) -> bool:
    if not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
    return (mapped or addr).is_loopback


def _peer(request: web.Request) -> str | None:
    info = request.transport.get_extra_info("peername") if request.transport else None
    return info[0] if info else None


def _local_post(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="Method Not Allowed")
        if not is_loopback(_peer(request)):
            return web.Response(status=403, text="Only requests from localhost are allowed")
        return await handler(request)

    return guarded


#: Merged metrics are written in blocks of at least this size; a smaller answer is one response.
BLOCK = 64 * 1024


async def _blocks(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """`chunks` joined into blocks of at least `size` bytes (the last may be shorter): one socket
    write per block instead of one per upstream chunk."""
    pending: list[bytes] = []
    have = 0
    async for chunk in chunks:
        pending.append(chunk)
        have += len(chunk)
        if have >= size:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, have = [], 0
    if have:
        yield b"".join(pending)


def make_app(deps: StatusDeps) -> web.Application:
    async def ready(_request: web.Request) -> web.Response:
        reason = await deps.readiness()
        return web.Response(status=503 if reason else 200)

    async def app_health(request: web.Request) -> web.Response:
        result = await deps.prober.probe(request.path, request.headers)
        return web.Response(status=result.status, body=result.body, headers=result.headers)

    async def stats(request: web.Request) -> web.StreamResponse:
        if deps.metrics_localhost_only and not is_loopback(_peer(request)):
            return web.Response(status=403, text="Only requests from localhost are allowed")
        scrape = await deps.metrics.open(request.query_string, request.headers)
        try:  # streamed: Envoy's stats can be megabytes; the agent holds about one block of them
            blocks = _blocks(scrape.chunks(), BLOCK)
            first, second = await anext(blocks, b""), await anext(blocks, None)
            if second is None:  # small (Istio's default stats): one response, one write
                resp = web.Response(status=200, body=first, headers={"Content-Type": scrape.content_type})
                resp.enable_compression()  # gzip/deflate when the scraper accepts it, as Istio's wrapper does
                return resp
            resp = web.StreamResponse(status=200, headers={"Content-Type": scrape.content_type})
            resp.enable_compression()
            await resp.prepare(request)
            await resp.write(first)
            await resp.write(second)
            async for block in blocks:
                await resp.write(block)
            await resp.write_eof()
        finally:
            scrape.close()
        return resp

    # Shielded: a handler is cancelled when its caller hangs up (see http_server), but a quit or a
    # drain once asked for is carried out whatever the caller does next.
    async def quit_(_request: web.Request) -> web.Response:
        await asyncio.shield(deps.on_quit())
        return web.Response(text="OK")

    async def drain(_request: web.Request) -> web.Response:
        await asyncio.shield(deps.on_drain())
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_route("*", "/healthz/ready", ready)
    app.router.add_route("*", r"/app-health/{container}/{kind}", app_health)
    app.router.add_route("*", r"/app-lifecycle/{container}/{kind}", app_health)
    app.router.add_route("*", "/stats/prometheus", stats)
    app.router.add_route("*", "/metrics", stats)
    app.router.add_route("*", "/quitquitquit", _local_post(quit_))
    app.router.add_route("*", "/drain", _local_post(drain))
    return app


class StatusServer(BoundedServer):
    """The status app on the pre-bound socket, within `limits`: start() once, stop() always."""

    def __init__(self, deps: StatusDeps, sock: socket.socket, limits: Limits = Limits()):
        super().__init__(make_app(deps), sock, limits)
