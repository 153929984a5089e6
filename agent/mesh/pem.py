"""PEM and X.509 helpers for the secrets the agent serves: chains, bundles, key pairs."""

from __future__ import annotations

import os
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.sidecar import logs

log = logs.get("cache")

_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)

# Where operating systems keep their trust bundle, in the order Istio looks
# (served for "file-root:system" and used for CA_ROOT_CA=SYSTEM).
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/ssl/cert.pem",
    "/etc/ssl/certs/ca-certificates",
)


class PEMError(ValueError):
    """The PEM data is not what it must be (no certificate, key not matching...)."""


def system_bundle_path() -> str | None:
    return next((p for p in SYSTEM_BUNDLES if os.path.isfile(p)), None)


def cert_blocks(data: bytes) -> list[bytes]:
    return _CERT_BLOCK.findall(data)


def join_chain(elements: list[str]) -> bytes:
    """The CA's chain elements concatenated in order, a newline after any that lacks one."""
    return b"".join(e.encode() if e.endswith("\n") else e.encode() + b"\n" for e in elements)


def leaf_not_after(chain: bytes) -> float:
    """Unix time of the first certificate's notAfter; PEMError if there is none."""
    blocks = cert_blocks(chain)
    if not blocks:
        raise PEMError("no certificate in the chain")
    try:
        return x509.load_pem_x509_certificate(blocks[0]).not_valid_after_utc.timestamp()
    except ValueError as err:
        raise PEMError(f"invalid leaf certificate: {err}") from None


def valid_bundle(data: bytes, source: str) -> bytes:
    """The certificates of a root bundle that parse, each block on its own lines.

    Invalid certificates are dropped with an error log, as Istio does; a bundle
    with no valid certificate is a PEMError.
    """
    good, bad = [], 0
    for block in cert_blocks(data):
        try:
            x509.load_pem_x509_certificate(block)
        except ValueError:
            bad += 1
            continue
        good.append(block + b"\n")
    if bad:
        log.error(f"failed to parse some certs from file {source}", dropped=bad)
    if not good:
        raise PEMError(f"no valid certificate in {source}")
    return b"".join(good)


def check_key_pair(chain: bytes, key_pem: bytes) -> None:
    """PEMError unless the first certificate of ``chain`` belongs to ``key_pem``.

    Used on mounted files so a half-written pair (new certificate, old key) is
    never served.
    """
    blocks = cert_blocks(chain)
    if not blocks:
        raise PEMError("no certificate in the certificate file")
    try:
        cert = x509.load_pem_x509_certificate(blocks[0])
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise PEMError(f"cannot parse the certificate or key: {err}") from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, raw) != key.public_key().public_bytes(der, raw):
        raise PEMError("the private key does not match the certificate")
