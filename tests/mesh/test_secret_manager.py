"""The secret manager with the real CA client against the test CA (real X.509, real TLS),
and with real mounted files."""
from __future__ import annotations

import asyncio
import os
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.mesh.ca_client import CAClient, CAClientOptions, RetryPolicy
from agent.mesh.keys import KeyOptions, WorkloadIdentity
from agent.mesh.secret_files import CertPaths
from agent.mesh.secret_manager import Backoff, SecretManager, SecretOptions
from agent.mesh.secrets import RotationPolicy, SecretError
from agent.mesh.protos import ca_pb2
from tests.mesh.ca_server import CAServicer, TestCA, TestPKI, free_port

IDENTITY = WorkloadIdentity("cluster.local", "ns1", "productpage")
SPIFFE = IDENTITY.spiffe_uri
FAST_RETRY = Backoff(initial=0.05, multiplier=1.5, randomization=0.2, maximum=0.2)


@pytest.fixture(scope="module")
def pki():
    return TestPKI()


@pytest.fixture
def files(tmp_path, pki):
    pki.write_root(tmp_path / "root-cert.pem")
    (tmp_path / "istio-token").write_text(pki.token("ns1", "productpage"))
    return tmp_path


def _client(files, address) -> CAClient:
    return CAClient(CAClientOptions(address=address, root_cert_path=str(files / "root-cert.pem"),
                                    token_path=str(files / "istio-token"),
                                    retry=RetryPolicy(attempts=2, initial_wait=0.01)))


def _options(base, **kw) -> SecretOptions:
    kw.setdefault("files", CertPaths.in_dir(str(base / "etc-certs")))  # absent: certificates from the CA
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("key", KeyOptions(ecc_signature_algorithm="ECDSA"))  # fast; RSA is tested once
    return SecretOptions(identity=IDENTITY, file_poll_interval=0.05, **kw)


def _leaf(chain: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain)


def _check_default(item, pki: TestPKI, from_ca: bool = True) -> x509.Certificate:
    leaf = _leaf(item.cert_chain)
    leaf.verify_directly_issued_by(pki.root)
    assert (pki.root_pem in item.cert_chain) == from_ca  # the CA's chain served whole, root included
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    key = serialization.load_pem_private_key(item.private_key, None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    assert item.root_cert is None and item.expires_at == leaf.not_valid_after_utc.timestamp()
    return leaf


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("key", [KeyOptions(), KeyOptions(ecc_signature_algorithm="ECDSA")])
async def test_certificate_fetched_at_start_and_served(pki, files, key):
    async with TestCA(pki) as ca:
        manager = SecretManager(_options(files, key=key), _client(files, ca.address))
        manager.start()
        await _until(lambda: manager.stats.certificates_issued == 1)  # before anyone asked
        assert len(ca.calls) == 1
        default, root = await manager.secret("default"), await manager.secret("ROOTCA")
        await manager.stop()
    _check_default(default, pki)
    assert isinstance(serialization.load_pem_private_key(default.private_key, None),
                      ec.EllipticCurvePrivateKey) == (key.ecc_signature_algorithm == "ECDSA")
    assert root.root_cert == pki.root_pem and root.cert_chain is None and root.private_key is None
    assert len(ca.calls) == 1  # served from the cache
    assert 0 < manager.cert_expiry_seconds() <= 60


async def test_rotation_renews_a_short_certificate_before_it_expires(pki, files):
    async with TestCA(pki, validity=3) as ca:
        manager = SecretManager(_options(files, rotation=RotationPolicy(0.5, 0.01)), _client(files, ca.address))
        changes: list[tuple[str, float]] = []
        manager.watch(lambda name: changes.append((name, time.time())))
        manager.start()
        first = await manager.secret("default")
        await _until(lambda: manager.stats.certificates_issued >= 2, timeout=5)
        second = await manager.secret("default")
        await manager.stop()
    assert second.version != first.version and second.private_key != first.private_key
    received_at, renewed_at = [t for name, t in changes if name == "default"][:2]
    assert renewed_at < first.expires_at  # renewed within the old certificate's life
    assert 1.0 <= renewed_at - received_at <= 2.5  # at half of the 3 s life (+-1 %), not at once
    assert [name for name, _ in changes][:3] == ["default", "ROOTCA", "default"]  # the root only once
    _check_default(second, pki)


async def test_ca_down_at_start_then_up(pki, files):
    port = free_port()
    manager = SecretManager(_options(files), _client(files, f"localhost:{port}"))
    manager.start()
    waiter = asyncio.create_task(manager.secret("default"))
    await _until(lambda: manager.stats.issue_failures >= 2)
    assert not waiter.done()
    assert "Unavailable" in manager.last_error and "\n" not in manager.last_error
    async with TestCA(pki, port=port):
        item = await asyncio.wait_for(waiter, 10)
        await manager.stop()
    _check_default(item, pki)
    assert manager.last_error is None


async def test_refused_token_keeps_a_one_line_reason(pki, files):
    (files / "istio-token").write_text(pki.token("ns1", "productpage", audience="other"))
    async with TestCA(pki) as ca:
        manager = SecretManager(_options(files), _client(files, ca.address))
        manager.start()
        await _until(lambda: manager.stats.issue_failures >= 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(manager.secret("default"), 0.3)
        await manager.stop()
    assert manager.last_error.startswith(f"create certificate at CA {ca.address} failed: Unauthenticated")
    assert "\n" not in manager.last_error


async def test_output_certs_written_atomically_with_key_mode(pki, files):
    out = files / "out"
    async with TestCA(pki, validity=3) as ca:
        manager = SecretManager(_options(files, output_certs=str(out), rotation=RotationPolicy(0.9, 0.0)),
                                _client(files, ca.address))
        manager.start()
        item = await manager.secret("default")
        assert (out / "key.pem").read_bytes() == item.private_key
        assert (out / "cert-chain.pem").read_bytes() == item.cert_chain
        assert (out / "root-cert.pem").read_bytes() == pki.root_pem
        for name in ("key.pem", "cert-chain.pem", "root-cert.pem"):
            assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
        await _until(lambda: manager.stats.certificates_issued >= 2, timeout=5)
        renewed = await manager.secret("default")
        await manager.stop()
    assert (out / "key.pem").read_bytes() == renewed.private_key != item.private_key
    assert sorted(os.listdir(out)) == ["cert-chain.pem", "key.pem", "root-cert.pem"]  # no temp files left


async def test_output_certs_key_stays_0600_where_istio_writes_0644(pki, files):
    """KUBERNETES_SERVICE_HOST set: Istio writes every OUTPUT_CERTS file 0644; the key stays 0600 here."""
    out = files / "out644"
    async with TestCA(pki) as ca:
        manager = SecretManager(_options(files, output_certs=str(out), output_file_mode=0o644),
                                _client(files, ca.address))
        manager.start()
        await manager.secret("default")
        await manager.stop()
    modes = {name: stat.S_IMODE(os.stat(out / name).st_mode) for name in os.listdir(out)}
    assert modes == {"key.pem": 0o600, "cert-chain.pem": 0o644, "root-cert.pem": 0o644}


def _mount(pki: TestPKI, directory, spiffe=SPIFFE, seconds=3600):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue(key.public_key(), x509.UniformResourceIdentifier(spiffe), seconds)
    directory.mkdir(exist_ok=True)
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "cert-chain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.write_root(directory / "root-cert.pem")
    return cert


async def test_file_mounted_certificates_served_and_reloaded(pki, files):
    certs = files / "etc-certs"
    _mount(pki, certs)
    manager = SecretManager(_options(files, files=CertPaths.in_dir(str(certs))), issuer=None)
    changed: list[str] = []
    manager.watch(changed.append)
    manager.start()
    default = await manager.secret("default")
    _check_default(default, pki, from_ca=False)
    assert (await manager.secret("ROOTCA")).root_cert == pki.root_pem
    by_name = await manager.secret(f"file-cert:{certs}/cert-chain.pem~{certs}/key.pem")
    assert by_name.cert_chain == default.cert_chain and by_name.name.startswith("file-cert:")
    assert (await manager.secret(f"file-root:{certs}/root-cert.pem")).root_cert == pki.root_pem
    _mount(pki, certs, spiffe="spiffe://cluster.local/ns/ns1/sa/other")  # the volume is updated
    await _until(lambda: "default" in changed)
    renewed = await manager.secret("default")
    await manager.stop()
    assert renewed.version != default.version
    san = _leaf(renewed.cert_chain).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/ns1/sa/other"]


async def test_mounted_etc_certs_win_over_the_ca(pki, files):
    certs = files / "etc-certs"
    _mount(pki, certs)
    async with TestCA(pki) as ca:
        manager = SecretManager(_options(files), _client(files, ca.address))
        manager.start()
        item = await manager.secret("default")
        await asyncio.sleep(0.2)
        await manager.stop()
    assert item.cert_chain == (certs / "cert-chain.pem").read_bytes() and ca.calls == []


async def test_file_errors_and_unknown_names(pki, files):
    certs = files / "etc-certs"
    _mount(pki, certs)
    other = files / "other"
    _mount(pki, other)
    manager = SecretManager(_options(files, file_pair_timeout=0.3), issuer=None)
    manager.start()
    with pytest.raises(SecretError, match="does not match"):  # a cert with another pair's key
        await manager.secret(f"file-cert:{certs}/cert-chain.pem~{other}/key.pem")
    with pytest.raises(SecretError, match="cannot read .*missing.pem: No such file"):
        await manager.secret(f"file-root:{files}/missing.pem")
    with pytest.raises(SecretError, match="unknown SDS resource name"):
        await manager.secret("kubernetes://cred")
    with pytest.raises(SecretError, match="no CA client and no certificate files"):
        await SecretManager(_options(files, files=CertPaths.in_dir(str(files / "none"))), None).secret("default")
    await manager.stop()
    assert manager.stats.file_secret_failures == 2


async def test_trust_anchors_from_istiod_merge_into_rootca_and_renew(pki, files):
    extra = TestPKI().root_pem.decode()
    async with TestCA(pki) as ca:
        manager = SecretManager(_options(files), _client(files, ca.address))
        changed: list[str] = []
        manager.watch(changed.append)
        manager.start()
        await manager.secret("default")
        manager.update_trust_anchors([extra])
        await _until(lambda: manager.stats.certificates_issued == 2)
        root = await manager.secret("ROOTCA")
        await manager.stop()
    assert extra.encode() in root.root_cert and pki.root_pem in root.root_cert
    assert changed == ["default", "ROOTCA", "ROOTCA", "default"]


async def test_output_certs_in_the_mounted_dir_does_not_stop_rotation(pki, files):
    certs = files / "etc-certs"
    mounted = _mount(pki, certs)
    async with TestCA(pki) as ca:
        manager = SecretManager(_options(files, output_certs=str(certs)), _client(files, ca.address))
        manager.start()
        item = await manager.secret("default")
        await manager.stop()
    assert len(ca.calls) == 1 and _leaf(item.cert_chain) != mounted
    assert (certs / "cert-chain.pem").read_bytes() == item.cert_chain


async def test_a_chain_that_is_not_pem_is_a_logged_failure(pki, files):
    class NotPem(CAServicer):
        async def CreateCertificate(self, request, context):
            return ca_pb2.IstioCertificateResponse(cert_chain=["leaf?", "root?"])

    ca = TestCA(pki)
    ca.servicer = NotPem(pki)
    async with ca:
        manager = SecretManager(_options(files), _client(files, ca.address))
        manager.start()
        await _until(lambda: manager.stats.issue_failures >= 1)
        await manager.stop()
    assert manager.last_error.startswith("failed to extract expire time from server certificate in CSR response")
    assert manager.cache.current is None
