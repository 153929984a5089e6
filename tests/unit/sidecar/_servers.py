"""Tiny real HTTP/TCP servers on 127.0.0.1 for the unit tests (no fakes for HTTP behaviour)."""
from __future__ import annotations

import asyncio
import contextlib
import socket

from aiohttp import web


@contextlib.asynccontextmanager
async def http_app(routes: dict):
    """routes: {path: async handler(request)} -> yields the port."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A port nobody listens on (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    return asyncio.run(coro)
