"""Fixtures of the fault matrix.

Every test gets its own network namespace (so the real default ports are used and nothing collides
with other suites) and its own work directory; both are removed whatever happens. The "nothing is
lost" half of every case is `tests.support.agent.assert_nothing_left`.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.netns import Netns


@pytest.fixture
def ns():
    made = Netns.create("pf")
    yield made
    made.close()


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="faults-"))
    path.chmod(0o755)  # agents running as uid 1337 must reach their configPath
    yield path
    shutil.rmtree(path, ignore_errors=True)
