"""The CA client against the test CA: real CSRs, real TLS, real JWT checks."""
from __future__ import annotations

import asyncio
import random
import time

import grpc
import pytest
from cryptography import x509

from agent.mesh import ca_client
from agent.mesh.ca_client import CAClient, CAClientOptions, CAConfigError, CAError, RetryPolicy
from agent.mesh.keys import KeyOptions, WorkloadIdentity, generate_key_and_csr
from agent.mesh.protos import ca_pb2
from tests.mesh.ca_server import CAServicer, TestCA, TestPKI, free_port

FAST = RetryPolicy(initial_wait=0.01)
IDENTITY = WorkloadIdentity("cluster.local", "ns1", "productpage")


@pytest.fixture(scope="module")
def pki():
    return TestPKI()


@pytest.fixture
def files(tmp_path, pki):
    pki.write_root(tmp_path / "root-cert.pem")
    (tmp_path / "istio-token").write_text(pki.token("ns1", "productpage") + "\n")
    return tmp_path


def _options(files, address, **kw) -> CAClientOptions:
    kw.setdefault("retry", FAST)
    return CAClientOptions(address=address, root_cert_path=str(files / "root-cert.pem"),
                           token_path=str(files / "istio-token"), **kw)


def _verify(chain: list[str], pki: TestPKI, key_pem: bytes, spiffe: str) -> x509.Certificate:
    from cryptography.hazmat.primitives import serialization
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    root = x509.load_pem_x509_certificate(chain[-1].encode())
    assert root == pki.root
    leaf.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    key = serialization.load_pem_private_key(key_pem, None)
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    return leaf


@pytest.mark.parametrize("algorithm", ["", "ECDSA"])
async def test_csr_signed_over_tls_with_istio_metadata(pki, files, algorithm):
    async with TestCA(pki, validity=45) as ca:
        client = CAClient(_options(files, ca.address, cluster_id="Kubernetes",
                                   headers={"X-Tenant": "a"}, cert_signer="signer1"))
        made = generate_key_and_csr(KeyOptions(ecc_signature_algorithm=algorithm), IDENTITY)
        chain = await client.create_certificate(made.csr_pem, 86400)
        await client.close()
    leaf = _verify(chain, pki, made.private_key_pem, IDENTITY.spiffe_uri)
    lifetime = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    assert 45 <= lifetime <= 51  # the CA capped the requested 86400 s
    [call] = ca.calls
    assert call.metadata["clusterid"] == "Kubernetes" and call.metadata["x-tenant"] == "a"
    assert call.metadata["authorization"] == "Bearer " + (files / "istio-token").read_text().strip()
    assert call.request.validity_duration == 86400
    assert dict(call.request.metadata) == {"CertSigner": "signer1"}
    assert client.stats.requests == 1 and client.stats.failures == 0 and client.stats.latency_ms > 0


async def test_token_is_read_on_every_call(pki, files):
    async with TestCA(pki) as ca:
        client = CAClient(_options(files, ca.address))
        csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
        await client.create_certificate(csr.csr_pem, 60)
        (files / "istio-token").write_text(pki.token("ns2", "reviews"))
        chain = await client.create_certificate(csr.csr_pem, 60)
        await client.close()
    _verify(chain, pki, csr.private_key_pem, "spiffe://cluster.local/ns/ns2/sa/reviews")
    assert [c.identity for c in ca.calls] == ["spiffe://cluster.local/ns/ns1/sa/productpage",
                                              "spiffe://cluster.local/ns/ns2/sa/reviews"]


async def test_refused_token_is_one_clear_line_without_retries(pki, files):
    (files / "istio-token").write_text(pki.token("ns1", "productpage", audience="kubernetes"))
    async with TestCA(pki) as ca:
        client = CAClient(_options(files, ca.address))
        csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
        with pytest.raises(CAError) as err:
            await client.create_certificate(csr.csr_pem, 60)
        await client.close()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"create certificate at CA {ca.address} failed: Unauthenticated: "
                              "request authenticate failure")
    assert str(files / "istio-token") in message
    assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert len(ca.calls) == 1 and client.stats.retries == 0 and client.stats.failures == 1


async def test_missing_token_file_sends_no_authorization(pki, files):
    (files / "istio-token").unlink()
    async with TestCA(pki) as ca:
        client = CAClient(_options(files, ca.address))
        csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
        with pytest.raises(CAError, match="Unauthenticated"):
            await client.create_certificate(csr.csr_pem, 60)
        await client.close()
    assert "authorization" not in ca.calls[0].metadata


async def test_ca_down_then_up_succeeds_within_the_retries(pki, files):
    port = free_port()
    ca = TestCA(pki, port=port)
    client = CAClient(_options(files, f"localhost:{port}", retry=RetryPolicy(initial_wait=0.2)))
    csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
    call = asyncio.create_task(client.create_certificate(csr.csr_pem, 60))
    await asyncio.sleep(0.3)
    await ca.start()
    try:
        chain = await asyncio.wait_for(call, 10)
    finally:
        await client.close()
        await ca.stop()
    _verify(chain, pki, csr.private_key_pem, IDENTITY.spiffe_uri)
    assert client.stats.retries >= 1 and client.stats.failures == 0


async def test_ca_down_gives_up_after_five_attempts_with_istio_waits(files):
    waits: list[float] = []

    async def sleep(d):
        waits.append(d)

    client = CAClient(_options(files, f"127.0.0.1:{free_port()}", retry=RetryPolicy()), sleep=sleep)
    csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
    with pytest.raises(CAError) as err:
        await client.create_certificate(csr.csr_pem, 60)
    await client.close()
    assert err.value.code is grpc.StatusCode.UNAVAILABLE and "\n" not in str(err.value)
    assert len(waits) == 4
    assert all(abs(w / b - 1) <= 0.1 for w, b in zip(waits, [0.1, 0.2, 0.4, 0.8]))
    assert client.stats.retries == 4 and client.stats.failures == 1


async def test_wrong_server_name_is_refused_by_tls(pki, files):
    async with TestCA(pki) as ca:
        client = CAClient(_options(files, ca.address, server_name="other.istio-system.svc",
                                   retry=RetryPolicy(attempts=2, initial_wait=0.01)))
        csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
        with pytest.raises(CAError, match="Unavailable"):
            await client.create_certificate(csr.csr_pem, 60)
        await client.close()
    assert ca.calls == []


async def test_plaintext_on_15010_still_sends_the_token(pki, files):
    host = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    # A loopback address of its own, so Istio's fixed plaintext port cannot clash.
    async with TestCA(pki, plaintext=True, port=15010, host=host) as ca:
        client = CAClient(_options(files, ca.address))
        csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
        chain = await client.create_certificate(csr.csr_pem, 60)
        await client.close()
    _verify(chain, pki, csr.private_key_pem, IDENTITY.spiffe_uri)
    assert ca.calls[0].metadata["authorization"].startswith("Bearer ")


async def test_missing_root_file_is_one_line(files):
    client = CAClient(CAClientOptions(address="127.0.0.1:1", root_cert_path=str(files / "nope.pem"),
                                      token_path=str(files / "istio-token")))
    with pytest.raises(CAError, match=r"missing a root certificate .*nope.pem: No such file"):
        await client.create_certificate(b"csr", 60)


def test_address_and_server_name_rules():
    assert ca_client.ca_address("", "istiod.istio-system.svc:15012") == "istiod.istio-system.svc:15012"
    assert ca_client.ca_address("ca.example:443", "istiod.istio-system.svc:15012") == "ca.example:443"
    assert ca_client.is_plaintext("istiod.istio-system.svc:15010")
    assert not ca_client.is_plaintext("istiod.istio-system.svc:15012")
    name = ca_client.tls_server_name
    assert name("istiod-canary.istio-system.svc:15012") == "istiod-canary.istio-system.svc"
    assert name("localhost:15012") == "istiod.istio-system.svc"
    assert name("[2001:db8::1]:15012") == "2001:db8::1"
    assert name("istiod.istio-system.svc:15012", istiod_san="istiod.x.svc", ca_addr_set=True) == \
        "istiod.istio-system.svc"
    assert name("istiod.istio-system.svc:15012", istiod_san="istiod.x.svc", ca_addr_set=False) == "istiod.x.svc"


def test_root_lookup_order():
    root = ca_client.ca_root_cert
    yes = lambda _: True  # noqa: E731
    assert root("SYSTEM", "custom", "/prov", exists=yes) is None
    assert root("/my/root.pem", "custom", "/prov", exists=yes) == "/my/root.pem"
    assert root("", "custom", "/prov", exists=yes) == "./etc/certs/root-cert.pem"
    assert root("", "istiod", "/prov", exists=lambda _: False) == "/prov/root-cert.pem"
    assert root("", "istiod", "", exists=yes) == "./var/run/secrets/istio/root-cert.pem"
    assert root("", "kubernetes", "", exists=yes) == "./var/run/secrets/istio/root-cert.pem"
    with pytest.raises(CAConfigError, match="root CA file for CA required but configured provider as none"):
        root("", "none", "", exists=yes)
    with pytest.raises(CAConfigError, match="root CA file for CA does not exist ./var/run/secrets/istio/root"):
        root("", "istiod", "", exists=lambda _: False)


def test_token_path_for_every_jwt_policy():
    for policy in ("third-party-jwt", "first-party-jwt", "other"):
        assert ca_client.token_path(policy) == "./var/run/secrets/tokens/istio-token"


def _provision(pki: TestPKI, directory, seconds: float) -> None:
    """A VM's pre-provisioned certificate (PROV_CERT): key.pem + cert-chain.pem from the mesh CA."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue(key.public_key(), x509.UniformResourceIdentifier(IDENTITY.spiffe_uri), seconds)
    directory.mkdir(exist_ok=True)
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "cert-chain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("seconds,accepted", [(3600, True), (-2, False)])
async def test_prov_cert_is_the_client_certificate_unless_expired(pki, files, seconds, accepted):
    _provision(pki, files / "prov", seconds)
    async with TestCA(pki, require_client_cert=True) as ca:
        client = CAClient(_options(files, ca.address, client_cert_dir=str(files / "prov"),
                                   retry=RetryPolicy(attempts=1)))
        csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
        if accepted:
            chain = await client.create_certificate(csr.csr_pem, 60)
            _verify(chain, pki, csr.private_key_pem, IDENTITY.spiffe_uri)
        else:  # expired: no client certificate is sent, and this CA insists on one
            with pytest.raises(CAError, match="Unavailable"):
                await client.create_certificate(csr.csr_pem, 60)
        await client.close()


def test_token_expiry_is_read_without_verifying(pki):
    token = pki.token("ns1", "sa", lifetime=-60)
    assert ca_client.token_expiry(token) < time.time()
    assert ca_client.token_expiry("not-a-jwt") is None
    assert ca_client.token_expiry("a.!!!.c") is None


async def test_expired_token_is_warned_and_refused(pki, files, capsys):
    (files / "istio-token").write_text(pki.token("ns1", "productpage", lifetime=-60))
    async with TestCA(pki) as ca:
        client = CAClient(_options(files, ca.address))
        csr = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA"), IDENTITY)
        with pytest.raises(CAError, match="Unauthenticated: request authenticate failure: Signature has expired"):
            await client.create_certificate(csr.csr_pem, 60)
        await client.close()
    assert f"the token in {files / 'istio-token'} expired at" in capsys.readouterr().out


async def test_a_ca_answering_nonsense_is_an_error_not_a_crash(pki, files):
    class OnlyLeaf(CAServicer):
        async def CreateCertificate(self, request, context):
            return ca_pb2.IstioCertificateResponse(cert_chain=["just one"])

    ca = TestCA(pki)
    ca.servicer = OnlyLeaf(pki)
    async with ca:
        client = CAClient(_options(files, ca.address))
        with pytest.raises(CAError, match="invalid empty CertChain"):
            await client.create_certificate(b"csr", 60)
        await client.close()


def test_ca_provider_and_credential_fetcher_checks():
    ca_client.check_ca_provider("Citadel", "istiod.istio-system.svc:15012")
    with pytest.raises(CAConfigError, match='CA provider "GoogleCA" not registered'):
        ca_client.check_ca_provider("Citadel", "meshca.googleapis.com:443")
    with pytest.raises(CAConfigError, match='CA provider "Vault" not registered'):
        ca_client.check_ca_provider("Vault")
    ca_client.check_credential_fetcher("")
    ca_client.check_credential_fetcher("JWT")
    with pytest.raises(CAConfigError, match="invalid credential fetcher type X"):
        ca_client.check_credential_fetcher("X")
    with pytest.raises(CAConfigError, match="GoogleComputeEngine is not supported"):
        ca_client.check_credential_fetcher("GoogleComputeEngine")
