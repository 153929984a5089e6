"""A minimal ADS control plane for tests: State-of-the-World aggregated discovery over gRPC.

It serves versioned snapshots of resources per type URL (CDS and LDS by default; any type works),
answers each stream's requests, records ACKs and NACKs, and pushes a new snapshot to every open
stream. With `hold=True` it accepts streams but answers nothing until `release()` is called, so a
test can watch Envoy stay unready before the control plane serves and become ready after.

    with AdsServer(hold=True) as ads:              # listens on 127.0.0.1:<ads.port>
        ads.set(clusters=[static_cluster("backend", "127.0.0.1", 8080)],
                listeners=[tcp_listener("front", "127.0.0.1", 10000, "backend")])
        ... start Envoy with --discoveryAddress 127.0.0.1:<ads.port> --controlPlaneAuthPolicy NONE
        ads.release()
        ads.wait_acked(LISTENER, ads.version)

SotW rules followed (xDS protocol): a request whose nonce is stale is ignored; a request with a
version different from the current one, or the first request of a type on a stream, is answered
with the full snapshot of that type; ACK = same version and nonce, NACK = error_detail set.
"""
from __future__ import annotations

import argparse
import itertools
import queue
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import grpc
from google.protobuf import any_pb2, json_format

# Importing the modules registers their message types, so json_format can resolve "@type" in Any.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
_MESSAGES = {CLUSTER: cluster_pb2.Cluster, LISTENER: listener_pb2.Listener}


def static_cluster(name: str, address: str, port: int) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}]}]}}


def tcp_listener(name: str, address: str, port: int, cluster: str) -> dict[str, Any]:
    return {"name": name,
            "address": {"socket_address": {"address": address, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name, "cluster": cluster}}]}]}


def many_clusters(n: int, address: str = "127.0.0.1", port: int = 9) -> list[dict[str, Any]]:
    """n STATIC clusters (the benchmark pushes 1,000)."""
    return [static_cluster(f"cluster-{i:05d}", address, port) for i in range(n)]


def pack(type_url: str, resource: Any) -> any_pb2.Any:
    """A dict (parsed as the type's message) or a ready protobuf message -> Any."""
    message = resource if hasattr(resource, "SerializeToString") else json_format.ParseDict(
        resource, _MESSAGES[type_url]())
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass
class Event:
    """One request Envoy sent: ACK, NACK or a fresh subscription."""

    kind: str  # "request" | "ack" | "nack"
    type_url: str
    version: str
    nonce: str
    node_id: str
    error: str = ""
    at: float = field(default_factory=time.monotonic)


class _Stream:
    def __init__(self) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.sent_nonce: dict[str, str] = {}  # type_url -> last nonce sent
        self.sent_version: dict[str, str] = {}
        self.subscribed: set[str] = set()
        self.node_id = ""


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """In-process ADS server. Every `start` has a `stop`; use it as a context manager."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0, *, hold: bool = False,
                 tls: tuple[bytes, bytes] | None = None) -> None:
        """tls = (certificate chain PEM, private key PEM): serve gRPC over TLS (no client certificate)."""
        self.address, self.port = address, port
        self._tls = tls
        self._held = hold
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._version = 0
        self._resources: dict[str, list[any_pb2.Any]] = {CLUSTER: [], LISTENER: []}
        self._streams: set[_Stream] = set()
        self._nonces = itertools.count(1)
        self.events: list[Event] = []
        self.responses_sent = 0
        self._server: grpc.Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> "AdsServer":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                             options=[("grpc.max_send_message_length", 256 * 1024 * 1024)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self._tls:
            creds = grpc.ssl_server_credentials([(self._tls[1], self._tls[0])])
            self.port = server.add_secure_port(f"{host}:{self.port}", creds)
        else:
            self.port = server.add_insecure_port(f"{host}:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self, grace: float = 0.5) -> None:
        with self._cond:
            for stream in self._streams:
                stream.inbox.put(None)
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> "AdsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control -----------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return str(self._version)

    def set(self, *, clusters: Iterable[dict] | None = None, listeners: Iterable[dict] | None = None,
            resources: Mapping[str, Iterable[Any]] | None = None) -> str:
        """Replace the snapshot of the given types, bump the version and push to open streams.

        `resources` maps any other type URL to its resources (dicts for CDS/LDS types, or protobuf
        messages of any type, e.g. ClusterLoadAssignment for EDS)."""
        packed = {}
        if clusters is not None:
            packed[CLUSTER] = [pack(CLUSTER, c) for c in clusters]
        if listeners is not None:
            packed[LISTENER] = [pack(LISTENER, lst) for lst in listeners]
        for type_url, items in (resources or {}).items():
            packed[type_url] = [pack(type_url, r) for r in items]
        with self._cond:
            self._resources.update(packed)
            self._version += 1
            for stream in self._streams:
                stream.inbox.put("push")
            return str(self._version)

    def release(self) -> None:
        """Start answering (for a server created with hold=True)."""
        with self._cond:
            self._held = False
            for stream in self._streams:
                stream.inbox.put("push")

    def hold(self) -> None:
        with self._cond:
            self._held = True

    def wait_acked(self, type_url: str, version: str | None = None, timeout: float = 30.0) -> Event:
        """Block until Envoy ACKs `version` (default: the current one) of `type_url`."""
        version = version or self.version
        return self._wait(lambda e: e.kind == "ack" and e.type_url == type_url and e.version == version, timeout,
                          f"ACK of {type_url} version {version}")

    def wait_nacked(self, type_url: str, timeout: float = 30.0) -> Event:
        return self._wait(lambda e: e.kind == "nack" and e.type_url == type_url, timeout, f"NACK of {type_url}")

    def wait_connected(self, timeout: float = 30.0) -> Event:
        return self._wait(lambda e: e.kind == "request", timeout, "a first request")

    def _wait(self, match, timeout: float, what: str) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} within {timeout}s; events: {self.events[-5:]}")
                self._cond.wait(left)

    # -- the gRPC service --------------------------------------------------------------------------

    def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 (gRPC name)
        stream = _Stream()
        with self._cond:
            self._streams.add(stream)
        reader = threading.Thread(target=self._read, args=(request_iterator, stream), daemon=True)
        reader.start()
        try:
            while context.is_active():
                try:
                    item = stream.inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is None:
                    return
                yield from self._respond(stream, item)
        finally:
            with self._cond:
                self._streams.discard(stream)

    def _read(self, request_iterator, stream: _Stream) -> None:
        try:
            for request in request_iterator:
                stream.inbox.put(request)
        except grpc.RpcError:
            pass
        finally:
            stream.inbox.put(None)

    def _respond(self, stream: _Stream, item):
        """Turn one inbox item (a request or a push signal) into zero or more responses."""
        with self._cond:
            if isinstance(item, discovery_pb2.DiscoveryRequest):
                if not self._record(stream, item):
                    return
                types = [item.type_url]
            else:
                types = sorted(stream.subscribed)
            if self._held:
                return
            responses = [self._response(stream, t) for t in types
                         if stream.sent_version.get(t) != self.version and t in self._resources]
        yield from responses

    def _record(self, stream: _Stream, request) -> bool:
        """Log the request as request/ACK/NACK; False if it is stale (nonce of an older response)."""
        if request.node.id:
            stream.node_id = request.node.id
        t = request.type_url
        if request.response_nonce and request.response_nonce != stream.sent_nonce.get(t):
            return False
        if not request.response_nonce:
            kind = "request"
        elif request.HasField("error_detail"):
            kind = "nack"
        else:
            kind = "ack"
        self.events.append(Event(kind, t, request.version_info, request.response_nonce, stream.node_id,
                                 request.error_detail.message))
        stream.subscribed.add(t)
        if kind == "nack":
            stream.sent_version[t] = self.version  # do not resend the rejected snapshot
        self._cond.notify_all()
        return True

    def _response(self, stream: _Stream, type_url: str):
        nonce = str(next(self._nonces))
        stream.sent_nonce[type_url] = nonce
        stream.sent_version[type_url] = self.version
        self.responses_sent += 1
        return discovery_pb2.DiscoveryResponse(version_info=self.version, type_url=type_url, nonce=nonce,
                                               resources=self._resources[type_url])


def main() -> int:
    """`python -m tests.support.ads --port 15012 --backend-port 8080 --listener-port 10000`: the control
    plane as a process (e.g. inside a netns), one cluster and one TCP listener to it. Holds back until
    it reads `release` on stdin; prints `ready`, then `released`, `acked`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=15012)
    ap.add_argument("--backend-port", type=int, default=8080)
    ap.add_argument("--listener-port", type=int, default=10000)
    args = ap.parse_args()
    with AdsServer("127.0.0.1", args.port, hold=True) as ads:
        ads.set(clusters=[static_cluster("backend", "127.0.0.1", args.backend_port)],
                listeners=[tcp_listener("front", "127.0.0.1", args.listener_port, "backend")])
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "release":
                ads.release()
                print("released", flush=True)
                ads.wait_acked(CLUSTER)
                ads.wait_acked(LISTENER)
                print("acked", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
