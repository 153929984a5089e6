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


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The ClientTLSSettings of a tracer, metrics service or access log service (ProxyConfig)."""

    mode: str = "DISABLE"  # DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""


@dataclass(frozen=True, slots=True)
class RemoteService:
    """A collector Envoy sends to: ProxyConfig envoyMetricsService / envoyAccessLogService, or a
    tracer. `address` is host:port with `$(HOST_IP)` already replaced."""

    address: str
    tls: TlsSettings = TlsSettings()
    #: tcpKeepalive as Envoy's TcpKeepalive fields (keepalive_probes/_time/_interval), set ones only.
    tcp_keepalive: dict | None = None


@dataclass(frozen=True, slots=True)
class Tracer:
    """ProxyConfig.tracing: the one tracer Istio's template renders (zipkin, lightstep or datadog)."""

    kind: str
    service: RemoteService
    access_token: str = ""  # lightstep only


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshSettings:
    """The workload identity, SDS and xDS proxy settings (the variables are in config_env.ENV_VARS).

    Istio's meanings: https://github.com/istio/istio/blob/master/pkg/istio-agent/agent.go and
    https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/options/options.go."""

    ca_addr: str = ""  # "" = discoveryAddress
    ca_provider: str = "Citadel"
    ca_root_ca: str = ""
    ca_headers: tuple[tuple[str, str], ...] = ()  # CA_HEADER_<NAME>: (NAME, value)
    credential_fetcher_type: str = ""
    pilot_cert_provider: str = "istiod"
    jwt_policy: str = "third-party-jwt"
    cluster_id: str = ""  # ISTIO_META_CLUSTER_ID
    cert_signer: str = ""  # ISTIO_META_CERT_SIGNER
    secret_ttl: float = 86400.0
    grace_ratio: float = 0.5
    grace_jitter: float = 0.01
    ecc_signature_algorithm: str = ""
    ecc_curve: str = "P256"
    rsa_key_size: int = 2048
    pkcs8_key: bool = False
    file_mounted_certs: bool = False
    prov_cert: str = ""
    output_certs: str = ""
    kubernetes: bool = False  # KUBERNETES_SERVICE_HOST set
    xds_headers: tuple[tuple[str, str], ...] = ()  # XDS_HEADER_<NAME>: (NAME, value)
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 10.0
    proxy_config_xds_agent: bool = False
    dns_proxy: bool = False  # ISTIO_META_DNS_CAPTURE (sidecars) or ISTIO_META_ENABLE_DNS_SERVER
    dns_proxy_addr: str = "localhost:15053"
    dns_forward_parallel: bool = False
    dns_forward_timeout: float | None = None  # None: the DNS proxy's default
    disable_envoy: bool = False
    grpc_xds_bootstrap: str = ""


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
    # The raw node metadata: ISTIO_META_* (prefix stripped) and the keys of every ISTIO_METAJSON_* object.
    meta_env: dict = field(default_factory=dict)
    static_labels: dict = field(default_factory=dict)  # ISTIO_METAJSON_LABELS
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
    secure_metrics_port: int = 0  # 0: no mTLS listener for Envoy's stats
    secure_merged_metrics_port: int = 0  # 0: no mTLS listener for the merged metrics
    status_port_proxy_protocol: bool = False  # ENVOY_STATUS_PORT_ENABLE_PROXY_PROTOCOL
    dual_stack: bool = False  # ISTIO_DUAL_STACK
    sts_port: int = 0
    # Control plane: Envoy's xds-grpc is the agent's xDS proxy on a Unix socket (Istio's layout since 1.8).
    #: The xDS proxy's socket, in Envoy's bootstrap and where the agent listens: <configPath>/XDS, or
    #: that file relative to the working directory when the absolute path is too long for a socket.
    xds_socket_path: str = "./etc/istio/proxy/XDS"
    discovery_address: str = "istiod.istio-system.svc:15012"
    control_plane_auth_policy: str = "MUTUAL_TLS"
    xds_root_cert: str = "./var/run/secrets/istio/root-cert.pem"
    istiod_san: str = "istiod.istio-system.svc"
    xds_type: str = "DELTA_GRPC"
    connect_timeout: float = 1.0
    workload_identity_socket_file: str = "socket"  # in ./var/run/secrets/workload-spiffe-uds
    mesh: MeshSettings = MeshSettings()
    metadata_discovery: bool = False  # node metadata METADATA_DISCOVERY (PEER_METADATA_DISCOVERY / ENABLE_HBONE)
    compliance_policy: str = ""
    # Telemetry collectors (ProxyConfig)
    tracer: Tracer | None = None
    metrics_service: RemoteService | None = None
    access_log_service: RemoteService | None = None
    statsd_address: str = ""
    load_stats_config: dict | None = None  # ISTIO_META_LOAD_STATS_CONFIG_JSON: Envoy's LRS ApiConfigSource
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
    histogram_buckets: tuple[tuple[str, tuple[float, ...]], ...] = ()  # (prefix, buckets), sorted by prefix
    stats_flush_interval: float | None = None
    stats_eviction_interval: float | None = None
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
    # Always checked, an explicit `--discoveryAddress=` too. (Collector addresses are checked as read.)
    if problem := check_host_port("discoveryAddress", cfg.discovery_address):
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
