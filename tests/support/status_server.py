"""A real status server (agent.sidecar.status) on a real socket, with stub dependencies, for the
hardening tests and the HTTP fuzz property; and the check that what it logged is the agent's lines."""
from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field

from agent.sidecar import logs
from agent.sidecar.http_server import Limits
from agent.sidecar.probes import AppProber
from agent.sidecar.startup import bind_status
from agent.sidecar.status import StatusDeps, StatusServer

TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\t(debug|info|warn|error|fatal)\t([^\t]+\t)?[^\t]*")


class StubScrape:
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    async def chunks(self):
        yield b"m 1\n"

    def close(self):
        pass


class StubMetrics:
    """Answers one line; `/metrics?fail` raises, as a defect in a handler would."""

    async def open(self, query, headers):
        if query == "fail":
            raise RuntimeError("merge failed\nsecond line of the message")
        return StubScrape()


@dataclass
class Calls:
    """What the server's dependencies answer, and what they saw."""

    reason: str | None = None
    quit: int = 0
    drain: int = 0
    ready_calls: int = 0
    hold: asyncio.Event | None = None  # readiness waits on it when set (a request in its handler)
    cancelled: int = 0  # readiness calls cancelled while waiting
    drain_delay: float = 0.0
    drained: int = 0  # drains that ran to the end


def make_deps(calls: Calls, *, prober: AppProber | None = None, metrics=None, port: int = 0) -> StatusDeps:
    async def readiness():
        calls.ready_calls += 1
        if calls.hold is not None:
            try:
                await calls.hold.wait()
            except asyncio.CancelledError:
                calls.cancelled += 1
                raise
        return calls.reason

    async def on_quit():
        calls.quit += 1

    async def on_drain():
        calls.drain += 1
        await asyncio.sleep(calls.drain_delay)
        calls.drained += 1

    return StatusDeps(readiness, prober or AppProber({}, pod_ip="", status_port=port), metrics or StubMetrics(),
                      on_drain, on_quit)


@dataclass
class Running:
    server: StatusServer
    port: int
    calls: Calls

    def open_connections(self) -> int:
        """Connections the server holds open (aiohttp's list, less those closing)."""
        return sum(1 for h in self.server.runner.server.connections if h.transport is not None)


async def start_status(limits: Limits = Limits(), calls: Calls | None = None, **deps) -> Running:
    sock = bind_status(0)
    port = sock.getsockname()[1]
    calls = calls or Calls()
    server = StatusServer(make_deps(calls, port=port, **deps), sock, limits)
    await server.start()
    return Running(server, port, calls)


def drop_stdlib_bridge() -> None:
    """Undo what logs.configure() did to the standard library's logging (between tests)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs.StdlibLines)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)


def bad_lines(text: str, as_json: bool) -> list[str]:
    """The lines of `text` that are not one agent line each in the format asked for: a traceback's
    lines, a message broken over lines, a raw control character, a JSON line that does not parse."""
    bad = []
    for line in text.splitlines():
        if as_json:
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and {"time", "level", "scope", "msg"} <= set(rec) and line.isprintable()
            except ValueError:
                ok = False
        else:
            ok = TEXT_LINE.fullmatch(line) is not None and line.replace("\t", " ").isprintable()
        if not ok or "Traceback" in line:
            bad.append(line)
    return bad
