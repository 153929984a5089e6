"""Keys and CSRs as Istio builds them, checked by parsing them back with cryptography."""
from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from agent.mesh.keys import CSRError, KeyOptions, WorkloadIdentity, generate_key_and_csr

IDENTITY = WorkloadIdentity("cluster.local", "ns1", "productpage")


def _parse(options: KeyOptions):
    made = generate_key_and_csr(options, IDENTITY)
    csr = x509.load_pem_x509_csr(made.csr_pem)
    key = serialization.load_pem_private_key(made.private_key_pem, None)
    return made, csr, key


def test_rsa_default_csr_has_critical_spiffe_san_and_empty_org():
    made, csr, key = _parse(KeyOptions())
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert made.private_key_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert made.csr_pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert [(a.oid, a.value) for a in csr.subject] == [(NameOID.ORGANIZATION_NAME, "")]
    [ext] = list(csr.extensions)
    assert ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME and ext.critical
    assert ext.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/ns1/sa/productpage"]
    assert len(list(ext.value)) == 1
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize("curve,size,digest", [("P256", 256, hashes.SHA256), ("", 256, hashes.SHA256),
                                               ("P384", 384, hashes.SHA384)])
def test_ecdsa_curves(curve, size, digest):
    made, csr, key = _parse(KeyOptions(ecc_signature_algorithm="ECDSA", ecc_curve=curve))
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == size
    assert made.private_key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert isinstance(csr.signature_hash_algorithm, digest) and csr.is_signature_valid


def test_pkcs8_and_a_fresh_key_every_time():
    a = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA", pkcs8=True), IDENTITY)
    b = generate_key_and_csr(KeyOptions(ecc_signature_algorithm="ECDSA", pkcs8=True), IDENTITY)
    assert a.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert a.private_key_pem != b.private_key_pem


def test_empty_identity_is_not_sanitised():
    assert WorkloadIdentity().spiffe_uri == "spiffe://cluster.local/ns//sa/"


@pytest.mark.parametrize("options,message", [
    (KeyOptions(ecc_signature_algorithm="ED25519"),
     "csr cert generation fails due to unsupported EC signature algorithm: ECC_SIGNATURE_ALGORITHM='ED25519'"),
    (KeyOptions(rsa_key_size=1024),
     "requested key size does not meet the minimum required size of 2048 (requested: 1024)"),
])
def test_refused_options(options, message):
    with pytest.raises(CSRError) as err:
        generate_key_and_csr(options, IDENTITY)
    assert str(err.value) == message
