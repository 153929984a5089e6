"""aiohttp's server, bounded for a port every workload in the cluster can reach (the status port).

aiohttp's defaults suit a server behind a reverse proxy: a keep-alive timer of an hour, nothing
bounding the time to send a request head or the number of connections. Istio's status server is Go's
`http.Serve` with no timeouts at all
(https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/server.go), so it has the
same exposure; this one bounds, with aiohttp's own knobs where it has them:

- the time to send a request head: `keepalive_timeout`. aiohttp arms that timer when a connection
  opens and again after each response, and closes the connection if, when it fires, no complete
  request head has arrived. Bytes received do not re-arm it, so a client sending its head a byte at
  a time (slowloris) is closed then, as by Go's `ReadHeaderTimeout`. The same timer closes an idle
  keep-alive connection; a scraper between scrapes reconnects.
- the time to send a body: no handler reads one. After answering, aiohttp reads and drops what is
  left for `lingering_time` (so the client can see the answer before the close), then closes.
- the size of a head: `max_line_size`, `max_field_size`, `max_headers` (beyond them: 400, closed).
- the number of open connections: `ConnectionCap`.
- the work of a caller that hung up: `handler_cancellation` cancels its handler (a connect, send,
  close loop would otherwise pile up app probes waiting on the app).

A malformed request is answered 400 and logged at debug only (`ServerLog`), as is a caller that hung
up before its answer: Go's server logs nothing for either, and an error line per request would let
any caller write the agent's log.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from agent.sidecar import logs

log = logs.get()


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0  # seconds from connect (or the last answer) to a complete request head
    body_linger: float = 2.0  # seconds an unread request body is read and dropped after the answer
    max_connections: int = 128  # open at once; past it the oldest idle one is closed
    max_headers: int = 64
    max_line_size: int = 8190  # bytes of the request line or of one header line (aiohttp's default)
    max_field_size: int = 8190

    def handler_kwargs(self) -> dict:
        """The keyword arguments aiohttp passes on to each connection's RequestHandler."""
        return {"keepalive_timeout": self.header_timeout, "lingering_time": self.body_linger,
                "max_headers": self.max_headers, "max_line_size": self.max_line_size,
                "max_field_size": self.max_field_size}


class ServerLog(logging.LoggerAdapter):
    """aiohttp's `aiohttp.server` logger, with what callers cause logged at debug: a request aiohttp
    could not parse (answered 400), and a caller gone before its answer was written (aiohttp reports
    a write to the closed connection, after `Expect: 100-continue` for one, as a handler's error)."""

    def log(self, level: int, msg: object, *args: object, exc_info: object = None, **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError | ConnectionError):
            level = logging.DEBUG
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)


class ConnectionCap:
    """The listening socket's protocol factory: aiohttp's, with at most `limit` connections open.

    A connection past the limit is neither refused nor kept waiting: the oldest open connection that
    is not in a handler (waiting for its request head, idle between keep-alive requests, or lingering
    over an unread body) is closed to make room, or the oldest of all when every one is in a handler.
    Refusing the newcomer instead would let anyone holding `limit` connections starve kubelet's
    probes; a probe sends its request as soon as it connects, so it is never the oldest idle one.
    """

    #: At most one line per this many seconds while connections are being closed for room.
    REPORT_EVERY = 60.0

    def __init__(self, limit: int):
        self.limit = limit
        self.server: web.Server | None = None  # set once the runner is set up
        self.in_handler: set[web.RequestHandler] = set()
        self.closed = 0  # closed to make room, since the last line
        self._reported = -self.REPORT_EVERY

    @web.middleware
    async def track(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        self.in_handler.add(request.protocol)
        try:
            return await handler(request)
        finally:
            self.in_handler.discard(request.protocol)

    def __call__(self) -> web.RequestHandler:
        assert self.server is not None
        # Oldest first (the server keeps them in connection order); a closed one has no transport.
        live = [h for h in self.server.connections if h.transport is not None]
        if len(live) >= self.limit:
            victim = next((h for h in live if h not in self.in_handler), live[0])
            victim.force_close()
            self._report()
        return self.server()

    def _report(self) -> None:
        self.closed += 1
        now = time.monotonic()
        if now - self._reported >= self.REPORT_EVERY:
            log.warning("status server: connection limit reached, closing the oldest idle connections",
                        limit=self.limit, closed=self.closed)
            self.closed, self._reported = 0, now


class BoundedServer:
    """`app` served on the bound, listening `sock` within `limits`: start() once, stop() always.

    As aiohttp's AppRunner and SockSite, except that the listening socket's protocol factory is
    the ConnectionCap around the runner's server (a site would hand it the server itself).
    """

    def __init__(self, app: web.Application, sock: socket.socket, limits: Limits = Limits()):
        self.cap = ConnectionCap(limits.max_connections)
        app.middlewares.append(self.cap.track)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0,
                                    handler_cancellation=True, logger=ServerLog(logging.getLogger("aiohttp.server")),
                                    **limits.handler_kwargs())
        self.sock = sock
        self.listener: asyncio.Server | None = None

    async def start(self) -> None:
        await self.runner.setup()
        self.cap.server = self.runner.server
        self.listener = await asyncio.get_running_loop().create_server(self.cap, sock=self.sock)

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()  # no new connections; the runner closes the open ones
        await self.runner.cleanup()
