"""The resolved sidecar configuration (a frozen dataclass), what it must satisfy (`validate`), and
Istio's ProxyConfig defaults.

The defaults are those of Istio's DefaultProxyConfig
(https://github.com/istio/istio/blob/master/pkg/config/mesh/mesh.go).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent import flags
from agent.sidecar.config_parse import ConfigError, check_host_port, shown

DEFAULT_BINARY = "/usr/local/bin/envoy"

DEFAULT_PROXY_CONFIG: dict[str, Any] = {
    "configPath": "./etc/istio/proxy",
    "binaryPath": DEFAULT_BINARY,
    "serviceCluster": "istio-proxy",
    "drainDuration": "45s",
    "terminationDrainDuration": "5s",
    "proxyAdminPort": 15000,
    "controlPlaneAuthPolicy": "MUTUAL_TLS",
    "discoveryAddress": "istiod.istio-system.svc:15012",
    "statNameLength": 189,
    "statusPort": 15020,
}

KNOWN_PROXY_CONFIG_FIELDS = frozenset("""
configPath binaryPath serviceCluster drainDuration parentShutdownDuration discoveryAddress discoveryRefreshDelay
zipkinAddress statsdUdpAddress envoyMetricsServiceAddress proxyAdminPort availabilityZone controlPlaneAuthPolicy
customConfigFile statNameLength concurrency proxyBootstrapTemplatePath interceptionMode tracing sds
envoyAccessLogService envoyMetricsService proxyMetadata runtimeValues statusPort extraStatTags gatewayTopology
terminationDrainDuration meshId readinessProbe proxyStatsMatcher holdApplicationUntilProxyStarts caCertificatesPem
image privateKeyProvider proxyHeaders tracingServiceName fileFlushInterval fileFlushMinSizeKb statsCompression
connectionSettings
""".split())


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarConfig:
    """Everything the sidecar needs, resolved once. Treat the dict fields as read-only."""

    proxy_type: str = "sidecar"
    standalone: bool = False
    # Identity
    pod_name: str = ""
    pod_namespace: str = ""
    instance_ip: str = ""  # INSTANCE_IP as given (may be empty)
    instance_ips: tuple[str, ...] = ("127.0.0.1",)
    service_account: str = ""
    host_ip: str = ""
    domain: str = ""
    trust_domain: str = "cluster.local"
    service_cluster: str = "istio-proxy"
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    meta_env: dict = field(default_factory=dict)  # ISTIO_META_* (prefix stripped) and ISTIO_METAJSON_* merged
    # Paths
    config_path: str = "./etc/istio/proxy"
    binary_path: str = DEFAULT_BINARY
    custom_config_file: str = ""
    mesh_config_path: str = "./etc/istio/config/mesh"
    bootstrap_override_path: str = ""  # ISTIO_BOOTSTRAP_OVERRIDE
    bootstrap_override: dict | None = None  # its parsed contents ($(HOST_IP) substituted)
    outlier_log_path: str = ""
    # Ports
    admin_port: int = 15000
    status_port: int = 15020
    envoy_status_port: int = 15021
    envoy_prometheus_port: int = 15090
    sts_port: int = 0
    # Control plane (Envoy dials it directly, as in 2020)
    discovery_address: str = "istiod.istio-system.svc:15012"
    control_plane_auth_policy: str = "MUTUAL_TLS"
    xds_root_cert: str = "./var/run/secrets/istio/root-cert.pem"
    istiod_san: str = "istiod.istio-system.svc"
    xds_type: str = "GRPC"
    connect_timeout: float = 1.0
    dns_refresh_rate: float = 300.0
    zipkin_address: str = ""
    # Envoy process
    concurrency: int = 0
    drain_duration: float = 45.0
    parent_shutdown_duration: float = 60.0
    proxy_log_level: str = "warning"
    proxy_component_log_level: str = ""
    skip_deprecated_logs: bool = True
    enable_core_dump: bool = False
    file_flush_interval_ms: int = 1000
    global_downstream_max_connections: int = 2147483647  # the overload manager's connection limit
    # Lifecycle
    termination_drain_duration: float = 5.0
    exit_on_zero_active_connections: bool = False
    minimum_drain_duration: float = 5.0
    restart_budget: int = 3
    restart_window: float = 600.0
    restart_backoff: float = 1.0
    # Status server
    app_probers: dict = field(default_factory=dict)
    prometheus_annotations: dict | None = None
    merge_envoy_stats: bool = True
    metrics_localhost_access_only: bool = False
    probe_keepalive: bool = False
    probe_legacy_localhost: bool = False
    profiling: bool = True
    # Stats
    extra_stat_tags: tuple[str, ...] = ()
    inclusion_prefixes: tuple[str, ...] = ()
    inclusion_suffixes: tuple[str, ...] = ()
    inclusion_regexps: tuple[str, ...] = ()
    runtime_values: dict = field(default_factory=dict)
    # Logs
    log_output_level: str = "default:info"
    log_as_json: bool = False
    log_target: str = "stdout"
    # Provenance
    proxy_config: dict = field(default_factory=dict)  # the effective ProxyConfig, camelCase JSON
    flag_values: dict = field(default_factory=dict)  # every flag's resolved value, for the FLAG: log lines
    unknown_flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def validate(cfg: SidecarConfig) -> None:
    """What a resolved configuration must satisfy before anything starts: every problem, in one
    ConfigError line."""
    problems = []
    if not cfg.config_path:
        problems.append("configPath must be set")
    if not cfg.binary_path:
        problems.append("binaryPath must be set")
    for name, path in (("configPath", cfg.config_path), ("binaryPath", cfg.binary_path),
                       ("customConfigFile", cfg.custom_config_file)):
        if "\x00" in path:
            problems.append(f"invalid {name}: {shown(path)} (a NUL character)")
    if cfg.drain_duration < 0.001 or cfg.drain_duration != int(cfg.drain_duration):
        problems.append(f"invalid drainDuration: {flags.format_duration(cfg.drain_duration)!r} (whole seconds, >= 1s)")
    # discoveryAddress is always checked (an explicit `--discoveryAddress=` too); zipkinAddress "" = no tracing.
    for name, value in (("discoveryAddress", cfg.discovery_address), ("zipkinAddress", cfg.zipkin_address)):
        if (value or name == "discoveryAddress") and (problem := check_host_port(name, value)):
            problems.append(problem)
    if not 0 < cfg.admin_port < 65536:
        problems.append(f"invalid proxyAdminPort: {cfg.admin_port}")
    if not 0 < cfg.status_port < 65536:
        problems.append(f"invalid statusPort: {cfg.status_port}")
    if cfg.control_plane_auth_policy not in ("NONE", "MUTUAL_TLS"):
        problems.append(f"invalid controlPlaneAuthPolicy: {shown(cfg.control_plane_auth_policy)} (NONE or MUTUAL_TLS)")
    if cfg.restart_budget < 0:
        problems.append(f"invalid --envoy-restart-budget: {cfg.restart_budget} (>= 0)")
    if cfg.restart_window <= 0 or cfg.restart_backoff < 0:
        problems.append("invalid --envoy-restart-window/--envoy-restart-backoff (window > 0, backoff >= 0)")
    for name in ("termination_drain_duration", "minimum_drain_duration"):
        if getattr(cfg, name) < 0:
            problems.append(f"invalid {name}: negative")
    # Envoy's own constraints on the clusters these feed (Duration gt 0 / gt 1ms).
    if cfg.connect_timeout <= 0:
        problems.append(f"invalid connectTimeout: {flags.format_duration(cfg.connect_timeout)!r} (> 0)")
    if cfg.dns_refresh_rate <= 0.001:
        problems.append(f"invalid dnsRefreshRate: {flags.format_duration(cfg.dns_refresh_rate)!r} (> 1ms)")
    if not 0 <= cfg.concurrency < 2**32:
        problems.append(f"invalid concurrency: {shown(cfg.concurrency, 24)} (0..{2**32 - 1})")
    if cfg.file_flush_interval_ms < 0:
        problems.append(f"invalid fileFlushInterval: {cfg.file_flush_interval_ms}ms (>= 0)")
    problems += log_level_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


def log_level_problems(cfg: SidecarConfig) -> list[str]:
    """Envoy refuses to start on an unknown level; say so before starting it."""
    problems = []
    for flag, text in (("proxyLogLevel", cfg.proxy_log_level), ("proxyComponentLogLevel", cfg.proxy_component_log_level)):
        for part in filter(None, (p.strip() for p in text.split(","))):
            level = part.rpartition(":")[2]
            if level not in ENVOY_LOG_LEVELS or part.startswith(":"):
                problems.append(f"invalid {flag}: {shown(text)} (level {shown(level, 40)}; one of {', '.join(ENVOY_LOG_LEVELS)})")
                break
    return problems
