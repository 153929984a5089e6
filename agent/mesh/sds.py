"""The agent's SDS server: Envoy's workload certificate and trust bundle over a Unix socket.

Envoy's `sds-grpc` cluster is a pipe to this server; istiod's clusters and listeners name the secrets
`default` (the workload key and certificate) and `ROOTCA` (the mesh trust bundle), and
`file-cert:<cert>~<key>` / `file-root:<ca>` for certificates mounted as files. The protocol follows
Istio's server (https://github.com/istio/istio/blob/master/security/pkg/nodeagent/sds/sdsservice.go
and pkg/xds/server.go):

- State of the World only; one watch per stream, whatever names it holds. A NACK is logged once and
  answered with nothing, a stale nonce is ignored, an ACK of the same names is answered with nothing,
  added names are answered with only the added names.
- A rotation (the provider's watch callback) is pushed to every stream watching that secret.
- A secret that cannot be generated ends the stream with UNKNOWN; Envoy re-opens it after a backoff.
- A name that is neither of the four forms gets the workload certificate under the requested name, as
  Istio's secret manager does (istiod relies on it for nothing; we log it once per name).
"""
from __future__ import annotations

import asyncio
import itertools
import enum
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from agent.mesh import uds
from agent.mesh.pem import SYSTEM_BUNDLES
from agent.mesh.secrets import SecretItem, SecretProvider
from agent.sidecar import logs

log = logs.get("sds")

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD_CERT = "default"
ROOT_CERT = "ROOTCA"
FILE_CERT = "file-cert:"
FILE_ROOT = "file-root:"
SOCKET_DIR = "./var/run/secrets/workload-spiffe-uds"
DEFAULT_SOCKET_FILE = "socket"


@dataclass(frozen=True, slots=True)
class SdsOptions:
    """Istio's defaults. `socket_path` is `<SOCKET_DIR>/<WORKLOAD_IDENTITY_SOCKET_FILE>`, or
    `./var/run/secrets/credential-uds/files-socket` when an external SDS owns that one."""

    socket_path: str = f"{SOCKET_DIR}/{DEFAULT_SOCKET_FILE}"
    #: Added to every root secret when the file exists; None when PILOT_ENABLE_CA_CRL is false.
    crl_path: str | None = "/var/run/secrets/istio/crl/ca-crl.pem"
    max_concurrent_streams: int = 100_000
    system_bundles: tuple[str, ...] = SYSTEM_BUNDLES


def provider_name(name: str, system_bundles: tuple[str, ...] = SYSTEM_BUNDLES) -> str:
    """The secret the provider is asked for when Envoy asks for `name`.

    Well-formed names map to themselves (`file-root:system` to the first OS bundle present);
    anything else, malformed file names included, to the workload certificate."""
    if name in (WORKLOAD_CERT, ROOT_CERT):
        return name
    if name.startswith(FILE_CERT):
        cert, sep, key = name.removeprefix(FILE_CERT).partition("~")
        return name if sep and cert and key and "~" not in key else WORKLOAD_CERT
    if name.startswith(FILE_ROOT):
        path = name.removeprefix(FILE_ROOT)
        if path == "system":
            bundle = next((b for b in system_bundles if os.path.isfile(b)), None)  # a file to read, as pem's
            return f"{FILE_ROOT}{bundle}" if bundle else WORKLOAD_CERT
        return name if path and "~" not in path else WORKLOAD_CERT
    return WORKLOAD_CERT


def is_root(resolved: str) -> bool:
    return resolved == ROOT_CERT or resolved.startswith(FILE_ROOT)


def to_secret(name: str, resolved: str, item: SecretItem, crl_path: str | None) -> secret_pb2.Secret:
    """Envoy's Secret for one item, everything inline (Envoy never reads the key files itself)."""
    if is_root(resolved):
        context = common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=item.root_cert or b""))
        if crl_path and os.path.exists(crl_path):
            context.crl.filename = crl_path
        return secret_pb2.Secret(name=name, validation_context=context)
    certificate = common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=item.cert_chain or b""),
        private_key=base_pb2.DataSource(inline_bytes=item.private_key or b""))
    return secret_pb2.Secret(name=name, tls_certificate=certificate)


@dataclass(slots=True, eq=False)
class _Stream:
    id: int
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("request", r) | ("push", name) | ("end", None)
    watch: list[str] | None = None
    last_nonce: str = ""
    node_id: str = ""


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """`envoy.service.secret.v3.SecretDiscoveryService` on a Unix socket, secrets from `provider`.

    `clock` gives the wall time written into `version_info` (local RFC 3339 time / counter)."""

    def __init__(self, provider: SecretProvider, options: SdsOptions = SdsOptions(), *,
                 clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self._provider = provider
        self._clock = clock
        self._streams: set[_Stream] = set()
        self._ids = itertools.count(1)
        self._versions = itertools.count(1)
        self._warned: set[str] = set()
        self._server: grpc.aio.Server | None = None
        self._unwatch: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def path(self) -> str:
        return self.options.socket_path

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def start(self) -> None:
        """Bind and serve; UdsError (one line) when the socket cannot be created."""
        log.info("Starting SDS grpc server")
        log.info(f'Starting SDS server for workload certificates, will listen on "{self.path}"')
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server(options=[("grpc.max_concurrent_streams", self.options.max_concurrent_streams)])
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, server)
        uds.listen(server, self.path, "SDS socket")
        await server.start()
        uds.make_public(self.path)
        self._server = server
        self._unwatch = self._provider.watch(self._on_change)

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        for stream in self._streams:
            stream.inbox.put_nowait(("end", None))
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # -- rotation -----------------------------------------------------------------------------------

    def _on_change(self, name: str) -> None:
        """The provider's callback; it may run on another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fan_out, name)

    def _fan_out(self, name: str) -> None:
        for stream in self._streams:
            stream.inbox.put_nowait(("push", name))

    # -- the gRPC methods ---------------------------------------------------------------------------

    async def DeltaSecrets(self, request_iterator, context):  # noqa: N802 (gRPC name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "DeltaSecrets not implemented")

    async def FetchSecrets(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "FetchSecrets not implemented")

    async def StreamSecrets(self, request_iterator: AsyncIterator, context) -> None:  # noqa: N802
        stream = _Stream(next(self._ids))
        self._streams.add(stream)
        reader = asyncio.create_task(self._read(request_iterator, stream))
        try:
            while True:
                kind, value = await stream.inbox.get()
                if kind == "end":
                    return
                if kind == "request" and not (stream.node_id or value.node.id):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing node information")
                names = self._on_request(stream, value) if kind == "request" else self._pushed(stream, value)
                if names and not await self._send(context, await self._response(stream, names, context)):
                    return
        finally:
            self._streams.discard(stream)
            reader.cancel()

    @staticmethod
    async def _send(context, response: discovery_pb2.DiscoveryResponse) -> bool:
        """False when Envoy has gone (a push racing its disconnect ends the stream quietly)."""
        try:
            await context.write(response)
        except Exception:  # noqa: BLE001 (grpc raises several types for a call that has ended)
            return False
        return True

    async def _read(self, request_iterator: AsyncIterator, stream: _Stream) -> None:
        try:
            async for request in request_iterator:
                stream.inbox.put_nowait(("request", request))
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            stream.inbox.put_nowait(("end", None))

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> list[str]:
        """Istio's ACK/NACK rules; the names to answer now (often none)."""
        if request.node.id:
            stream.node_id = request.node.id
        if request.HasField("error_detail"):
            detail = request.error_detail
            log.warning(f"ADS:SDS: ACK ERROR {stream.id} {detail.code}:{detail.message}")
            return []
        names = list(request.resource_names)
        if not names:
            stream.watch = None
            return []
        if not request.response_nonce or stream.watch is None:
            stream.watch = names
            return names
        if request.response_nonce != stream.last_nonce:
            return []  # an answer to an older response: Envoy will answer the latest one too
        added = [n for n in names if n not in stream.watch]
        stream.watch = names
        return added

    def _pushed(self, stream: _Stream, changed: str) -> list[str]:
        bundles = self.options.system_bundles
        return [n for n in stream.watch or () if provider_name(n, bundles) == changed]

    async def _response(self, stream: _Stream, names: list[str], context) -> discovery_pb2.DiscoveryResponse:
        """All of `names`, or the stream ends with UNKNOWN naming the first secret that failed."""
        resources = []
        for name in names:
            resolved = provider_name(name, self.options.system_bundles)
            # Bounded: any process in the pod can connect and make up names.
            if resolved == WORKLOAD_CERT and name != WORKLOAD_CERT and name not in self._warned \
                    and len(self._warned) < 64:
                self._warned.add(name)
                log.warning(f'unknown SDS resource name "{name}": answering with the workload certificate')
            try:
                item = await self._provider.secret(resolved)
            except Exception as e:  # noqa: BLE001 (any failure is reported to Envoy, never a crash)
                log.warning(f"failed to generate secret for {name}: {e}")
                await context.abort(grpc.StatusCode.UNKNOWN, f"failed to generate secret for {name}: {e}")
            packed = any_pb2.Any()
            packed.Pack(to_secret(name, resolved, item, self.options.crl_path))
            resources.append(packed)
        stream.last_nonce = str(uuid.uuid4())
        return discovery_pb2.DiscoveryResponse(type_url=SECRET_TYPE, version_info=self._version(),
                                               nonce=stream.last_nonce, resources=resources)

    def _version(self) -> str:
        local = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._clock()))
        return f"{local[:-2]}:{local[-2:]}/{next(self._versions)}"


class SdsOwner(enum.Enum):
    """Who serves the workload identity socket."""

    AGENT = "agent"  # ours: nothing else is there
    EXTERNAL = "external"  # another SDS server (e.g. SPIRE) answers on it
    AWAITED = "awaited"  # a non-default socket name and nobody there yet: an external server is expected


async def sds_owner(socket_dir: str = SOCKET_DIR, socket_file: str = DEFAULT_SOCKET_FILE,
                    timeout: float = 1.0) -> SdsOwner:
    """Who serves `<socket_dir>/<socket_file>`, as Istio decides it
    (https://github.com/istio/istio/blob/master/pkg/istio-agent/agent.go, checkSocket): a live socket
    there is another SDS server's (Istio then serves file certificates on another socket,
    `./var/run/secrets/credential-uds/files-socket`, which this agent does not); a socket file nobody
    answers on is removed.

    A non-default file name with no live socket means an external server is expected. Istio refuses
    to start then, and the pod restarts until that server is up; here the agent starts without an SDS
    server of its own, Envoy's secrets wait for the external one, and readiness says so
    (`Mesh.certificate_problem`)."""
    if "/" in socket_file:
        raise uds.UdsError("workload identity socket file override must be a filename, not a path: "
                           f"{socket_file}")
    path = os.path.join(socket_dir, socket_file)
    if os.path.exists(path):
        if await uds.is_live(path, timeout):
            log.info(f"SDS socket found: {path}; the workload certificates come from that server")
            return SdsOwner.EXTERNAL
        try:
            os.remove(path)
        except OSError as e:
            raise uds.UdsError(f"existing SDS socket could not be removed: {path}: {e.strerror}") from None
    if socket_file != DEFAULT_SOCKET_FILE:
        log.warning(f"agent configured for non-default SDS socket path: {path} but no socket found: "
                    "waiting for the SDS server that owns it")
        return SdsOwner.AWAITED
    return SdsOwner.AGENT
