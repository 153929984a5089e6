"""The xDS proxy: Envoy's ADS streams relayed to istiod, with the agent's own requests added.

Envoy's `xds-grpc` cluster is a pipe to `<configPath>/XDS`. For every Envoy stream (State of the
World or Delta) the proxy opens one upstream stream of the same flavour with the agent's credentials
(agent/mesh/upstream.py) and relays both ways, as Istio's agent does
(https://github.com/istio/istio/blob/master/pkg/istio-agent/xds_proxy.go):

- Envoy's requests go upstream unchanged and in order, through an unbounded queue (requests are
  small; bounding them is what deadlocked Istio's proxy under load, istio/istio#39209).
- istiod's responses go to Envoy one at a time: the next one is read only once Envoy took the last,
  so a slow Envoy slows istiod down through HTTP/2 flow control instead of filling our memory.
- After Envoy's first LDS request the proxy asks for the NDS name table and ProxyConfig (when
  enabled) and the last health report; their responses are handled here and never reach Envoy.
- Whichever side fails or ends first ends both; Envoy sees the upstream status and reconnects on
  its own backoff. The proxy keeps no state across streams except the injected requests.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from agent.mesh import upstream, uds
from agent.mesh.protos import nds_pb2, proxy_config_pb2
from agent.mesh.xds_relay import NAME_TABLE_TYPE, PROXY_CONFIG_TYPE, Relay, log


@dataclass(frozen=True, slots=True)
class XdsProxyOptions:
    """Istio's defaults for the Envoy side. `request_name_table` when the DNS proxy is on;
    `request_proxy_config` with PROXY_CONFIG_XDS_AGENT."""

    socket_path: str = "./etc/istio/proxy/XDS"
    request_name_table: bool = False
    request_proxy_config: bool = False
    keepalive_time: float = 30.0  # GRPC_KEEPALIVE_INTERVAL
    keepalive_timeout: float = 10.0  # GRPC_KEEPALIVE_TIMEOUT
    min_ping_interval: float = 15.0
    max_concurrent_streams: int = 100_000  # ISTIO_GPRC_MAXSTREAMS
    max_receive_message_length: int = 4 * 1024 * 1024  # ISTIO_GPRC_MAXRECVMSGSIZE
    slow_send_warning: float = 10.0


@dataclass(slots=True)
class Counters:
    """Istio's xDS proxy metrics as plain counts (`*_terminations` by type: cancelled | error)."""

    istiod_connection_failures: int = 0
    istiod_connection_terminations: Counter = field(default_factory=Counter)
    envoy_connection_terminations: Counter = field(default_factory=Counter)
    xds_proxy_requests: int = 0
    xds_proxy_responses: int = 0


@dataclass(slots=True)
class UpstreamState:
    """For readiness and debugging: is an upstream stream open, since when, and the last failure."""

    connected: bool = False
    since: float | None = None
    last_error: str = ""


class XdsProxy:
    """ADS (SotW and Delta) on a Unix socket, relayed to istiod.

    `on_name_table(table)` gets every NDS NameTable istiod sends (also kept as `name_table`);
    `on_trust_bundle(pems)` gets ProxyConfig's extra trust anchors. `clock` stamps `state.since`."""

    def __init__(self, upstream_options: upstream.UpstreamOptions,
                 options: XdsProxyOptions = XdsProxyOptions(), *,
                 on_name_table: Callable[[nds_pb2.NameTable], None] | None = None,
                 on_trust_bundle: Callable[[list[str]], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.upstream = upstream_options
        self.options = options
        self.counters = Counters()
        self.state = UpstreamState()
        self.name_table: nds_pb2.NameTable | None = None
        self.health_request: tuple[bool, str] | None = None
        self._on_name_table = on_name_table
        self._on_trust_bundle = on_trust_bundle
        self.clock = clock
        self._server: grpc.aio.Server | None = None
        self._current: Relay | None = None
        self._ids = 0

    @property
    def path(self) -> str:
        return self.options.socket_path

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the upstream settings, bind and serve; UpstreamError / UdsError (one line) on failure."""
        log.info(f'Initializing with upstream address "{self.upstream.address}" and cluster '
                 f'"{self.upstream.cluster_id}"')
        upstream.check(self.upstream)
        o = self.options
        server = grpc.aio.server(options=[
            ("grpc.keepalive_time_ms", int(o.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(o.keepalive_timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(o.keepalive_timeout * 1000)),  # see upstream.channel
            # The least interval between Envoy's pings the server accepts (grpc-go's EnforcementPolicy.MinTime).
            ("grpc.http2.min_ping_interval_without_data_ms", int(o.min_ping_interval * 1000)),
            ("grpc.max_concurrent_streams", o.max_concurrent_streams),
            ("grpc.max_receive_message_length", o.max_receive_message_length),
            ("grpc.max_send_message_length", -1)])
        server.add_generic_rpc_handlers([_handlers(self)])
        try:
            uds.listen(server, self.path, "xds proxy socket")
        except uds.UdsError as e:
            raise uds.UdsError(f"failed to start xds proxy: {e}") from None
        await server.start()
        uds.make_public(self.path)
        self._server = server

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._current is not None:
            self._current.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # -- readiness and health -----------------------------------------------------------------------

    def unreachable_reason(self) -> str | None:
        """`control plane unreachable: <why>` while the last upstream attempt failed, else None."""
        if self.state.connected or not self.state.last_error:
            return None
        return f"control plane unreachable: {self.state.last_error}"

    def send_health(self, healthy: bool, message: str = "") -> None:
        """Report the application's health to istiod (VM readiness probes): sent now on the open
        stream (once its first LDS request went up) and after the first LDS of every later stream."""
        self.health_request = (healthy, message)
        if self._current is not None:
            self._current.send_health(healthy, message)

    # -- relay registration (used by Relay) ---------------------------------------------------------

    def register(self, relay: Relay) -> int:
        if self._current is not None:
            log.warning("registered overlapping stream; closing previous")
            self._current.stop()
        self._current = relay
        self._ids += 1
        return self._ids

    def unregister(self, relay: Relay) -> None:
        """A replaced relay ending later leaves the state of its successor alone."""
        if self._current is relay:
            self._current = None
            self.state.connected = False

    def is_current(self, relay: Relay) -> bool:
        return self._current is relay

    def local_types(self) -> frozenset[str]:
        """Type URLs answered here rather than forwarded to Envoy."""
        types = {NAME_TABLE_TYPE} if self.options.request_name_table else set()
        if self.options.request_proxy_config:
            types.add(PROXY_CONFIG_TYPE)
        return frozenset(types)

    def handle_local(self, type_url: str, value: bytes | None) -> status_pb2.Status | None:
        """Consume an NDS or PCDS resource (None: an empty response); the NACK status when it does not
        decode or its callback fails."""
        if value is None:
            return None
        try:
            if type_url == NAME_TABLE_TYPE:
                table = nds_pb2.NameTable.FromString(value)
                self.name_table = table
                if self._on_name_table is not None:
                    self._on_name_table(table)
            else:
                config = proxy_config_pb2.ProxyConfig.FromString(value)
                if self._on_trust_bundle is not None:
                    self._on_trust_bundle(list(config.ca_certificates_pem))
        except Exception as e:  # noqa: BLE001 (a bad resource is NACKed upstream, never a crash)
            return status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=str(e) or type(e).__name__)
        return None


def _handlers(proxy: XdsProxy) -> grpc.GenericRpcHandler:
    """ADS with Envoy's requests decoded and istiod's responses written as the bytes received."""

    def method(delta: bool):
        async def relay(requests, context) -> None:
            await Relay(proxy, delta, requests, context).run()

        request = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        return grpc.stream_stream_rpc_method_handler(relay, request_deserializer=request.FromString,
                                                     response_serializer=None)

    return grpc.method_handlers_generic_handler("envoy.service.discovery.v3.AggregatedDiscoveryService", {
        "StreamAggregatedResources": method(False), "DeltaAggregatedResources": method(True)})
