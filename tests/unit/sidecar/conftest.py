"""Unit tests that configure structlog (logs, subcommands) must not leak a closed stream to the next."""
import pytest
import structlog

from agent.sidecar import logs


@pytest.fixture(autouse=True)
def _fresh_structlog():
    yield
    structlog.reset_defaults()
    logs.reset()
