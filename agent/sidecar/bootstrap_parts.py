"""Building blocks of the Envoy bootstrap shared by the control-plane and standalone variants, after
Istio's template (https://github.com/istio/istio/blob/master/tools/packaging/common/envoy_bootstrap.json).

Pure functions returning plain dicts in Envoy's v3 JSON shape. Field names were checked against Envoy
1.40 with `envoy --mode validate` (tests/sidecar/test_bootstrap_validate.py).
"""
from __future__ import annotations

import ipaddress
from typing import Any

from agent.sidecar.config_model import SidecarConfig
from agent.sidecar.config_parse import is_ip

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

TEXT_LOG_FORMAT = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t"
JSON_LOG_FORMAT = {"time": "%Y-%m-%dT%T.%fZ", "level": "%l", "scope": "envoy %n", "caller": "%g:%#",
                   "msg": "%j", "thread": "%t"}

#: The static layer of layered_runtime in Istio's template; ProxyConfig.runtimeValues overrides it.
RUNTIME_DEFAULTS: dict[str, Any] = {
    "re2.max_program_size.error_level": "32768",
    "envoy.deprecated_features:envoy.config.listener.v3.Listener.hidden_envoy_deprecated_use_original_dst": True,
    "envoy.reloadable_features.http_reject_path_with_fragment": False,
    "envoy.reloadable_features.fixed_heap_use_allocated": True,
    "envoy.reloadable_features.coalesce_lb_rebuilds_on_batch_update": False,
}

_TAGS_BEFORE = (
    ("cluster_name", r"^cluster(\.(.+);)"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)"),
    ("thread_name", r"^server(\.(.+))\.watchdog"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    ("http_conn_manager_listener_prefix",
     r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("mongo_prefix", r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"),
)
_TAGS_AFTER = (
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
)
REQUIRED_PREFIXES = ("cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm")
REQUIRED_SUFFIXES = ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied")
REQUIRED_REGEXPS = (r"vhost\..*\.route\..*",)
#: Beyond Istio: what the end of the drain reads of the inbound side (agent.sidecar.in_flight),
#: which Istio's inclusion list drops. The virtualInbound listener's connections (its wildcard
#: address on 15006: `0.0.0.0`, or `[::]` printed `[__]` in an IPv6-only pod) and the inbound HTTP
#: connection managers' connections and requests (istiod names them `inbound_<bind>_<port>;` and
#: `InboundPassthroughCluster;`, the `;` absent with ENABLE_DELIMITED_STATS_TAG_REGEX=false). Envoy
#: matches the whole name before tag extraction. Last in the list, so Istio's patterns keep their places.
DRAIN_STATS_REGEX = (r"listener\.(0\.0\.0\.0|\[__\])_15006\.downstream_cx_(active|total)"
                     r"|http\.(inbound_[^;]*|InboundPassthroughCluster);?\.downstream_(cx|rq)_active")
FIPS_140_2 = "fips-140-2"
#: What the Prometheus listener compresses: the text and protobuf exposition formats.
STATS_CONTENT_TYPES = ("text/plain", "application/vnd.google.protobuf", "application/openmetrics-text",
                       "application/openmetrics-protobuf")
TYPED_STRUCT = "type.googleapis.com/udpa.type.v1.TypedStruct"


def xds_type(cfg: SidecarConfig) -> str:
    """ADS api_type: waypoints always speak delta (Istio's toTemplateParams)."""
    return "DELTA_GRPC" if cfg.proxy_type == "waypoint" else cfg.xds_type


def metadata_discovery(cfg: SidecarConfig) -> bool:
    """Envoy's peer metadata discovery: asked for (or a waypoint), and only over delta xDS."""
    return (cfg.metadata_discovery or cfg.proxy_type == "waypoint") and xds_type(cfg) == "DELTA_GRPC"


_V4, _V6 = ("127.0.0.1", "0.0.0.0"), ("::1", "::")


def _ip_versions(cfg: SidecarConfig) -> list[int]:
    return [ipaddress.ip_address(ip).version for ip in cfg.instance_ips if is_ip(ip)]


def ip_family(cfg: SidecarConfig) -> tuple[str, str, str]:
    """(localhost, wildcard, dns_lookup_family) as Istio's template decides: IPv6 values when every
    node IP is IPv6; for a dual-stack pod with ISTIO_DUAL_STACK the family of the first IP and lookup
    of both (ALL), without it IPv4."""
    versions = _ip_versions(cfg)
    if versions and set(versions) == {6}:
        return (*_V6, "V6_ONLY")
    if cfg.dual_stack and set(versions) == {4, 6}:
        return (*(_V6 if versions[0] == 6 else _V4), "ALL")
    return (*_V4, "V4_ONLY")


def additional_addresses(cfg: SidecarConfig) -> tuple[str, str] | None:
    """(localhost, wildcard) of the other family, for a dual-stack pod with ISTIO_DUAL_STACK."""
    versions = _ip_versions(cfg)
    if cfg.dual_stack and set(versions) == {4, 6}:
        return _V4 if versions[0] == 6 else _V6
    return None


def seconds(value: float) -> str:
    """protobuf Duration JSON, to the nanosecond: '1s', '0.25s', '0.0015s'."""
    return f"{value:.9f}".rstrip("0").rstrip(".") + "s"


def socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def application_log_config(cfg: SidecarConfig) -> dict[str, Any]:
    if cfg.log_as_json:
        return {"log_format": {"json_format": dict(JSON_LOG_FORMAT)}}
    return {"log_format": {"text_format": TEXT_LOG_FORMAT}}


def layered_runtime(cfg: SidecarConfig) -> dict[str, Any]:
    """Istio's defaults, then runtimeValues ("" deletes a default, "true"/"false" become booleans)."""
    layer = dict(RUNTIME_DEFAULTS)
    if cfg.compliance_policy == FIPS_140_2:
        # Keeps Envoy's Google gRPC client at TLS 1.2, the FIPS 140-2 maximum.
        layer["envoy.reloadable_features.google_grpc_disable_tls_13"] = True
    for key, value in cfg.runtime_values.items():
        if value == "":
            layer.pop(key, None)
        else:
            layer[key] = {"true": True, "false": False}.get(value, value)
    return {"layers": [{"name": "global config", "static_layer": layer},
                       {"name": "admin", "admin_layer": {}}]}


def _expand(patterns: tuple[str, ...], cfg: SidecarConfig) -> list[str]:
    out: list[str] = []
    for p in patterns:
        out += [p.replace("{pod_ip}", ip) for ip in cfg.instance_ips] if "{pod_ip}" in p else [p]
    return out


def stats_config(cfg: SidecarConfig) -> dict[str, Any]:
    tags = [{"tag_name": n, "regex": r} for n, r in _TAGS_BEFORE]
    tags += [{"tag_name": t, "regex": f"({t}=\\.=(.*?);\\.;)"} for t in cfg.extra_stat_tags]
    tags += [{"tag_name": n, "regex": r} for n, r in _TAGS_AFTER]
    suffixes = list(REQUIRED_SUFFIXES) + (["downstream_cx_active"] if cfg.exit_on_zero_active_connections else [])
    patterns: list[dict[str, Any]] = [{"prefix": "reporter="}]
    if metadata_discovery(cfg):
        patterns.append({"prefix": "workload_discovery"})
    patterns += [{"prefix": p} for p in _expand(cfg.inclusion_prefixes, cfg) + list(REQUIRED_PREFIXES)]
    patterns += [{"suffix": s} for s in _expand(cfg.inclusion_suffixes, cfg) + suffixes]
    patterns += [{"safe_regex": {"regex": r}} for r in _expand(cfg.inclusion_regexps, cfg) + list(REQUIRED_REGEXPS)]
    patterns += [{"prefix": "component"}, {"prefix": "istio"}, {"safe_regex": {"regex": DRAIN_STATS_REGEX}}]
    out: dict[str, Any] = {"use_all_default_tags": False, "stats_tags": tags}
    if cfg.histogram_buckets:
        out["histogram_bucket_settings"] = [{"match": {"prefix": prefix}, "buckets": list(buckets)}
                                            for prefix, buckets in cfg.histogram_buckets]
    out["stats_matcher"] = {"inclusion_list": {"patterns": patterns}}
    return out


def admin(cfg: SidecarConfig) -> dict[str, Any]:
    localhost, _, _ = ip_family(cfg)
    return {
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/null"}}],
        "profile_path": "/var/lib/istio/data/envoy.prof",
        "address": socket_address(localhost, cfg.admin_port),
    }


def static_cluster(name: str, address: str, port: int, timeout: float = 0.25) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": seconds(timeout),
        "lb_policy": "ROUND_ROBIN",
        "alt_stat_name": f"{name};",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": socket_address(address, port)}}]}]},
    }


def local_clusters(cfg: SidecarConfig) -> list[dict[str, Any]]:
    """prometheus_stats -> Envoy admin; agent -> the agent's status server."""
    localhost, _, _ = ip_family(cfg)
    return [static_cluster("prometheus_stats", localhost, cfg.admin_port),
            static_cluster("agent", localhost, cfg.status_port)]


def _hcm(stat_prefix: str, routes: list[tuple[str, str]], filters: list[dict[str, Any]]) -> dict[str, Any]:
    """An HTTP listener that forwards exactly `routes` (path, cluster) and answers 404 to the rest.

    Its clusters are Envoy's admin port and the agent, which sees Envoy's loopback address as the
    caller: a path that got past the route would hand any workload in the cluster the config dump,
    /quitquitquit or /drain_listeners. Istio's template matches a prefix and passes the path on as
    sent, and the admin port resolves `..` itself, so there `/stats/prometheus/../../config_dump`
    on :15090 is the config dump. Here Envoy normalises the path first (dot segments, percent-
    encoded unreserved characters, doubled slashes), then matches it whole; the query string is
    not part of the match and goes on as sent (`?usedonly`). An escaped slash or backslash (%2F,
    %5C) is refused with a 400 rather than unescaped and redirected: no scraper or prober sends
    one, and a redirect would only invite the client to try the decoded path.
    """
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM,
        "codec_type": "AUTO",
        "stat_prefix": stat_prefix,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [
            *({"match": {"path": path}, "route": {"cluster": cluster}} for path, cluster in routes),
            {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}]},
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }}


def _compressor(kind: str, type_url: str) -> dict[str, Any]:
    # The content types are Istio's; Envoy 1.40 marks common_config.content_type deprecated (a warning,
    # which --skip-deprecated-logs hides), and its default list lacks the OpenMetrics types.
    return {"name": f"envoy.filters.http.compressor.{kind}", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
        "compressor_library": {"name": f"stats_{kind}", "typed_config": {"@type": type_url}},
        "response_direction_config": {"common_config": {"content_type": list(STATS_CONTENT_TYPES)}}}}


def compressors() -> list[dict[str, Any]]:
    ext = "type.googleapis.com/envoy.extensions.compression"
    return [_compressor(kind, f"{ext}.{kind}.compressor.v3.{kind.capitalize()}") for kind in ("brotli", "zstd", "gzip")]


def _listener(host: str, port: int, chain: dict[str, Any], also: str | None = None, **extra: Any) -> dict[str, Any]:
    # Never limited or overloaded: scrapes and readiness probes must get through a busy Envoy.
    # `also`: the same port on the other family's address (dual stack).
    listener: dict[str, Any] = {"name": f"{host}_{port}", "address": socket_address(host, port),
                                "ignore_global_conn_limit": True, "bypass_overload_manager": True}
    if also:
        listener["additional_addresses"] = [{"address": socket_address(also, port)}]
    return {**listener, **extra, "filter_chains": [chain]}


def local_listeners(cfg: SidecarConfig) -> list[dict[str, Any]]:
    """<wildcard>:15090 (Envoy's Prometheus stats), the optional mTLS metrics listeners, and
    <wildcard>:15021 (readiness forwarded to the agent), in the order of Istio's template."""
    localhost, wildcard, _ = ip_family(cfg)
    other_localhost, other_wildcard = additional_addresses(cfg) or (None, None)
    local_only = cfg.metrics_localhost_access_only
    compress = cfg.proxy_config.get("statsCompression", True) is not False
    out = [_listener(localhost if local_only else wildcard, cfg.envoy_prometheus_port, {"filters": [_hcm(
        "stats", [("/stats/prometheus", "prometheus_stats")], compressors() if compress else [])]},
        also=other_localhost if local_only else other_wildcard)]
    for port, stat_prefix, routes in (
        (cfg.secure_metrics_port, "secure_stats", [("/stats/prometheus", "prometheus_stats")]),
        (cfg.secure_merged_metrics_port, "secure_merged_stats", [("/stats/prometheus", "agent"), ("/metrics", "agent")]),
    ):
        if port and not cfg.standalone:  # standalone has no sds-grpc
            out.append(_secure_metrics_listener(wildcard, port, stat_prefix, routes))
    health = {"filters": [_hcm("agent", [("/healthz/ready", "agent")], [])]}
    if cfg.status_port_proxy_protocol:  # behind a load balancer that sends it; plain probes still work
        out.append(_listener(wildcard, cfg.envoy_status_port, health, also=other_wildcard, listener_filters=[{
            "name": "envoy.listener.proxy_protocol", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
                "allow_requests_without_proxy_protocol": True}}]))
    else:
        out.append(_listener(wildcard, cfg.envoy_status_port, health, also=other_wildcard))
    return out


def sds_secret(name: str, *, wait: bool = False) -> dict[str, Any]:
    """A secret from the agent's SDS server (`sds-grpc`). `wait`: initial_fetch_timeout 0s, as
    Istio's ConstructSdsSecretConfig gives `default` and `ROOTCA` (its template's listeners do not)."""
    source: dict[str, Any] = {"api_config_source": {
        "api_type": "GRPC", "set_node_on_first_message_only": True, "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]}, "resource_api_version": "V3"}
    if wait:
        source["initial_fetch_timeout"] = "0s"
    return {"name": name, "sds_config": source}


def _secure_metrics_listener(wildcard: str, port: int, stat_prefix: str,
                             routes: list[tuple[str, str]]) -> dict[str, Any]:
    """Metrics over mTLS with the workload certificate: a scraper must present a mesh certificate."""
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [sds_secret("default")],
            "combined_validation_context": {"default_validation_context": {},
                                            "validation_context_sds_secret_config": sds_secret("ROOTCA")}}}}
    inspector = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
    chain = {"filter_chain_match": {"transport_protocol": "tls"}, "transport_socket": tls,
             "filters": [_hcm(stat_prefix, routes, [])]}
    return _listener(wildcard, port, chain, listener_filters=[inspector])


def overload_manager(cfg: SidecarConfig) -> dict[str, Any]:
    return {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                     ".DownstreamConnectionsConfig",
            "max_active_downstream_connections": cfg.global_downstream_max_connections}}]}


def bootstrap_extensions() -> list[dict[str, Any]]:
    """The internal listener (istiod's HBONE and waypoint listeners use it), as a TypedStruct like
    Istio's template. Istio's `metadata_discovery` extension (istio.workload.BootstrapExtension) is
    left out: it exists only in Istio's own Envoy build, and upstream Envoy refuses the bootstrap."""
    return [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
        "@type": TYPED_STRUCT,
        "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
        "value": {"buffer_size_kb": 64}}}]


def proto_merge(base: Any, overlay: Any) -> Any:
    """protobuf MergeFrom on JSON, as Envoy applies `--config-yaml`: messages merge, lists append,
    scalars replace."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = proto_merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(overlay, list):
        return base + overlay
    return overlay
