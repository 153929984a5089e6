"""How the xDS proxy dials istiod: TLS, server name, token, ClusterID and the other stream metadata.

Istio's agent (https://github.com/istio/istio/blob/master/pkg/istio-agent/xds_proxy.go,
buildUpstreamClientDialOpts) builds a fresh gRPC channel for every Envoy stream, so each new stream
re-reads the root certificate and the token: a rotated root or token is picked up at the next
reconnect without a file watcher.
"""
from __future__ import annotations

import datetime
import enum
import os
from dataclasses import dataclass

import grpc
import grpc.aio

ISTIOD_SVC = "istiod.istio-system.svc"
#: istiod's TLS port. Istio 1.5.1 forced TLS on it whatever --controlPlaneAuthPolicy said
#: (pilot/cmd/pilot-agent/main.go at tag 1.5.1); today's pods send MUTUAL_TLS anyway.
TLS_PORT = 15012


class AuthPolicy(enum.StrEnum):
    """ProxyConfig.controlPlaneAuthPolicy."""

    NONE = "NONE"
    MUTUAL_TLS = "MUTUAL_TLS"


class UpstreamError(RuntimeError):
    """The upstream channel cannot be built (one line: which file or setting, and why)."""


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Istio's defaults for the istiod connection.

    `root_cert_path` is the first match of Istio's lookup (XDS_ROOT_CA, ./etc/certs/root-cert.pem,
    PROV_CERT, the file-mounted root, else ./var/run/secrets/istio/root-cert.pem); None means the OS
    trust store (XDS_ROOT_CA=SYSTEM). `headers` are the XDS_HEADER_<NAME>=<value> variables as
    (NAME, value). `client_cert`/`client_key` only with PROV_CERT or file-mounted certificates."""

    address: str = f"{ISTIOD_SVC}:{TLS_PORT}"
    auth_policy: AuthPolicy = AuthPolicy.MUTUAL_TLS
    root_cert_path: str | None = "./var/run/secrets/istio/root-cert.pem"
    istiod_san: str = ""
    cluster_id: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    token_path: str | None = "./var/run/secrets/tokens/istio-token"
    client_cert: str | None = None
    client_key: str | None = None
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    #: Istio lifts gRPC's 4 MiB default on the upstream call: a full CDS push can be far larger.
    max_receive_message_length: int = 2**31 - 1
    connect_timeout: float = 10.0

    @property
    def host(self) -> str:
        host, _, _ = self.address.rpartition(":")
        return host.strip("[]")

    @property
    def port(self) -> int | None:
        _, _, port = self.address.rpartition(":")
        return int(port) if port.isdigit() else None

    @property
    def tls(self) -> bool:
        return self.auth_policy is AuthPolicy.MUTUAL_TLS or self.port == TLS_PORT

    @property
    def server_name(self) -> str:
        """ISTIOD_SAN, else the address's host; `localhost` means istiod's service name."""
        if self.istiod_san:
            return self.istiod_san
        return ISTIOD_SVC if "localhost" in self.host else self.host


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UpstreamError(f"{what} does not exist {path}") from None
    except OSError as e:
        raise UpstreamError(f"failed to read {what} {path}: {e.strerror}") from None


def _client_pair(opts: UpstreamOptions) -> tuple[bytes, bytes] | tuple[None, None]:
    """The client certificate, skipped (as Istio does) when missing, unparsable or expired."""
    if not (opts.client_cert and opts.client_key):
        return None, None
    try:
        from cryptography import x509

        chain = _read(opts.client_cert, "client certificate")
        key = _read(opts.client_key, "client key")
        leaf = x509.load_pem_x509_certificate(chain)
    except (UpstreamError, ValueError):
        return None, None
    if leaf.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc):
        return None, None
    return key, chain


def check(opts: UpstreamOptions) -> None:
    """Start-up validation: with TLS the root file must exist (Istio fails start-up without it)."""
    if opts.tls and opts.root_cert_path is not None and not os.path.exists(opts.root_cert_path):
        raise UpstreamError(f"root CA file for XDS does not exist {opts.root_cert_path}")


def channel(opts: UpstreamOptions) -> grpc.aio.Channel:
    """A new channel to istiod (TLS or plaintext), with keepalive and message limits."""
    options = [("grpc.keepalive_time_ms", int(opts.keepalive_time * 1000)),
               ("grpc.keepalive_timeout_ms", int(opts.keepalive_timeout * 1000)),
               # grpc core stops pinging after 2 pings with no data; grpc-go (Istio) keeps pinging a
               # quiet stream, which is how a dead istiod connection is noticed between pushes.
               ("grpc.http2.max_pings_without_data", 0),
               # This grpc core times a keepalive ping out after the ping timeout (default 1 min),
               # not after keepalive_timeout alone.
               ("grpc.http2.ping_timeout_ms", int(opts.keepalive_timeout * 1000)),
               ("grpc.max_receive_message_length", opts.max_receive_message_length),
               ("grpc.enable_retries", 0)]
    if not opts.tls:
        return grpc.aio.insecure_channel(opts.address, options=options)
    root = None if opts.root_cert_path is None else _read(opts.root_cert_path, "root CA file for XDS")
    key, chain = _client_pair(opts)
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
    options.append(("grpc.ssl_target_name_override", opts.server_name))
    return grpc.aio.secure_channel(opts.address, credentials, options=options)


def _token(path: str) -> str:
    """The token as it is now; a missing file sends none (istiod then refuses the stream and says so,
    as the CA client does for CSRs)."""
    try:
        return _read(path, "token file").decode().strip()
    except UpstreamError:
        if os.path.exists(path):
            raise
        return ""


def metadata(opts: UpstreamOptions) -> tuple[tuple[str, str], ...]:
    """Per-stream metadata: ClusterID (always, possibly empty), the bearer token read now, the
    XDS_HEADER_* pairs. grpcio wants lowercase keys (Go lowercases them silently)."""
    pairs = [("clusterid", opts.cluster_id)]
    token = _token(opts.token_path) if opts.token_path else ""
    if token:
        pairs.append(("authorization", f"Bearer {token}"))
    pairs.extend((name.lower(), value) for name, value in opts.headers)
    return tuple(pairs)
