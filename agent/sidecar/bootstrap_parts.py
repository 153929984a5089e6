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


def ip_family(cfg: SidecarConfig) -> tuple[str, str, str]:
    """(localhost, wildcard, dns_lookup_family): IPv6 values only when every node IP is IPv6, as
    Istio's template decides for a dual-stack pod (IPv4 wins)."""
    versions = {ipaddress.ip_address(ip).version for ip in cfg.instance_ips if is_ip(ip)}
    if versions == {6}:
        return "::1", "::", "V6_ONLY"
    return "127.0.0.1", "0.0.0.0", "V4_ONLY"


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
    patterns += [{"prefix": p} for p in _expand(cfg.inclusion_prefixes, cfg) + list(REQUIRED_PREFIXES)]
    patterns += [{"suffix": s} for s in _expand(cfg.inclusion_suffixes, cfg) + suffixes]
    patterns += [{"safe_regex": {"regex": r}} for r in _expand(cfg.inclusion_regexps, cfg) + list(REQUIRED_REGEXPS)]
    patterns += [{"prefix": "component"}, {"prefix": "istio"}]
    return {"use_all_default_tags": False, "stats_tags": tags,
            "stats_matcher": {"inclusion_list": {"patterns": patterns}}}


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


def _hcm(stat_prefix: str, prefix: str, cluster: str, filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM,
        "codec_type": "AUTO",
        "stat_prefix": stat_prefix,
        "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [
            {"match": {"prefix": prefix}, "route": {"cluster": cluster}}]}]},
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }}


def _compressor(name: str, library: str, type_url: str) -> dict[str, Any]:
    # Istio also lists the OpenMetrics content types in common_config.content_type; Envoy 1.40
    # deprecates that field (a warning per filter at every start), so Envoy's defaults (which include
    # text/plain, the Prometheus text format) are used.
    return {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
        "compressor_library": {"name": library, "typed_config": {"@type": type_url}}}}


def compressors() -> list[dict[str, Any]]:
    ext = "type.googleapis.com/envoy.extensions.compression"
    return [_compressor("brotli", "text_optimized", f"{ext}.brotli.compressor.v3.Brotli"),
            _compressor("zstd", "text_optimized", f"{ext}.zstd.compressor.v3.Zstd"),
            _compressor("gzip", "text_optimized", f"{ext}.gzip.compressor.v3.Gzip")]


def local_listeners(cfg: SidecarConfig) -> list[dict[str, Any]]:
    """0.0.0.0:15090 (Envoy's Prometheus stats) and 0.0.0.0:15021 (readiness forwarded to the agent)."""
    _, wildcard, _ = ip_family(cfg)
    metrics_host = "127.0.0.1" if cfg.metrics_localhost_access_only else wildcard
    compress = cfg.proxy_config.get("statsCompression", True) is not False
    out = []
    for host, port, prefix, cluster, stat_prefix, filters in (
        (metrics_host, cfg.envoy_prometheus_port, "/stats/prometheus", "prometheus_stats", "stats",
         compressors() if compress else []),
        (wildcard, cfg.envoy_status_port, "/healthz/ready", "agent", "agent", []),
    ):
        out.append({
            "name": f"{host}_{port}",
            "address": socket_address(host, port),
            "ignore_global_conn_limit": True,
            "bypass_overload_manager": True,
            "filter_chains": [{"filters": [_hcm(stat_prefix, prefix, cluster, filters)]}],
        })
    return out


def overload_manager(cfg: SidecarConfig) -> dict[str, Any]:
    return {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                     ".DownstreamConnectionsConfig",
            "max_active_downstream_connections": cfg.global_downstream_max_connections}}]}


def bootstrap_extensions() -> list[dict[str, Any]]:
    return [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
        "buffer_size_kb": 64}}]


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
