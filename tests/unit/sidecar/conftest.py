"""Fixtures of the sidecar unit tests: a fresh structlog per test (tests that configure it must not
leak a closed stream to the next) and small real HTTP servers."""
import pytest
import structlog
from aiohttp import web


@pytest.fixture(autouse=True)
def _fresh_structlog():
    yield
    structlog.reset_defaults()


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
