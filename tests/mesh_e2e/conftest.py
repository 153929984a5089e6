"""Fixtures of the mesh tests: one "cluster" (hub namespace, test istiod on 15012) for the session, and
pods on it. Pod B (the server: inbound mTLS, XFCC) and pod A (the client of B's service) run as
today's injection starts them and are shared; other tests add pods of their own, which get the
client's resources (istiod's `*` entry) so they can call B too.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.mesh.ca_server import TestPKI
from tests.mesh_e2e import resources
from tests.mesh_e2e.cluster import Hub, IstiodProcess
from tests.mesh_e2e.helpers import MeshPod
from tests.mesh_e2e.mesh_istiod import MESH_FILE, save_pki

#: name -> (namespace, service account, pod IP, Service VIP or None)
PODS = {
    "a": ("nsa", "a", "198.18.4.10", None),
    "b": ("nsb", "b", "198.18.4.11", "198.18.5.11"),
    "bare-a": ("nsa", "bare-a", "198.18.4.20", None),
    "bare-b": ("nsb", "bare-b", "198.18.4.21", "198.18.5.21"),
}
#: Certificates of 30 s (istiod's maximum TTL here): every agent renews at about 15 s.
VALIDITY = 30.0


@dataclass(eq=False)
class Mesh:
    hub: Hub
    pki: TestPKI
    istiod: IstiodProcess
    pods: list[MeshPod] = field(default_factory=list)
    _next_ip: int = 30

    @property
    def dir(self):
        return self.istiod.directory

    def service(self, name: str) -> resources.Service:
        namespace, sa, ip, vip = PODS[name]
        return resources.Service(f"{name}.{namespace}.svc.cluster.local", vip, 8080, ip,
                                 f"spiffe://cluster.local/ns/{namespace}/sa/{sa}")

    def pod(self, name: str, namespace: str = "", sa: str = "", ip: str = "", *, token: str | None = "",
            root_pem: bytes | None = b"") -> MeshPod:
        """A pod on the hub with its root directory; token and root default to valid ones."""
        if name in PODS:
            namespace, sa, ip, _ = PODS[name]
        if not ip:
            ip, self._next_ip = f"198.18.4.{self._next_ip}", self._next_ip + 1
        token = self.pki.token(namespace, sa) if token == "" else token
        root_pem = self.pki.root_pem if root_pem == b"" else root_pem
        ns = self.hub.attach(name, ip)
        pod = MeshPod(name, namespace, sa, ip, ns, self.hub.pod_root(name, token=token, root_pem=root_pem))
        self.pods.append(pod)
        return pod

    def close_pod(self, pod: MeshPod) -> None:
        pod.ns.close()
        self.pods.remove(pod)

    def close(self) -> None:
        for pod in reversed(self.pods):
            pod.ns.close()
        self.hub.close()


def mesh_spec(mesh: Mesh) -> dict:
    b, bare_b = mesh.service("b"), mesh.service("bare-b")
    return {"a.nsa": resources.client(b), "b.nsb": resources.server(8080),
            "bare-a.nsa": resources.client(bare_b, sds=False), "bare-b.nsb": resources.server(8080, sds=False),
            "*": resources.client(b)}


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    hub = Hub.create()
    try:
        for name, (namespace, _, _, vip) in PODS.items():
            if vip:
                hub.hosts[vip] = f"{name}.{namespace}.svc.cluster.local"
        directory = hub.work / "istiod"
        directory.mkdir()
        pki = TestPKI()
        save_pki(pki, directory)
        istiod = IstiodProcess(hub, directory, validity=VALIDITY)
        m = Mesh(hub, pki, istiod)
        (directory / MESH_FILE).write_text(json.dumps(mesh_spec(m)))
        istiod.start()
        yield m
        m.close()
    except BaseException:
        hub.close()
        raise


@pytest.fixture(scope="session")
def server_pod(mesh: Mesh) -> MeshPod:
    """Pod B as today's injection starts it, ready, its app answering on 8080."""
    pod = mesh.pod("b")
    pod.start_app()
    pod.start_agent()
    pod.wait_ready()
    return pod


@pytest.fixture(scope="session")
def client_pod(mesh: Mesh, server_pod: MeshPod) -> MeshPod:
    pod = mesh.pod("a")
    pod.start_agent()
    pod.wait_ready()
    return pod


@pytest.fixture
def istiod_running(mesh: Mesh) -> Iterator[IstiodProcess]:
    """For tests that stop istiod: whatever happens, it runs again afterwards."""
    yield mesh.istiod
    if mesh.istiod.proc is None or mesh.istiod.proc.poll() is not None:
        mesh.istiod.start()
