"""Beside the real tests: a real X.509 test PKI made with `cryptography`, and an in-memory
SecretProvider serving it (the SDS server's contract without the CA client behind it)."""
from __future__ import annotations

import asyncio
import datetime
import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.mesh.secrets import SecretError, SecretItem

SPIFFE_ID = "spiffe://cluster.local/ns/ns1/sa/productpage"


def short_tmp(prefix: str = "m") -> str:
    """A directory under /tmp whose paths fit in sun_path (pytest's tmp_path can be too long)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class TestCa:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "agent-test-root") -> "TestCa":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @property
    def root_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *, uri: str | None = None, dns: str | None = None,
              hours: float = 24.0) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a SPIFFE `uri` (client+server) or a `dns` name (server)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.UniformResourceIdentifier(uri)] if uri else [x509.DNSName(dns or "localhost")]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = (x509.CertificateBuilder().subject_name(x509.Name([]) if uri else x509.Name(
                    [x509.NameAttribute(NameOID.COMMON_NAME, dns or "localhost")]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=1))
                .not_valid_after(now + datetime.timedelta(hours=hours))
                .add_extension(x509.SubjectAlternativeName(names), critical=bool(uri))
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


class FakeProvider:
    """`default` and `ROOTCA` from a TestCa, file names from `files`; rotate() and fail() for tests."""

    def __init__(self, ca: TestCa | None = None) -> None:
        self.ca = ca or TestCa.create()
        self._versions = itertools.count(1)
        self._callbacks: list[Callable[[str], None]] = []
        self.items: dict[str, SecretItem] = {}
        self.asked: list[str] = []
        self.error: str | None = None
        self.rotate("default", notify=False)
        self.items["ROOTCA"] = SecretItem("ROOTCA", None, None, self.ca.root_pem, "r1", None)

    def rotate(self, name: str = "default", notify: bool = True) -> SecretItem:
        cert, key = self.ca.issue(uri=SPIFFE_ID)
        item = SecretItem(name, cert, key, None, str(next(self._versions)), None)
        self.items[name] = item
        if notify:
            for callback in list(self._callbacks):
                callback(name)
        return item

    async def secret(self, name: str) -> SecretItem:
        self.asked.append(name)
        await asyncio.sleep(0)
        if self.error:
            raise SecretError(self.error)
        if name.startswith("file-root:"):
            with open(name.removeprefix("file-root:"), "rb") as f:
                return SecretItem(name, None, None, f.read(), "f1", None)
        if name not in self.items:
            raise SecretError(f"no secret {name}")
        return self.items[name]

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)
