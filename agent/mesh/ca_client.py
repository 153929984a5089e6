"""The client of Istio's CA: ``istio.v1.auth.IstioCertificateService/CreateCertificate``.

What it sends matches Istio's agent (https://github.com/istio/istio/tree/master/security/pkg/nodeagent/caclient):
TLS unless the address ends in ``:15010``, the bearer token re-read from its file
on every attempt (so a token the kubelet rotated is picked up), ``clusterid``
and the ``CA_HEADER_*`` headers, and 5 attempts with waits of 100-800 ms for
transient gRPC codes. Unlike Istio each attempt has a deadline, so one hung call
cannot block every later certificate request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
from cryptography import x509

from agent.mesh import pem
from agent.mesh.upstream import ISTIOD_SVC
from agent.mesh.protos import ca_pb2, ca_pb2_grpc
from agent.sidecar import logs

log = logs.get("ca")

THIRD_PARTY_TOKEN_PATH = "./var/run/secrets/tokens/istio-token"
DEFAULT_ROOT_CERT = "./var/run/secrets/istio/root-cert.pem"
LEGACY_ROOT_CERT = "./etc/certs/root-cert.pem"
PLAINTEXT_PORT_SUFFIX = ":15010"

# gRPC codes worth another attempt; the others (Unauthenticated, PermissionDenied,
# InvalidArgument...) will not change by asking again.
RETRYABLE = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
})


class CAConfigError(ValueError):
    """The CA client cannot be configured (start-up error, one line)."""


class CAError(Exception):
    """A certificate request failed; ``str()`` is one line naming the CA and the status."""

    def __init__(self, address: str, reason: str, code: grpc.StatusCode | None = None):
        self.address, self.reason, self.code = address, reason, code
        super().__init__(f"create certificate at CA {address} failed: {reason}")


def status_name(code: grpc.StatusCode) -> str:
    """Go's spelling of a gRPC code ("Unauthenticated", "DeadlineExceeded"), as istiod logs it."""
    return code.name.title().replace("_", "")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Waits before attempts 2..N: initial_wait * multiplier**(n-2), +-jitter (fraction)."""

    attempts: int = 5
    initial_wait: float = 0.1
    multiplier: float = 2.0
    jitter: float = 0.1

    def wait(self, attempt: int, u: float) -> float:
        """The wait before ``attempt`` (2-based), ``u`` uniform in [0, 1)."""
        base = self.initial_wait * self.multiplier ** (attempt - 2)
        return base * (1 + self.jitter * (2 * u - 1))


@dataclass(frozen=True, slots=True)
class CAClientOptions:
    address: str = f"{ISTIOD_SVC}:15012"  # see ca_address()
    root_cert_path: str | None = DEFAULT_ROOT_CERT  # None: the OS trust store; see ca_root_cert()
    server_name: str | None = None  # TLS name to verify; None: tls_server_name(address)
    token_path: str = THIRD_PARTY_TOKEN_PATH  # see token_path()
    cluster_id: str = ""  # ISTIO_META_CLUSTER_ID, sent even when empty
    headers: Mapping[str, str] = field(default_factory=dict)  # CA_HEADER_<NAME>=v as {NAME: v}
    cert_signer: str = ""  # ISTIO_META_CERT_SIGNER
    client_cert_dir: str | None = None  # PROV_CERT: key.pem + cert-chain.pem as client certificate
    retry: RetryPolicy = RetryPolicy()
    attempt_timeout: float | None = 10.0
    keepalive_interval: float = 30.0  # GRPC_KEEPALIVE_INTERVAL
    keepalive_timeout: float = 10.0  # GRPC_KEEPALIVE_TIMEOUT


def ca_address(ca_addr: str, discovery_address: str) -> str:
    """``CA_ADDR`` if set, otherwise the discovery address (istiod is the CA)."""
    return ca_addr or discovery_address


def check_ca_provider(ca_provider: str = "Citadel", ca_addr: str = "") -> None:
    """``CA_PROVIDER``: only Citadel (any CA speaking Istio's API, istiod included) is
    built in, as in open-source Istio; an address at googleapis.com means Google's CA."""
    provider = "GoogleCA" if "googleapis.com" in ca_addr else ca_provider
    if provider != "Citadel":
        raise CAConfigError(f'CA provider "{provider}" not registered')


def check_credential_fetcher(fetcher_type: str = "JWT") -> None:
    """``CREDENTIAL_FETCHER_TYPE``: the token file ("JWT", or unset) is the only source here."""
    if fetcher_type == "GoogleComputeEngine":
        raise CAConfigError("CREDENTIAL_FETCHER_TYPE=GoogleComputeEngine is not supported by this agent")
    if fetcher_type not in ("", "JWT"):
        raise CAConfigError(f"invalid credential fetcher type {fetcher_type}")


def is_plaintext(address: str) -> bool:
    """Istio's plaintext port 15010 is dialled without TLS; everything else uses TLS."""
    return address.endswith(PLAINTEXT_PORT_SUFFIX)


def tls_server_name(address: str, istiod_san: str = "", ca_addr_set: bool = True) -> str:
    """The name the CA's certificate must carry.

    The host part of the address, with any ``localhost`` host meaning istiod
    (port-forwarded or local tests); ``ISTIOD_SAN`` overrides it only when the CA
    is the discovery address (``CA_ADDR`` unset).
    """
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or "]" in address else address
    host = host.strip("[]")
    if "localhost" in host:
        host = ISTIOD_SVC
    if not ca_addr_set and istiod_san:
        host = istiod_san
    return host


def ca_root_cert(ca_root_ca: str = "", pilot_cert_provider: str = "istiod", prov_cert: str = "",
                 exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """The root file that verifies the CA (None = the OS trust store), first match wins."""
    if ca_root_ca == "SYSTEM":
        return None
    if ca_root_ca:
        path = ca_root_ca
    elif pilot_cert_provider == "custom":
        path = LEGACY_ROOT_CERT
    elif prov_cert:
        return os.path.join(prov_cert, "root-cert.pem")  # checked when dialling
    elif pilot_cert_provider == "none":
        raise CAConfigError("root CA file for CA required but configured provider as none "
                            "(PILOT_CERT_PROVIDER=none)")
    else:
        path = DEFAULT_ROOT_CERT
    if not exists(path):
        raise CAConfigError(f"failed to find root CA cert for CA: root CA file for CA does not exist {path}")
    return path


def token_path(jwt_policy: str = "third-party-jwt") -> str:
    """The token file for ``JWT_POLICY``: every policy now reads the projected token."""
    if jwt_policy == "first-party-jwt":
        log.warning("Using deprecated JWT policy 'first-party-jwt'; treating as 'third-party-jwt'")
    elif jwt_policy != "third-party-jwt":
        log.info("Using existing certs")
    return THIRD_PARTY_TOKEN_PATH


def read_token(path: str) -> str:
    """The token, whitespace trimmed; "" (with a warning) when the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        log.warning(f"failed to fetch token from file: {err}")
        return ""
    if (expiry := token_expiry(token)) is not None and expiry <= time.time():
        # Sent anyway (the CA may accept a client certificate), but the refusal that
        # follows would otherwise not say why.
        log.warning(f"the token in {path} expired at "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expiry))}; the CA will refuse it")
    return token


def token_expiry(token: str) -> float | None:
    """The JWT's ``exp`` claim, read without verifying the token (None if there is none)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError):
        return None


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


@dataclass(slots=True)
class CAStats:
    """Counters as Istio exports them for CSRs (request_type="csr")."""

    requests: int = 0  # num_outgoing_requests
    retries: int = 0  # num_outgoing_retries
    failures: int = 0  # num_failed_outgoing_requests
    latency_ms: float = 0.0  # outgoing_latency (sum, failed calls included)


class CAClient:
    """Signs CSRs at one CA, on a channel dialled for each certificate (with its retries): a new
    CA serving certificate or root file is picked up, and no connection idles between renewals."""

    def __init__(self, options: CAClientOptions, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 uniform: Callable[[], float] = random.random):
        self.options = options
        self.stats = CAStats()
        self._sleep, self._uniform = sleep, uniform
        self._channel: grpc.aio.Channel | None = None
        self._failed_before = False

    async def create_certificate(self, csr_pem: bytes | str, validity_seconds: int) -> list[str]:
        """The PEM chain (leaf first, root last) for ``csr_pem``; CAError on failure."""
        request = ca_pb2.IstioCertificateRequest(
            csr=csr_pem.decode() if isinstance(csr_pem, bytes) else csr_pem,
            validity_duration=int(validity_seconds))
        request.metadata.update({"CertSigner": self.options.cert_signer})
        self.stats.requests += 1
        started = time.monotonic()
        try:
            response = await self._call_with_retries(request)
        except CAError:
            self.stats.failures += 1
            self._failed_before = True
            raise
        finally:
            self.stats.latency_ms += (time.monotonic() - started) * 1000
            # A new channel for every certificate: renewals are hours apart, and a connection kept
            # idle that long may be dead without the channel knowing (an istiod restarted or moved),
            # which costs a whole attempt deadline to find out.
            await self.close()
        if len(response.cert_chain) <= 1:
            raise CAError(self.options.address, "invalid empty CertChain")
        return list(response.cert_chain)

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def _call_with_retries(self, request: ca_pb2.IstioCertificateRequest):
        policy = self.options.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                stub = ca_pb2_grpc.IstioCertificateServiceStub(self._dial())
                return await stub.CreateCertificate(
                    request, metadata=self._metadata(), timeout=self.options.attempt_timeout)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code not in RETRYABLE or attempt == policy.attempts:
                    raise self._error(code, err.details()) from None
                wait = policy.wait(attempt + 1, self._uniform())
                log.warning(f"ca request failed, starting attempt {attempt + 1} in {wait * 1000:.0f}ms",
                            code=status_name(code))
                self.stats.retries += 1
                await self._sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _error(self, code: grpc.StatusCode, details: str | None) -> CAError:
        reason = f"{status_name(code)}: {_one_line(details or '')}"
        if code is grpc.StatusCode.UNAUTHENTICATED:
            reason += f" (the CA refused the token in {self.options.token_path})"
        return CAError(self.options.address, reason, code)

    def _metadata(self) -> list[tuple[str, str]]:
        # Explicit call metadata rather than call credentials: grpcio refuses call
        # credentials on a plaintext channel, and Istio sends the token on :15010 too.
        md = [("clusterid", self.options.cluster_id)]
        md += [(name.lower(), value) for name, value in self.options.headers.items()]
        if token := read_token(self.options.token_path):
            md.append(("authorization", f"Bearer {token}"))
        return md

    def _dial(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._failed_before:
                log.info("recreated connection", address=self.options.address)
                self._failed_before = False
            self._channel = self._new_channel()
        return self._channel

    def _new_channel(self) -> grpc.aio.Channel:
        o = self.options
        options = [
            ("grpc.keepalive_time_ms", int(o.keepalive_interval * 1000)),
            ("grpc.keepalive_timeout_ms", int(o.keepalive_timeout * 1000)),
            ("grpc.max_receive_message_length", 2**31 - 1),
        ]
        if is_plaintext(o.address):
            log.warning("Debug mode or IP-secure network", address=o.address)
            return grpc.aio.insecure_channel(o.address, options=options)
        name = o.server_name or tls_server_name(o.address)
        options.append(("grpc.ssl_target_name_override", name))
        return grpc.aio.secure_channel(o.address, self._credentials(), options=options)

    def _credentials(self) -> grpc.ChannelCredentials:
        o = self.options
        root_path = o.root_cert_path or pem.system_bundle_path()
        try:
            roots = open(root_path, "rb").read() if root_path else None
        except OSError as err:
            raise CAError(o.address, f"missing a root certificate {root_path}: {err.strerror}") from None
        key, chain = self._client_certificate()
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                            certificate_chain=chain)

    def _client_certificate(self) -> tuple[bytes | None, bytes | None]:
        """PROV_CERT's key and chain, unless the chain is unreadable or expired."""
        if not self.options.client_cert_dir:
            return None, None
        d = self.options.client_cert_dir
        try:
            key = open(os.path.join(d, "key.pem"), "rb").read()
            chain = open(os.path.join(d, "cert-chain.pem"), "rb").read()
            leaf = x509.load_pem_x509_certificate(pem.cert_blocks(chain)[0])
        except (OSError, ValueError, IndexError):
            log.warning("cert expired, using token instead", dir=d)
            return None, None
        if leaf.not_valid_after_utc.timestamp() <= time.time():
            log.warning("cert expired, using token instead", dir=d)
            return None, None
        return key, chain
