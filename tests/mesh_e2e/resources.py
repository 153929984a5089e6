"""The xDS resources of a two-pod mesh, as istiod would push them, in Envoy's JSON form.

Pod A (the client) gets Istio's `virtualOutbound` listener on 15001 and, for B's service VIP, an
outbound HTTP listener whose route leads to the ISTIO_MUTUAL cluster
`outbound|8080||<B's host>`: workload certificate `default` and trust bundle `ROOTCA` over SDS on
the `sds-grpc` cluster, and the peer's SPIFFE identity checked as a URI SAN. Pod B (the server)
gets Istio's `virtualInbound` listener on 15006: TLS that requires a client certificate, then an
HTTP connection manager that sets `x-forwarded-client-cert` (SANITIZE_SET with the URI of the
client's certificate), routed to the app on 127.0.0.1.

Every pod gets both CDS and LDS (possibly empty lists): with `initial_fetch_timeout: 0s` Envoy
would otherwise wait for the type forever and never become ready.

With `sds=False` the secret configs carry only a name, so Envoy takes them from its bootstrap's
static secrets (the pre-issued files of a bare Envoy that dials istiod itself).
"""
from __future__ import annotations

from dataclasses import dataclass

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

#: The modules whose messages the JSON above names (imported by the istiod process before parsing).
PROTO_MODULES = (
    "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2",
    "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
)

SDS_CONFIG = {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                    "set_node_on_first_message_only": True,
                                    "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
              "initial_fetch_timeout": "0s", "resource_api_version": "V3"}


@dataclass(frozen=True, slots=True)
class Service:
    """B's Kubernetes Service as A's Envoy sees it: host name, VIP, port, and its pod's identity."""

    host: str
    vip: str
    port: int
    endpoint: str  # B's pod IP
    identity: str  # B's SPIFFE id, checked by A

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.host}"


def _secret(name: str, sds: bool) -> dict:
    return {"name": name, "sds_config": SDS_CONFIG} if sds else {"name": name}


def _addr(ip: str, port: int) -> dict:
    return {"socket_address": {"address": ip, "port_value": port}}


def _static_cluster(name: str, ip: str, port: int, **extra) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _addr(ip, port)}}]}]}, **extra}


def _http(stat_prefix: str, cluster: str, **extra) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": stat_prefix,
        "route_config": {"name": stat_prefix, "virtual_hosts": [
            {"name": stat_prefix, "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "10s"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        **extra}}


def _passthrough() -> dict:
    return {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "1s",
            "lb_policy": "CLUSTER_PROVIDED"}


def client(service: Service, *, sds: bool = True) -> dict[str, list[dict]]:
    """Pod A's CDS and LDS: the outbound path to `service` over ISTIO_MUTUAL."""
    tls = {"@type": f"{TLS}.UpstreamTlsContext",
           "sni": f"outbound_.{service.port}_._.{service.host}",
           "common_tls_context": {
               "alpn_protocols": ["istio-http/1.1", "istio"],
               "tls_certificate_sds_secret_configs": [_secret("default", sds)],
               "combined_validation_context": {
                   "default_validation_context": {"match_subject_alt_names": [
                       {"exact": service.identity}]},
                   "validation_context_sds_secret_config": _secret("ROOTCA", sds)}}}
    mtls = _static_cluster(service.cluster, service.endpoint, service.port, transport_socket={
        "name": "envoy.transport_sockets.tls", "typed_config": tls})
    name = f"{service.vip}_{service.port}"
    outbound = {"name": name, "address": _addr(service.vip, service.port), "bind_to_port": False,
                "traffic_direction": "OUTBOUND",
                "filter_chains": [{"filters": [_http(f"outbound_{name}", service.cluster)]}]}
    virtual = {"name": "virtualOutbound", "address": _addr("0.0.0.0", 15001), "use_original_dst": True,
               "traffic_direction": "OUTBOUND",
               "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                   "@type": TCP_PROXY, "stat_prefix": "PassthroughCluster", "cluster": "PassthroughCluster"}}]}]}
    return {CLUSTER: [mtls, _passthrough()], LISTENER: [virtual, outbound]}


def server(app_port: int, *, sds: bool = True) -> dict[str, list[dict]]:
    """Pod B's CDS and LDS: inbound mTLS on 15006 for `app_port`, XFCC set from the client cert."""
    inbound = f"inbound|{app_port}||"
    tls = {"@type": f"{TLS}.DownstreamTlsContext", "require_client_certificate": True,
           "common_tls_context": {
               "alpn_protocols": ["istio-http/1.1", "istio", "http/1.1"],
               "tls_certificate_sds_secret_configs": [_secret("default", sds)],
               "combined_validation_context": {"default_validation_context": {},
                                               "validation_context_sds_secret_config": _secret("ROOTCA", sds)}}}
    hcm = _http(f"inbound_0.0.0.0_{app_port}", inbound, forward_client_cert_details="SANITIZE_SET",
                set_current_client_cert_details={"uri": True})
    listener = {"name": "virtualInbound", "address": _addr("0.0.0.0", 15006), "traffic_direction": "INBOUND",
                "listener_filters": [
                    {"name": "envoy.filters.listener.original_dst", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
                    {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                "filter_chains": [{
                    "name": f"0.0.0.0_{app_port}",
                    "filter_chain_match": {"destination_port": app_port, "transport_protocol": "tls"},
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                    "filters": [hcm]}]}
    return {CLUSTER: [_static_cluster(inbound, "127.0.0.1", app_port)], LISTENER: [listener]}


def empty() -> dict[str, list[dict]]:
    """A node istiod knows nothing for: both types answered, with nothing in them."""
    return {CLUSTER: [], LISTENER: []}
