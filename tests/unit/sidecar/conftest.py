"""Fixtures of the sidecar unit tests: fresh logging per test (tests that configure it must not
leak a closed stream to the next, through structlog or the standard library's bridge), the agent's
log lines captured, and small real HTTP servers."""
import io

import pytest
import structlog
from aiohttp import web

from agent.sidecar import logs
from tests.support.status_server import drop_stdlib_bridge


@pytest.fixture(autouse=True)
def _fresh_logging():
    yield
    structlog.reset_defaults()
    drop_stdlib_bridge()


@pytest.fixture
def capture():
    """`capture(level, as_json)` -> the buffer the agent's log lines (its own and the libraries') go to."""
    def make(level="default:info", as_json=False):
        buf = io.StringIO()
        logs.configure(level, as_json, stream=buf)
        return buf
    return make


@pytest.fixture
def serve(aiohttp_server):
    """`await serve({path: async handler})` -> the port of a real aiohttp server on 127.0.0.1, any
    method on each path; stopped at teardown (pytest-aiohttp's aiohttp_server)."""
    async def start(routes: dict) -> int:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        return (await aiohttp_server(app)).port

    return start
