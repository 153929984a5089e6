"""Fixtures and hooks every suite shares.

Markers say what a test needs from the host, so one kind runs alone (`-m netns`, `-m "not image"`):

- `netns`: creates network namespaces (root, iproute2, iptables);
- `envoy`: runs the real Envoy binary, or the agent that starts it;
- `image`: builds the proxyv2 image and runs a pod from it (slow; its own CI stage). Those tests
  also use namespaces and Envoy but carry only `image`, so `-m netns` never builds an image.

They are given by suite directory below (a file named there overrides its directory), so a new
test in a suite is marked without anyone remembering to. Tests left unmarked are in-process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.goldens import Goldens
from tests.support.netns import Netns, Pod
from tests.support.process import remove_script_copies

TESTS = Path(__file__).resolve().parent
NEEDS: dict[str, tuple[str, ...]] = {
    "netns": ("netns",),
    "netns/test_apply_pure.py": (),
    "sidecar": ("netns", "envoy"),
    "sidecar/test_bootstrap_validate.py": ("envoy",),
    "sidecar/test_sidecar_bad_input.py": ("envoy",),
    "faults": ("netns", "envoy"),
    "faults/test_iptables_faults.py": ("netns",),
    "xds": ("envoy",),
    "mesh/test_xds_proxy_envoy.py": ("envoy",),
    "mesh_e2e": ("netns", "envoy"),
    "image": ("netns", "envoy"),
    "image/test_image.py": ("image",),
    "property/test_subprocess_input.py": ("netns",),
}


def _needs(path: Path) -> tuple[str, ...]:
    if not path.is_relative_to(TESTS):
        return ()
    rel = path.relative_to(TESTS)
    for key in (rel.as_posix(), rel.parts[0]):
        if key in NEEDS:
            return NEEDS[key]
    return ()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in _needs(item.path):
            item.add_marker(name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Helper scripts run as another uid come from a world-readable copy (tests/support/process.py,
    made when a suite is imported); it goes at the end of the session, --collect-only included."""
    remove_script_copies()


@pytest.fixture(scope="session")
def goldens() -> Goldens:
    """Compare with, or (UPDATE_GOLDENS=1) rewrite, golden files: tests/support/goldens.py."""
    return Goldens.from_env()


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


def _our_rules_in_this_namespace() -> list[str]:
    """The istio-iptables chains and native-nftables tables live in the namespace pytest runs in
    (the machine's own): every test must program only namespaces it made."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            out = subprocess.run([tool], capture_output=True, text=True).stdout
            found += [f"{tool}: {line}" for line in out.splitlines() if line.startswith(":ISTIO_")]
    if shutil.which("nft"):
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        found += [f"nft: {line}" for line in out.splitlines() if " istio-proxy-" in line]
    return found


@pytest.fixture(scope="session", autouse=True)
def host_namespace_untouched() -> Iterator[None]:
    """Fails the run if the tests left capture rules in the machine's own namespace (an in-process
    test once reached the real nft apply and programmed it)."""
    if os.geteuid() != 0:
        yield
        return
    before = _our_rules_in_this_namespace()
    yield
    left = [line for line in _our_rules_in_this_namespace() if line not in before]
    assert not left, f"tests left capture rules in the machine's own network namespace: {left}"

