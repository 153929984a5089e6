"""The backend fixture of the real-traffic tests: each test that takes `backend` runs once with
iptables and once with native nftables (tests/netns/backends.py)."""
from __future__ import annotations

import pytest

from tests.netns.backends import BACKENDS


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param
