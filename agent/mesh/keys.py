"""The workload's private key and certificate signing request, as Istio builds them.

A fresh key is generated for every CSR (every rotation) and stays in memory: it
is only written out when the secret manager is told to (``OUTPUT_CERTS``).
Istio's code: https://github.com/istio/istio/blob/master/security/pkg/pki/util/generate_csr.go
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

MIN_RSA_KEY_SIZE = 2048


class CSRError(ValueError):
    """The key or CSR cannot be generated with these options (Istio's wording)."""


class KeyAlgorithm(enum.Enum):
    RSA = "RSA"
    ECDSA = "ECDSA"


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """``ECC_SIGNATURE_ALGORITHM``, ``ECC_CURVE``, ``WORKLOAD_RSA_KEY_SIZE``, ``PKCS8_KEY``."""

    ecc_signature_algorithm: str = ""  # "" -> RSA, "ECDSA" -> EC, anything else is an error
    ecc_curve: str = "P256"  # with ECDSA: "P384" -> P-384, anything else -> P-256
    rsa_key_size: int = 2048
    pkcs8: bool = False  # PEM "PRIVATE KEY" instead of "RSA PRIVATE KEY" / "EC PRIVATE KEY"

    @property
    def algorithm(self) -> KeyAlgorithm:
        match self.ecc_signature_algorithm:
            case "":
                return KeyAlgorithm.RSA
            case "ECDSA":
                return KeyAlgorithm.ECDSA
        raise CSRError(
            "csr cert generation fails due to unsupported EC signature algorithm: "
            f"ECC_SIGNATURE_ALGORITHM={self.ecc_signature_algorithm!r}"
        )

    def validate(self) -> None:
        """Raise CSRError for options Istio refuses, so start-up can report them."""
        if self.algorithm is KeyAlgorithm.RSA and self.rsa_key_size < MIN_RSA_KEY_SIZE:
            raise CSRError(
                "requested key size does not meet the minimum required size of "
                f"{MIN_RSA_KEY_SIZE} (requested: {self.rsa_key_size})"
            )


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """``TRUST_DOMAIN``, ``POD_NAMESPACE`` and ``SERVICE_ACCOUNT``.

    Empty values are kept as they are (``spiffe://cluster.local/ns//sa/``), as Istio
    does: istiod takes the identity from the token anyway.
    """

    trust_domain: str = "cluster.local"
    namespace: str = ""
    service_account: str = ""

    @property
    def spiffe_uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True)
class KeyAndCSR:
    private_key_pem: bytes
    csr_pem: bytes


def generate_key(options: KeyOptions) -> PrivateKey:
    options.validate()
    if options.algorithm is KeyAlgorithm.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=options.rsa_key_size)
    curve = ec.SECP384R1() if options.ecc_curve == "P384" else ec.SECP256R1()
    return ec.generate_private_key(curve)


def private_key_pem(key: PrivateKey, pkcs8: bool = False) -> bytes:
    if pkcs8:
        fmt = serialization.PrivateFormat.PKCS8
    else:  # PKCS#1 for RSA, SEC1 for EC: both are "TraditionalOpenSSL"
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    # Go's x509 default for the key: SHA-384 for P-384, SHA-256 otherwise.
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def build_csr(key: PrivateKey, identity: WorkloadIdentity) -> bytes:
    """The CSR: subject with one empty Organization, one critical URI SAN, nothing else.

    The SAN is critical because the subject carries no name (RFC 5280 requires a
    critical subjectAltName in that case), which is why Istio marks it so.
    """
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_uri)]),
            critical=True,
        )
        .sign(key, _signature_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def generate_key_and_csr(options: KeyOptions, identity: WorkloadIdentity) -> KeyAndCSR:
    """A new key (never reused) and the CSR for ``identity`` signed with it."""
    key = generate_key(options)
    return KeyAndCSR(private_key_pem(key, options.pkcs8), build_csr(key, identity))
