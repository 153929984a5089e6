"""Fixtures shared by every real-namespace suite (netns, sidecar, faults, image): factories that
always clean up, also on failure."""
from __future__ import annotations

import pytest

from tests.netns.harness import Netns, Pod


@pytest.fixture
def pod_factory():
    """pod_factory(ipv4=True, ipv6=False, nameservers=None) -> Pod; all closed at teardown."""
    made: list[Pod] = []

    def make(**kw) -> Pod:
        pod = Pod.create(**kw)
        made.append(pod)
        return pod

    yield make
    for pod in reversed(made):
        pod.close()


@pytest.fixture
def netns_factory():
    made: list[Netns] = []

    def make(prefix: str = "nt") -> Netns:
        ns = Netns.create(prefix)
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.close()
