"""A test istiod on grpcio: one TLS port serving the CA (tests/mesh/ca_server.py) and ADS, SotW
and Delta, both authenticated by the bearer JWT as istiod authenticates sidecars.

    pki = TestPKI()
    async with TestIstiod(pki) as istiod:           # TLS on 127.0.0.1:<istiod.port>, cert for istiod.istio-system.svc
        istiod.set(CLUSTER, [cluster_message, ...])   # pushed to every open stream subscribed to CDS
        await istiod.wait_for(lambda: istiod.acks(CLUSTER))

A stream with no valid token is refused with UNAUTHENTICATED before anything is read. SotW follows
the xDS rules (stale nonces ignored, a new version answered with the whole type); Delta answers a new
subscription with every resource and later pushes with only the changed and removed ones. Every
request is recorded per stream (`streams`), with the metadata the stream opened with.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
import grpc.aio
import jwt
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from agent.mesh.protos import ca_pb2_grpc
from tests.mesh.ca_server import CAServicer, TestPKI, _pem

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
NAME_TABLE = "type.googleapis.com/istio.networking.nds.v1.NameTable"
#: istiod's keepalive enforcement (Istio's pkg/keepalive: pings accepted every 15 s, with or without a
#: stream). grpcio's own default (5 min) would answer the agent's 30 s pings with a GOAWAY
#: "too_many_pings" that a real istiod never sends.
ISTIOD_PING_POLICY = (("grpc.http2.min_ping_interval_without_data_ms", 15_000),
                      ("grpc.keepalive_permit_without_calls", 1))


@dataclass
class Seen:
    """One request on a stream: kind is request (no nonce), ack, nack or stale."""

    kind: str
    type_url: str
    request: object
    at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Stream:
    id: int
    delta: bool
    metadata: dict[str, str]
    seen: list[Seen] = field(default_factory=list)
    closed: bool = False
    node_id: str = ""
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    nonce: dict[str, str] = field(default_factory=dict)  # type -> last nonce sent
    sent: dict[str, dict[str, str]] = field(default_factory=dict)  # type -> {name: version} Envoy has
    subscribed: set[str] = field(default_factory=set)


def _name(message) -> str:
    return getattr(message, "name", "") if hasattr(message, "DESCRIPTOR") else ""


class TestIstiod(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    __test__ = False

    def __init__(self, pki: TestPKI, *, port: int = 0, host: str = "127.0.0.1", validity: float = 60.0,
                 plaintext: bool = False) -> None:
        self.pki, self.host, self.port, self.plaintext = pki, host, port, plaintext
        self.ca = CAServicer(pki, validity)
        self.resources: dict[str, dict[str, any_pb2.Any]] = {}
        self.versions: dict[str, int] = {}
        self.streams: list[Stream] = []
        self.refused: list[str] = []
        self.responses_sent = 0
        self.response_times: list[tuple[str, float]] = []  # (type, time the response was handed to grpc)
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._server: grpc.aio.Server | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> TestIstiod:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", -1),
                                          ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                          *ISTIOD_PING_POLICY])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(self.ca, server)
        bind = f"{self.host}:{self.port}"
        if self.plaintext:
            self.port = server.add_insecure_port(bind)
        else:
            creds = grpc.ssl_server_credentials([(self.pki.server_key_pem, _pem(self.pki.server_cert))])
            self.port = server.add_secure_port(bind, creds)
        await server.start()
        self._server = server
        return self

    async def stop(self, grace: float | None = None) -> None:
        """Like a killed istiod: open streams are cancelled, not ended cleanly."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def __aenter__(self) -> TestIstiod:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- control ------------------------------------------------------------------------------------

    def set(self, type_url: str, messages: Iterable) -> int:
        """Replace the resources of `type_url` (protobuf messages) and push them; the new version."""
        packed = {}
        for message in messages:
            value = any_pb2.Any()
            value.Pack(message)
            packed[_name(message)] = value
        self.resources[type_url] = packed
        self.versions[type_url] = version = self.versions.get(type_url, 0) + 1
        for stream in self.open_streams():
            stream.inbox.put_nowait(("push", type_url))
        return version

    def fail_streams(self, code: grpc.StatusCode, details: str) -> None:
        """End every open stream with this status (an istiod-side error)."""
        for stream in self.open_streams():
            stream.inbox.put_nowait(("fail", (code, details)))

    def open_streams(self) -> list[Stream]:
        return [s for s in self.streams if not s.closed]

    def requests(self, type_url: str, kind: str | None = None) -> list[Seen]:
        return [seen for s in self.streams for seen in s.seen
                if seen.type_url == type_url and (kind is None or seen.kind == kind)]

    def acks(self, type_url: str) -> list[Seen]:
        return self.requests(type_url, "ack")

    @staticmethod
    async def wait_for(check: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
        deadline = time.monotonic() + timeout
        while not (result := check()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not met within {timeout}s")
            await asyncio.sleep(0.02)
        return result

    # -- ADS ----------------------------------------------------------------------------------------

    async def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 (gRPC name)
        await self._serve(False, request_iterator, context)

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802
        await self._serve(True, request_iterator, context)

    async def _serve(self, delta: bool, request_iterator, context) -> None:
        metadata = dict(context.invocation_metadata())
        try:
            self.ca._authenticate(metadata.get("authorization", ""))
        except (jwt.InvalidTokenError, ValueError) as e:
            self.refused.append(str(e))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authentication failure: {e}")
        stream = Stream(next(self._ids), delta, metadata)
        self.streams.append(stream)
        reader = asyncio.create_task(self._read(request_iterator, stream))
        try:
            while True:
                kind, value = await stream.inbox.get()
                if kind == "end":
                    return
                if kind == "fail":
                    await context.abort(*value)
                types = self._record(stream, value) if kind == "request" else [value]
                for type_url in types:
                    response = self._response(stream, type_url)
                    if response is not None:
                        try:
                            await context.write(response)
                        except Exception:  # noqa: BLE001 (the client went away mid-write)
                            return
                        self.response_times.append((type_url, time.monotonic()))
        finally:
            stream.closed = True
            reader.cancel()

    async def _read(self, request_iterator, stream: Stream) -> None:
        try:
            async for request in request_iterator:
                stream.inbox.put_nowait(("request", request))
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            stream.inbox.put_nowait(("end", None))

    def _record(self, stream: Stream, request) -> list[str]:
        """Log the request; the types to answer now."""
        stream.node_id = request.node.id or stream.node_id
        t = request.type_url
        if not request.response_nonce:
            kind = "request"
        elif request.response_nonce != stream.nonce.get(t):
            kind = "stale"
        else:
            kind = "nack" if request.HasField("error_detail") else "ack"
        stream.seen.append(Seen(kind, t, request))
        if kind == "request":
            stream.subscribed.add(t)
            if delta_reset := (stream.delta or t not in stream.sent):
                stream.sent[t] = dict(request.initial_resource_versions) if stream.delta else {}
            return [t] if delta_reset or not stream.delta else []
        if kind == "ack" and not stream.delta and request.version_info != str(self.versions.get(t, 0)):
            return [t]  # Envoy ACKed an older version than the current one
        return []

    def _response(self, stream: Stream, type_url: str):
        if type_url not in stream.subscribed or type_url not in self.resources:
            return None
        version = str(self.versions[type_url])
        current = self.resources[type_url]
        nonce = str(next(self._nonces))
        if not stream.delta:
            if stream.sent.get(type_url, {}).get("") == version:
                return None
            stream.sent[type_url] = {"": version}
            stream.nonce[type_url] = nonce
            self.responses_sent += 1
            return discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce,
                                                   resources=list(current.values()))
        return self._delta_response(stream, type_url, current, nonce, version)

    def _delta_response(self, stream: Stream, type_url: str, current: dict, nonce: str, version: str):
        known = stream.sent.setdefault(type_url, {})
        versions = {name: hashlib.sha256(v.value).hexdigest()[:16] for name, v in current.items()}
        changed = [name for name, v in versions.items() if known.get(name) != v]
        removed = [name for name in known if name not in current]
        if not changed and not removed and known:
            return None
        stream.sent[type_url] = versions
        stream.nonce[type_url] = nonce
        self.responses_sent += 1
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=removed,
            resources=[discovery_pb2.Resource(name=n, version=versions[n], resource=current[n]) for n in changed])


# -- as a process (for tests that need istiod in another network namespace) ---------------------------

_TYPES_FOR_JSON = ("envoy.config.cluster.v3.cluster_pb2", "envoy.config.listener.v3.listener_pb2",
                   "envoy.config.endpoint.v3.endpoint_pb2", "envoy.config.route.v3.route_pb2",
                   "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
                   "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
                   "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
                   "envoy.extensions.filters.http.router.v3.router_pb2",
                   "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
                   "agent.mesh.protos.nds_pb2")


def messages_from_json(type_url: str, resources: list[dict]) -> list:
    """JSON resources (as Envoy's config_dump shows them) -> messages of `type_url`."""
    import importlib

    from google.protobuf import descriptor_pool, json_format, message_factory

    for module in _TYPES_FOR_JSON:
        importlib.import_module(module)
    cls = message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(type_url.rpartition("/")[2]))
    return [json_format.ParseDict(r, cls()) for r in resources]


async def _serve_forever(args) -> None:
    import os
    import signal

    pki = TestPKI()
    os.makedirs(args.dir, exist_ok=True)
    pki.write_root(os.path.join(args.dir, "root-cert.pem"))
    for spec in args.token:  # ns/sa -> <dir>/token-<ns>-<sa>
        namespace, _, account = spec.partition("/")
        with open(os.path.join(args.dir, f"token-{namespace}-{account}"), "w") as f:
            f.write(pki.token(namespace, account))
    istiod = await TestIstiod(pki, port=args.port, host=args.host, validity=args.validity,
                              plaintext=args.plaintext).start()

    def load() -> None:
        import json

        with open(args.resources) as f:
            for type_url, resources in json.load(f).items():
                istiod.set(type_url, messages_from_json(type_url, resources))

    if args.resources:
        load()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, load)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"ready {istiod.port}", flush=True)
    await stop.wait()
    await istiod.stop()


def main(argv: list[str] | None = None) -> int:
    """python -m tests.mesh.istiod --dir D [--host H] [--port P] [--token ns/sa ...] [--resources R.json]

    Writes D/root-cert.pem and D/token-<ns>-<sa>, serves until SIGTERM, prints `ready <port>`;
    R.json maps type URLs to JSON resources and is re-read (and pushed) on SIGHUP."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.mesh.istiod")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=15012)
    ap.add_argument("--validity", type=float, default=60.0)
    ap.add_argument("--plaintext", action="store_true")
    ap.add_argument("--token", action="append", default=[])
    ap.add_argument("--resources", default="")
    asyncio.run(_serve_forever(ap.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
