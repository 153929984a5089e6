"""THE REAL ONE: a real Envoy whose `xds-grpc` is the xDS proxy's pipe and `sds-grpc` the SDS pipe.

The test istiod (TLS, JWT) pushes an mTLS outbound cluster (SDS `default`/`ROOTCA`) and a TCP
listener through the proxy; the cluster becomes active only once Envoy has the served secrets, and
a connection through the listener reaches a TLS backend that requires a client certificate and
reports the identity and serial number Envoy presented. A rotation pushed over SDS changes the
certificate Envoy presents on the next connection, with the same Envoy process.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.mesh.sds import SdsOptions, SdsServer
from agent.mesh.secrets import SecretItem
from agent.mesh.upstream import UpstreamOptions
from agent.mesh.xds_proxy import XdsProxy, XdsProxyOptions
from tests.mesh.ca_server import TestPKI, _key_pem, _pem
from tests.mesh.envoy_mesh import (admin_get, bootstrap, envoy, envoy_log, free_port, mtls_cluster, stat,
                                   tcp_listener)
from tests.mesh.istiod import CLUSTER, LISTENER, NAME_TABLE, TestIstiod
from tests.mesh.sds_fakes import short_tmp

APP = "spiffe://cluster.local/ns/ns1/sa/productpage"
BACKEND = "spiffe://cluster.local/ns/ns1/sa/reviews"
OUTBOUND = "outbound|9443||reviews.ns1.svc.cluster.local"


class PkiProvider:
    """Workload certificates signed by the test istiod's root (what the secret manager would serve)."""

    def __init__(self, pki: TestPKI) -> None:
        self.pki, self.callbacks, self.serials = pki, [], []
        self.items = {"ROOTCA": SecretItem("ROOTCA", None, None, pki.root_pem, "1", None)}
        self.rotate(notify=False)

    def rotate(self, notify: bool = True) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.pki.issue(key.public_key(), x509.UniformResourceIdentifier(APP), 3600)
        self.serials.append(cert.serial_number)
        self.items["default"] = SecretItem("default", _pem(cert), _key_pem(key), None, str(cert.serial_number),
                                           cert.not_valid_after_utc.timestamp())
        for callback in self.callbacks if notify else ():
            callback("default")

    async def secret(self, name: str) -> SecretItem:
        return self.items[name]

    def watch(self, callback):
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)


async def start_backend(pki: TestPKI, workdir: str) -> tuple[asyncio.Server, int]:
    """A TLS server requiring a client certificate from the mesh root; answers with the client's
    SPIFFE identity and serial number."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue(key.public_key(), x509.UniformResourceIdentifier(BACKEND), 3600)
    for name, data in (("backend-cert.pem", _pem(cert)), ("backend-key.pem", _key_pem(key))):
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(data)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(workdir, "backend-cert.pem"), os.path.join(workdir, "backend-key.pem"))
    context.load_verify_locations(cadata=pki.root_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED

    async def answer(reader, writer):
        peer = writer.get_extra_info("ssl_object").getpeercert()
        uris = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
        writer.write(f"{','.join(uris)} {peer['serialNumber']}\n".encode())
        await writer.drain()
        writer.close()

    port = free_port()
    return await asyncio.start_server(answer, "127.0.0.1", port, ssl=context), port


async def through_envoy(port: int) -> tuple[str, int]:
    """(identity, serial number) of the client certificate Envoy presented to the backend."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        uri, _, serial = (await asyncio.wait_for(reader.readline(), 5)).decode().strip().partition(" ")
        return uri, int(serial, 16)
    finally:
        writer.close()


async def until(check, timeout: float, what: str, workdir: str):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} within {timeout}s; Envoy log:\n{envoy_log(workdir)}")
        await asyncio.sleep(0.1)
    return result


@pytest.fixture
def workdir():
    d = short_tmp("env")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_real_envoy_gets_config_through_the_proxy_and_certificates_over_sds(workdir, delta):
    pki = TestPKI()
    pki.write_root(os.path.join(workdir, "root-cert.pem"))
    with open(os.path.join(workdir, "istio-token"), "w") as f:
        f.write(pki.token("ns1", "productpage"))
    provider = PkiProvider(pki)
    backend, backend_port = await start_backend(pki, workdir)
    listen_port, admin = free_port(), free_port()
    async with TestIstiod(pki) as istiod:
        istiod.backend_port = backend_port
        istiod.set(CLUSTER, [mtls_cluster(OUTBOUND, backend_port, BACKEND)])
        istiod.set(LISTENER, [tcp_listener("outbound_9443", listen_port, OUTBOUND)])
        istiod.set(NAME_TABLE, [])
        sds = SdsServer(provider, SdsOptions(socket_path=f"{workdir}/sds/socket"))
        proxy = XdsProxy(UpstreamOptions(address=f"localhost:{istiod.port}", root_cert_path=f"{workdir}/root-cert.pem",
                                         token_path=f"{workdir}/istio-token", cluster_id="Kubernetes"),
                         XdsProxyOptions(socket_path=f"{workdir}/proxy/XDS", request_name_table=True))
        await sds.start()
        await proxy.start()
        try:
            config = bootstrap(admin, delta=delta, xds_pipe=proxy.path, sds_pipe=sds.path)
            with envoy(config, workdir):
                await check_envoy(istiod, proxy, provider, admin, listen_port, workdir, delta)
        finally:
            await proxy.stop(0)
            await sds.stop(0)
            backend.close()


async def check_envoy(istiod, proxy, provider, admin, listen_port, workdir, delta):
    await until(lambda: stat(admin, "cluster_manager.cds.update_success"), 30, "CDS update through the proxy",
                workdir)
    await until(lambda: stat(admin, "listener_manager.lds.update_success"), 30, "LDS update", workdir)
    await until(lambda: at_least(admin, "cluster_manager.active_clusters", 3), 30,
                "the mTLS cluster active (its SDS secrets served)", workdir)
    _, dump = await admin_get(admin, "/config_dump?resource=dynamic_active_clusters")
    assert OUTBOUND in [c["cluster"]["name"] for c in json.loads(dump)["configs"]]
    assert (await stat(admin, "listener_manager.total_listeners_active")) == 1

    answer = await through_envoy(listen_port)
    assert answer == (APP, provider.serials[0]), "Envoy presented the certificate SDS served"
    _, certs = await admin_get(admin, "/certs")
    assert f"{provider.serials[0]:x}" in certs.lower()

    assert istiod.streams[0].delta is delta and istiod.streams[0].metadata["clusterid"] == "Kubernetes"
    assert istiod.acks(CLUSTER) and istiod.acks(LISTENER), "Envoy's ACKs went upstream"
    assert istiod.requests(NAME_TABLE), "NDS requested after LDS"
    assert proxy.counters.xds_proxy_responses >= 2 and proxy.unreachable_reason() is None

    provider.rotate()
    answer = await until(lambda: _rotated(listen_port, provider), 20, "the rotated certificate in use", workdir)
    assert answer == (APP, provider.serials[1])
    expiry = datetime.datetime.fromtimestamp(provider.items["default"].expires_at, datetime.timezone.utc)
    assert expiry > datetime.datetime.now(datetime.timezone.utc)
    await restart_istiod(istiod, proxy, admin, listen_port, workdir)


async def restart_istiod(istiod, proxy, admin, listen_port, workdir):
    """istiod goes away: Envoy keeps serving, the proxy says why it cannot reach istiod; istiod comes
    back on the same port: Envoy's next stream through the proxy gets the config istiod now has."""
    updates = await stat(admin, "cluster_manager.cds.update_success")
    await istiod.stop()
    reason = await until(lambda: _reason(proxy), 20, "the proxy reporting istiod unreachable", workdir)
    assert reason.startswith("control plane unreachable: ")
    assert (await through_envoy(listen_port))[0] == APP, "Envoy keeps serving without istiod"
    istiod.set(CLUSTER, [mtls_cluster(OUTBOUND, istiod.backend_port, BACKEND),
                         mtls_cluster("outbound|9444||ratings.ns1.svc.cluster.local", 9, BACKEND)])
    await istiod.start()
    await until(lambda: at_least(admin, "cluster_manager.cds.update_success", updates + 1), 40,
                "Envoy reconnected through the proxy and took the new CDS", workdir)
    assert proxy.unreachable_reason() is None and len(istiod.open_streams()) == 1


async def _reason(proxy) -> str | None:
    return proxy.unreachable_reason()


async def at_least(admin: int, name: str, value: int) -> bool:
    return await stat(admin, name) >= value


async def _rotated(port: int, provider: PkiProvider) -> tuple[str, int] | None:
    answer = await through_envoy(port)
    return answer if answer[1] == provider.serials[-1] else None


async def test_real_envoy_with_the_secret_manager_and_the_ca_on_istiods_port(workdir):
    """The identity side for real: the secret manager gets its certificate by CSR from the CA on the
    test istiod's one TLS port (the port the xDS proxy uses too), serves it over SDS, and renews it
    halfway through its 6 s life; Envoy presents each in turn."""
    from agent.mesh.ca_client import CAClient, CAClientOptions
    from agent.mesh.keys import KeyOptions, WorkloadIdentity
    from agent.mesh.secret_manager import SecretManager, SecretOptions

    pki = TestPKI()
    pki.write_root(os.path.join(workdir, "root-cert.pem"))
    with open(os.path.join(workdir, "istio-token"), "w") as f:
        f.write(pki.token("ns1", "productpage"))
    backend, backend_port = await start_backend(pki, workdir)
    listen_port, admin = free_port(), free_port()
    async with TestIstiod(pki, validity=6) as istiod:
        istiod.set(CLUSTER, [mtls_cluster(OUTBOUND, backend_port, BACKEND)])
        istiod.set(LISTENER, [tcp_listener("outbound_9443", listen_port, OUTBOUND)])
        ca = CAClient(CAClientOptions(address=f"localhost:{istiod.port}", root_cert_path=f"{workdir}/root-cert.pem",
                                      token_path=f"{workdir}/istio-token", cluster_id="Kubernetes"))
        manager = SecretManager(SecretOptions(identity=WorkloadIdentity("cluster.local", "ns1", "productpage"),
                                              key=KeyOptions(ecc_signature_algorithm="ECDSA")), ca)
        manager.start()
        sds = SdsServer(manager, SdsOptions(socket_path=f"{workdir}/sds/socket"))
        proxy = XdsProxy(UpstreamOptions(address=f"localhost:{istiod.port}", root_cert_path=f"{workdir}/root-cert.pem",
                                         token_path=f"{workdir}/istio-token"),
                         XdsProxyOptions(socket_path=f"{workdir}/proxy/XDS"))
        await sds.start()
        await proxy.start()
        try:
            with envoy(bootstrap(admin, delta=True, xds_pipe=proxy.path, sds_pipe=sds.path), workdir):
                await until(lambda: at_least(admin, "cluster_manager.active_clusters", 3), 30,
                            "the mTLS cluster active on the manager's secrets", workdir)
                first = await current_serial(manager)
                assert await through_envoy(listen_port) == (APP, first)
                renewed = await until(lambda: _presented_other(listen_port, first), 20,
                                      "the renewed certificate presented", workdir)
                assert renewed == (APP, await current_serial(manager))
                assert len(istiod.ca.calls) >= 2 and all(c.identity == APP for c in istiod.ca.calls)
        finally:
            await proxy.stop(0)
            await sds.stop(0)
            await manager.stop()
            await ca.close()
            backend.close()


async def current_serial(manager) -> int:
    item = await manager.secret("default")
    return x509.load_pem_x509_certificate(item.cert_chain).serial_number


async def _presented_other(port: int, serial: int) -> tuple[str, int] | None:
    answer = await through_envoy(port)
    return answer if answer[1] != serial else None
