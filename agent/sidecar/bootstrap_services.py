"""The collectors Envoy sends telemetry to, as Istio's template renders them
(https://github.com/istio/istio/blob/master/tools/packaging/common/envoy_bootstrap.json): the
tracer's cluster and `tracing.http`, the metrics service (cluster and stats sink), the access-log
service (cluster only: istiod's access-log configuration names it) and the statsd sink.

Transport sockets follow Istio's tlsContextConvert
(https://github.com/istio/istio/blob/master/pkg/bootstrap/option/convert.go): certificates are never
read by Envoy from files here but fetched from the agent's SDS server (`sds-grpc`) under the names
`file-root:<ca>` and `file-cert:<cert>~<key>`, or the workload's own `default`/`ROOTCA` for ISTIO_MUTUAL.

The DNS fields (`respect_dns_ttl`, `dns_refresh_rate`) are Istio's; Envoy 1.40 marks them deprecated
in favour of its DNS cluster extension, a warning that `--skip-deprecated-logs` hides.
"""
from __future__ import annotations

import os
from typing import Any

from agent.sidecar import identity
from agent.sidecar.bootstrap_parts import ip_family, sds_secret, socket_address
from agent.sidecar.config_model import RemoteService, SidecarConfig, TlsSettings

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: The cluster each tracer sends to, and whether it speaks HTTP/2 (ALPN h2 is kept only then).
TRACER_CLUSTERS = {"zipkin": ("zipkin", False), "lightstep": ("lightstep", True), "datadog": ("datadog_agent", False)}
LIGHTSTEP_TOKEN_FILE = "lightstep_access_token.txt"


def http2_options(max_requests_per_connection: int = 0) -> dict[str, Any]:
    options: dict[str, Any] = {"@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                               "explicit_http_config": {"http2_protocol_options": {}}}
    if max_requests_per_connection:
        options["common_http_protocol_options"] = {"max_requests_per_connection": max_requests_per_connection}
    return {HTTP_PROTOCOL_OPTIONS: options}


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def transport_socket(cfg: SidecarConfig, tls: TlsSettings, default_sni: str, http2: bool) -> dict[str, Any] | None:
    """The UpstreamTlsContext for a collector's tlsSettings; None for DISABLE. The node metadata
    TLS_CLIENT_ROOT_CERT / _CERT_CHAIN / _KEY override the files named in the settings."""
    meta = cfg.meta_env
    common: dict[str, Any] = {}
    sans = {"match_subject_alt_names": [{"exact": s} for s in tls.subject_alt_names]} if tls.subject_alt_names else {}
    if tls.mode == "ISTIO_MUTUAL":
        common["tls_certificate_sds_secret_configs"] = [sds_secret("default", wait=True)]
        root = sds_secret("ROOTCA", wait=True)
        alpn, sni = ["istio", "h2"], tls.sni or default_sni
    elif tls.mode in ("SIMPLE", "MUTUAL"):
        cert = str(meta.get("TLS_CLIENT_CERT_CHAIN") or tls.client_certificate)
        key = str(meta.get("TLS_CLIENT_KEY") or tls.private_key)
        if tls.mode == "MUTUAL" and cert and key:
            common["tls_certificate_sds_secret_configs"] = [sds_secret(f"file-cert:{cert}~{key}")]
        ca = str(meta.get("TLS_CLIENT_ROOT_CERT") or tls.ca_certificates)
        root = sds_secret(f"file-root:{ca}") if ca else None
        alpn, sni = ["h2"], tls.sni
    else:
        return None
    validation: dict[str, Any] = {"default_validation_context": sans}
    if root:
        validation["validation_context_sds_secret_config"] = root
    common["combined_validation_context"] = validation
    if http2:
        common["alpn_protocols"] = alpn
    context: dict[str, Any] = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if sni:
        context["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def dns_cluster(cfg: SidecarConfig, name: str, service: RemoteService, *, http2: bool,
                refresh: str | None = None, sni: str = "") -> dict[str, Any]:
    """A STRICT_DNS cluster to a collector, honouring the record's TTL. `sni`: the ISTIO_MUTUAL SNI
    when the settings name none (default: the cluster's name)."""
    host, port = host_port(service.address)
    cluster: dict[str, Any] = {"name": name, "alt_stat_name": f"{name};", "type": "STRICT_DNS",
                               "respect_dns_ttl": True, "dns_lookup_family": ip_family(cfg)[2]}
    if refresh:
        cluster["dns_refresh_rate"] = refresh
    cluster.update({"connect_timeout": "1s", "lb_policy": "ROUND_ROBIN"})
    if (tls := transport_socket(cfg, service.tls, sni or name, http2)) is not None:
        cluster["transport_socket"] = tls
    if service.tcp_keepalive is not None:
        cluster["upstream_connection_options"] = {"tcp_keepalive": dict(service.tcp_keepalive)}
    if http2:
        cluster["typed_extension_protocol_options"] = http2_options()
    cluster["load_assignment"] = {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}}]}]}
    return cluster


def collector_clusters(cfg: SidecarConfig) -> list[dict[str, Any]]:
    out = []
    if cfg.tracer:
        name, http2 = TRACER_CLUSTERS[cfg.tracer.kind]
        out.append(dns_cluster(cfg, name, cfg.tracer.service, http2=http2, sni="tracer",
                               refresh="30s" if cfg.tracer.kind == "zipkin" else None))
    if cfg.metrics_service:
        out.append(dns_cluster(cfg, "envoy_metrics_service", cfg.metrics_service, http2=True))
    if cfg.access_log_service:
        out.append(dns_cluster(cfg, "envoy_accesslog_service", cfg.access_log_service, http2=True))
    return out


def lightstep_token_path(cfg: SidecarConfig) -> str:
    return os.path.join(cfg.config_path, LIGHTSTEP_TOKEN_FILE)


def tracing(cfg: SidecarConfig) -> dict[str, Any] | None:
    """Bootstrap `tracing.http` (tracing configured through istiod's Telemetry API comes in the
    listeners instead). Lightstep's own tracer is gone from Envoy (removed in 1.32); its satellites
    take OpenTelemetry with the access token as the `lightstep-access-token` header, which is what
    this renders in place of Istio's `envoy.tracers.lightstep`."""
    if not cfg.tracer:
        return None
    typed = "type.googleapis.com/envoy.config.trace.v3."
    if cfg.tracer.kind == "zipkin":
        return {"name": "envoy.tracers.zipkin", "typed_config": {
            "@type": typed + "ZipkinConfig", "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON", "trace_id_128bit": True, "shared_span_context": False}}
    if cfg.tracer.kind == "datadog":
        return {"name": "envoy.tracers.datadog", "typed_config": {
            "@type": typed + "DatadogConfig", "collector_cluster": "datadog_agent",
            "service_name": identity.service_cluster(cfg)}}
    return {"name": "envoy.tracers.opentelemetry", "typed_config": {
        "@type": typed + "OpenTelemetryConfig", "service_name": identity.service_cluster(cfg),
        "grpc_service": {"envoy_grpc": {"cluster_name": "lightstep"}, "initial_metadata": [
            {"key": "lightstep-access-token", "value": cfg.tracer.access_token}]}}}


def stats_sinks(cfg: SidecarConfig) -> list[dict[str, Any]]:
    sinks = []
    if cfg.metrics_service:
        sinks.append({"name": "envoy.stat_sinks.metrics_service", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "envoy_metrics_service"}}}})
    if cfg.statsd_address:
        sinks.append({"name": "envoy.stat_sinks.statsd", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink",
            "address": socket_address(*host_port(cfg.statsd_address))}})
    return sinks
