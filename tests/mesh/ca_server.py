"""A test CA speaking Istio's ``IstioCertificateService`` on grpcio, with real X.509.

    pki = TestPKI()                       # root CA, istiod serving cert, token signing key
    async with TestCA(pki, validity=30) as ca:   # TLS on 127.0.0.1:<ca.port>
        token = pki.token("ns1", "productpage")

``CreateCertificate`` does what istiod does for a sidecar: it authenticates the
bearer JWT (RS256, audience ``istio-ca``, ``sub`` ``system:serviceaccount:<ns>:<sa>``),
checks the CSR's signature and issues a certificate for the identity of the token,
not the one in the CSR, valid for min(requested, ``validity``) seconds. Chain:
``[leaf, root]``. Reusable: ``CAServicer`` can be added to any grpc.aio server
(the test istiod puts it beside its ADS service).
"""
from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass, field

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.mesh.protos import ca_pb2, ca_pb2_grpc

ISTIOD_SAN = "istiod.istio-system.svc"
AUDIENCE = "istio-ca"
# Workload certificates serve both sides of mTLS, as istiod issues them.
WORKLOAD_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class TestPKI:
    """A root CA, istiod's serving certificate, and the key the 'API server' signs tokens with."""

    __test__ = False  # not a pytest class

    def __init__(self, server_san: str = ISTIOD_SAN):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agent-test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
        self.root = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.root_key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(_now() - datetime.timedelta(minutes=1))
                     .not_valid_after(_now() + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.root_key, hashes.SHA256()))
        self.root_pem = _pem(self.root)
        self.server_key = ec.generate_private_key(ec.SECP256R1())
        self.server_cert = self.issue(self.server_key.public_key(), x509.DNSName(server_san), 86400,
                                      (ExtendedKeyUsageOID.SERVER_AUTH,))
        self.server_cert_pem = _pem(self.server_cert)
        self.server_key_pem = _key_pem(self.server_key)
        self.token_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def issue(self, public_key, san: x509.GeneralName, seconds: float,
              usages: tuple[x509.ObjectIdentifier, ...] = WORKLOAD_USAGES) -> x509.Certificate:
        """A certificate for ``san`` signed by the root, valid ``seconds`` from now."""
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([])).issuer_name(self.root.subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(seconds=5))
                .not_valid_after(_now() + datetime.timedelta(seconds=seconds))
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
                .sign(self.root_key, hashes.SHA256()))

    def token(self, namespace: str, service_account: str, audience: str = AUDIENCE,
              lifetime: float = 3600, key=None) -> str:
        """A projected service-account token as the kubelet mounts it."""
        claims = {"iss": "https://kubernetes.default.svc", "aud": [audience],
                  "sub": f"system:serviceaccount:{namespace}:{service_account}",
                  "iat": int(_now().timestamp()), "exp": int(_now().timestamp() + lifetime)}
        return jwt.encode(claims, key or self.token_key, algorithm="RS256")

    def write_root(self, path) -> None:
        with open(path, "wb") as f:
            f.write(self.root_pem)


@dataclass
class Issued:
    """What one CreateCertificate call received, for the tests to inspect."""

    metadata: dict[str, str]
    request: ca_pb2.IstioCertificateRequest
    identity: str | None = None
    refused: str | None = None


@dataclass
class CAServicer(ca_pb2_grpc.IstioCertificateServiceServicer):
    pki: TestPKI
    validity: float = 60.0  # the CA's maximum workload TTL, seconds
    calls: list[Issued] = field(default_factory=list)

    async def CreateCertificate(self, request, context):
        seen = Issued(dict(context.invocation_metadata()), request)
        self.calls.append(seen)
        try:
            seen.identity = self._authenticate(seen.metadata.get("authorization", ""))
        except (jwt.InvalidTokenError, ValueError) as err:
            seen.refused = str(err)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"request authenticate failure: {err}")
        try:
            csr = x509.load_pem_x509_csr(request.csr.encode())
            if not csr.is_signature_valid:
                raise ValueError("bad CSR signature")
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"CSR parsing error ({err})")
        ttl = min(request.validity_duration or 86400, self.validity)
        leaf = self.pki.issue(csr.public_key(), x509.UniformResourceIdentifier(seen.identity), ttl)
        return ca_pb2.IstioCertificateResponse(cert_chain=[_pem(leaf).decode(), self.pki.root_pem.decode()])

    def _authenticate(self, authorization: str) -> str:
        """The SPIFFE identity of the bearer token; raises when it is not valid."""
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            raise ValueError("no bearer token")
        claims = jwt.decode(token, self.pki.token_key.public_key(), algorithms=["RS256"], audience=AUDIENCE)
        prefix, _, rest = claims.get("sub", "").partition("system:serviceaccount:")
        namespace, _, sa = rest.partition(":")
        if prefix or not namespace or not sa:
            raise ValueError(f"token subject {claims.get('sub')!r} is not a service account")
        return f"spiffe://cluster.local/ns/{namespace}/sa/{sa}"


class TestCA:
    """The servicer on its own grpc.aio server: TLS with istiod's certificate, or plaintext."""

    __test__ = False

    def __init__(self, pki: TestPKI, *, validity: float = 60.0, port: int = 0, plaintext: bool = False,
                 host: str = "127.0.0.1", require_client_cert: bool = False):
        self.pki, self.servicer = pki, CAServicer(pki, validity)
        self.host, self.port, self.plaintext = host, port, plaintext
        self.require_client_cert = require_client_cert  # mTLS with a certificate from pki (PROV_CERT)
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        """How a client dials it: a "localhost" host makes Istio's client verify the
        certificate as istiod.istio-system.svc, as port-forwarded setups do."""
        return f"localhost:{self.port}" if self.host == "127.0.0.1" else f"{self.host}:{self.port}"

    @property
    def calls(self) -> list[Issued]:
        return self.servicer.calls

    async def start(self) -> TestCA:
        self._server = grpc.aio.server()
        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(self.servicer, self._server)
        bind = f"{self.host}:{self.port}"
        if self.plaintext:
            self.port = self._server.add_insecure_port(bind)
        else:
            creds = grpc.ssl_server_credentials(
                [(self.pki.server_key_pem, self.pki.server_cert_pem)],
                root_certificates=self.pki.root_pem if self.require_client_cert else None,
                require_client_auth=self.require_client_cert)
            self.port = self._server.add_secure_port(bind, creds)
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> TestCA:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()
