"""Every environment variable the sidecar reads, declared once (`ENV_VARS`), and the settings
derived from them, the pod's downward-API files and the ProxyConfig (pure).

A new variable is one `EnvVar` row in `ENV_VARS`; it is read as `env["NAME"]` on an `Environment`,
which parses it by its kind (unset or empty: the declared default) and refuses undeclared names.
The same rows render `pilot-agent proxy --help` and the README's table (`markdown_table`). The
variables that back a command-line flag (`TRUST_DOMAIN`, `ENVOY_RESTART_BUDGET`, ...) are declared
on the flag, in agent.sidecar.config.PROXY_FLAGS, and listed with these; a value of theirs that does
not parse is an error too (Istio silently ignores it).

Each function takes plain values and raises ConfigError naming the setting on bad input.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent import flags
from agent.sidecar.config_model import DEFAULT_BINARY
from agent.sidecar.config_parse import (
    MAX_DURATION,
    ConfigError,
    is_ip,
    json_data_problem,
    object_field,
    parse_app_probers,
    parse_downward_api,
    parse_prometheus_annotations,
    parse_structured,
    proxy_config_layer,
    scalar_text,
    shown,
    string_list,
    string_map,
    to_bool,
    to_duration,
    to_int,
)

ReadFile = Callable[[str], "str | None"]
PathExists = Callable[[str], bool]
PODINFO_DIR = "./etc/istio/pod"
#: Where Envoy's sds-grpc pipe lives (Istio's security.WorkloadIdentityPath, relative to the working directory).
WORKLOAD_IDENTITY_DIR = "./var/run/secrets/workload-spiffe-uds"


def _port(name: str, text: str) -> int:
    port = to_int(name, text)
    if not 0 < port < 65536:
        raise ConfigError(f"invalid port for {name}: {shown(text)}")
    return port


def _port_or_zero(name: str, text: str) -> int:
    port = to_int(name, text)
    if not 0 <= port < 65536:
        raise ConfigError(f"invalid port for {name}: {shown(text)} (0 disables)")
    return port


def _socket_file(text: str) -> str:
    """WORKLOAD_IDENTITY_SOCKET_FILE: Istio refuses a path ("must be a filename, not a path")."""
    if "/" in text or text in (".", "..") or "\x00" in text:
        raise ConfigError(f"invalid WORKLOAD_IDENTITY_SOCKET_FILE: {shown(text)} (a file name in "
                          f"{WORKLOAD_IDENTITY_DIR}, not a path)")
    return text


def _whole_seconds(name: str, text: str) -> float:
    seconds = to_int(name, text)
    if not 0 <= seconds <= MAX_DURATION:
        raise ConfigError(f"invalid {name}: {shown(text)}")
    return float(seconds)


class Kind(enum.Enum):
    """How a variable's text is read; the value is how --help and the README name the kind."""

    TEXT = "str"
    BOOL = "bool"
    INT = "int"
    PORT = "port"
    PORT_OR_ZERO = "port or 0"
    DURATION = "duration"
    SECONDS = "int seconds"
    JSON = "JSON"
    STRUCTURED = "JSON or YAML"


#: (setting name, text) -> value, for the kinds every variable of that kind shares.
_PARSERS: dict[Kind, Callable[[str, str], Any]] = {
    Kind.TEXT: lambda name, text: text,
    Kind.BOOL: to_bool,
    Kind.INT: to_int,
    Kind.PORT: _port,
    Kind.PORT_OR_ZERO: _port_or_zero,
    Kind.DURATION: to_duration,
    Kind.SECONDS: _whole_seconds,
}


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One environment variable: name, kind, default (None: unset, shown as such), meaning. A
    JSON/YAML variable names its own `parse` (text -> value), which reports its errors in detail.
    `prefix=True` declares a family (`ISTIO_META_<KEY>`): every variable whose name starts so."""

    name: str
    kind: Kind
    default: Any
    help: str
    parse: Callable[[str], Any] | None = None
    prefix: bool = False

    def read(self, text: str) -> Any:
        return self.parse(text) if self.parse else _PARSERS[self.kind](self.name, text)

    def shown_name(self) -> str:
        return f"{self.name}<KEY>" if self.prefix else self.name

    def default_text(self) -> str:
        if self.default is None:
            return "unset"
        if self.kind is Kind.BOOL:
            return "true" if self.default else "false"
        if self.kind is Kind.DURATION:
            return flags.format_duration(self.default)
        return str(self.default) if self.default != "" else '""'


ENV_VARS: tuple[EnvVar, ...] = (
    # Who the pod is (the injector sets these from the downward API).
    EnvVar("POD_NAME", Kind.TEXT, "", "node id `<POD_NAME>.<POD_NAMESPACE>`, metadata `NAME`"),
    EnvVar("POD_NAMESPACE", Kind.TEXT, "", "node id, metadata `NAMESPACE`, default `--domain` `<ns>.svc.cluster.local`"),
    EnvVar("INSTANCE_IP", Kind.TEXT, "", "first IP of the node id (istiod's pod IP), app-probe destination; "
           "the interface addresses follow"),
    EnvVar("SERVICE_ACCOUNT", Kind.TEXT, "", "metadata `SERVICE_ACCOUNT`"),
    EnvVar("HOST_IP", Kind.TEXT, "", "replaces `$(HOST_IP)` in the `ISTIO_BOOTSTRAP_OVERRIDE` file (IPv6 bracketed)"),
    EnvVar("ISTIO_CPU_LIMIT", Kind.INT, 0, "Envoy's concurrency when ProxyConfig sets none"),
    # ProxyConfig and node metadata.
    EnvVar("PROXY_CONFIG", Kind.STRUCTURED, None, "ProxyConfig over the mesh config's `defaultConfig`, under the "
           "pod's `proxy.istio.io/config` annotation",
           parse=lambda text: proxy_config_layer("PROXY_CONFIG", text)),
    EnvVar("ISTIO_META_", Kind.TEXT, None, "node metadata `<KEY>` (a string); also from ProxyConfig `proxyMetadata`",
           prefix=True),
    EnvVar("ISTIO_METAJSON_", Kind.JSON, None, "node metadata `<KEY>` = the JSON object (`LABELS` also sets "
           "`STATIC_LABELS`); not a JSON object: a warning", prefix=True),
    # The status server.
    EnvVar("ISTIO_KUBE_APP_PROBERS", Kind.JSON, None, "app probes and lifecycle hooks the status server answers "
           "(`/app-health/<container>/livez`, `readyz`, `startupz`; `/app-lifecycle/<container>/prestopz`, "
           "`poststartz`), sent to `INSTANCE_IP`", parse=parse_app_probers),
    EnvVar("ISTIO_PROMETHEUS_ANNOTATIONS", Kind.JSON, None, "the app's metrics to merge into the agent's, scraped "
           "at 127.0.0.1: `{\"scrape\":\"true\",\"path\":\"/metrics\",\"port\":\"8080\"}` (or a `targets` "
           "list)", parse=parse_prometheus_annotations),
    EnvVar("PILOT_AGENT_MERGE_ENVOY_STATS", Kind.BOOL, True, "include Envoy's stats in the agent's merged metrics"),
    EnvVar("METRICS_LOCALHOST_ACCESS_ONLY", Kind.BOOL, False, "metrics only for loopback clients; also binds 15090 "
           "to 127.0.0.1"),
    EnvVar("ENABLE_PROBE_KEEPALIVE_CONNECTIONS", Kind.BOOL, False, "Istio's probe connection reuse; accepted and "
           "checked, but app HTTP probes here always send `Connection: close`"),
    EnvVar("REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION", Kind.BOOL, False, "send app probes to `localhost` instead "
           "of the pod IP (`INSTANCE_IP`)"),
    # Draining.
    EnvVar("TERMINATION_DRAIN_DURATION_SECONDS", Kind.SECONDS, None, "overrides ProxyConfig "
           "`terminationDrainDuration` (5s)"),
    EnvVar("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", Kind.BOOL, False, "drain until no connection is active; adds "
           "`downstream_cx_active` to the stats inclusion list"),
    EnvVar("MINIMUM_DRAIN_DURATION", Kind.DURATION, 5.0, "first wait when draining until no connection is active"),
    # Envoy and its bootstrap.
    EnvVar("ENVOY_STATUS_PORT", Kind.PORT, 15021, "Envoy's health listener port"),
    EnvVar("ENVOY_PROMETHEUS_PORT", Kind.PORT, 15090, "Envoy's Prometheus listener port"),
    EnvVar("ENVOY_SECURE_METRICS_PORT", Kind.PORT_OR_ZERO, 0, "an mTLS listener (workload certificate, client "
           "certificate required) for Envoy's stats on this port; 0: none"),
    EnvVar("ENVOY_SECURE_MERGED_METRICS_PORT", Kind.PORT_OR_ZERO, 0, "an mTLS listener for the merged metrics "
           "(Envoy, app, agent: the status server's `/stats/prometheus`) on this port; 0: none"),
    EnvVar("ENVOY_STATUS_PORT_ENABLE_PROXY_PROTOCOL", Kind.BOOL, False, "the health listener accepts the PROXY "
           "protocol (requests without it too)"),
    EnvVar("ISTIO_DUAL_STACK", Kind.BOOL, False, "a pod with IPv4 and IPv6 addresses: Envoy's local addresses "
           "in the family of the first IP, 15090 and 15021 on both families, DNS lookups of both; else IPv4"),
    EnvVar("WORKLOAD_IDENTITY_SOCKET_FILE", Kind.TEXT, "socket", "file name of the SDS socket in "
           "`./var/run/secrets/workload-spiffe-uds` (Envoy's `sds-grpc`; a SPIRE agent's socket, say); a path "
           "is an error", parse=_socket_file),
    EnvVar("PEER_METADATA_DISCOVERY", Kind.BOOL, None, "node metadata `METADATA_DISCOVERY` (unset: "
           "`ISTIO_META_ENABLE_HBONE`); with delta xDS also the `workload_discovery` stats prefix"),
    EnvVar("COMPLIANCE_POLICY", Kind.TEXT, "", "`fips-140-2` limits Envoy's Google gRPC client to TLS 1.2 "
           "(runtime `google_grpc_disable_tls_13`)"),
    EnvVar("ISTIO_BOOTSTRAP_OVERRIDE", Kind.TEXT, "", "YAML/JSON file merged into the bootstrap (protobuf merge: "
           "objects merge, lists append); not readable: a warning"),
    EnvVar("ENVOY_SKIP_DEPRECATED_LOGS", Kind.BOOL, True, "Envoy `--skip-deprecated-logs`"),
    EnvVar("ISTIO_ENVOY_ENABLE_CORE_DUMP", Kind.BOOL, False, "Envoy `--enable-core-dump`"),
    # The control plane.
    EnvVar("ISTIO_DELTA_XDS", Kind.BOOL, True, "`true`: Envoy's ADS is `DELTA_GRPC`; `false`: state of the world "
           "`GRPC` (the xDS proxy relays either)"),
    EnvVar("ISTIOD_SAN", Kind.TEXT, None, "the name Envoy checks in istiod's certificate (MUTUAL_TLS); unset: "
           "the host of discoveryAddress, `istiod.istio-system.svc` for `localhost`"),
    EnvVar("XDS_ROOT_CA", Kind.TEXT, None, "root certificate file for MUTUAL_TLS; unset: `./etc/certs/root-cert.pem` "
           "if present, else `./var/run/secrets/istio/root-cert.pem`"),
    EnvVar("XDS_HEADER_", Kind.TEXT, None, "gRPC metadata `<key>` (lowercased) on the xDS proxy's streams to "
           "istiod", prefix=True),
    EnvVar("GRPC_KEEPALIVE_INTERVAL", Kind.DURATION, 30.0, "keepalive pings to istiod and the CA"),
    EnvVar("GRPC_KEEPALIVE_TIMEOUT", Kind.DURATION, 10.0, "a keepalive ping unanswered this long closes the connection"),
    EnvVar("PROXY_CONFIG_XDS_AGENT", Kind.BOOL, False, "ask istiod for the ProxyConfig (its trust bundle is added "
           "to `ROOTCA`)"),
    # Workload identity: the certificate Envoy gets over SDS.
    EnvVar("CA_ADDR", Kind.TEXT, "", "the CA (`istio.v1.auth.IstioCertificateService`); unset: discoveryAddress. "
           "An address ending in `:15010` is dialled without TLS"),
    EnvVar("CA_PROVIDER", Kind.TEXT, "Citadel", "only `Citadel` (any CA speaking Istio's API) is built in"),
    EnvVar("CA_ROOT_CA", Kind.TEXT, "", "root certificate file for the CA; `SYSTEM`: the OS trust store; unset: "
           "`./var/run/secrets/istio/root-cert.pem` (see PILOT_CERT_PROVIDER, PROV_CERT)"),
    EnvVar("CA_HEADER_", Kind.TEXT, None, "gRPC metadata `<key>` (lowercased) on certificate requests", prefix=True),
    EnvVar("CREDENTIAL_FETCHER_TYPE", Kind.TEXT, "", "only the token file (`JWT`) is supported"),
    EnvVar("PILOT_CERT_PROVIDER", Kind.TEXT, "istiod", "who signed istiod's certificate: `istiod`, `kubernetes`, "
           "`custom` (root `./etc/certs/root-cert.pem`) or `none`"),
    EnvVar("JWT_POLICY", Kind.TEXT, "third-party-jwt", "the token sent to the CA and istiod is "
           "`./var/run/secrets/tokens/istio-token`, re-read on every request"),
    EnvVar("SECRET_TTL", Kind.DURATION, 86400.0, "the workload certificate's validity asked of the CA"),
    EnvVar("SECRET_GRACE_PERIOD_RATIO", Kind.TEXT, "0.5", "renew when this fraction of the certificate's life "
           "(from receipt) is left"),
    EnvVar("SECRET_GRACE_PERIOD_RATIO_JITTER", Kind.TEXT, "0.01", "random spread of the ratio, so a fleet does "
           "not renew at once"),
    EnvVar("ECC_SIGNATURE_ALGORITHM", Kind.TEXT, "", "`ECDSA`: an EC key (see ECC_CURVE); unset: RSA"),
    EnvVar("ECC_CURVE", Kind.TEXT, "P256", "`P256` or `P384`"),
    EnvVar("WORKLOAD_RSA_KEY_SIZE", Kind.INT, 2048, "RSA key size (at least 2048)"),
    EnvVar("PKCS8_KEY", Kind.BOOL, False, "the key in PKCS#8 PEM"),
    EnvVar("FILE_MOUNTED_CERTS", Kind.BOOL, False, "serve `./etc/certs/{cert-chain,key,root-cert}.pem` and ask "
           "no CA"),
    EnvVar("PROV_CERT", Kind.TEXT, "", "directory of a provisioned `key.pem`/`cert-chain.pem`/`root-cert.pem`: "
           "the client certificate to the CA and istiod (VMs)"),
    EnvVar("OUTPUT_CERTS", Kind.TEXT, "", "directory where the workload `key.pem` (0600), `cert-chain.pem` and "
           "`root-cert.pem` are written on every renewal; unset: the key never touches disk"),
    EnvVar("KUBERNETES_SERVICE_HOST", Kind.TEXT, "", "set (in Kubernetes): the OUTPUT_CERTS certificates are 0644 "
           "as Istio writes them; the key stays 0600 (Istio: 0644)"),
    # The DNS proxy (on with ISTIO_META_DNS_CAPTURE=true for sidecars, ISTIO_META_ENABLE_DNS_SERVER=true for any).
    EnvVar("DNS_PROXY_ADDR", Kind.TEXT, "localhost:15053", "the DNS proxy's `host:port`; `localhost`: 127.0.0.1 and/or "
           "[::1] after the families of the resolv.conf nameservers"),
    EnvVar("DNS_FORWARD_PARALLEL", Kind.BOOL, False, "ask every resolv.conf nameserver at once instead of in order"),
    EnvVar("DNS_FORWARD_TIMEOUT", Kind.DURATION, None, "bound of a forwarded query, after which the client gets "
           "SERVFAIL; unset: 4s (under the C library's 5 s)"),
    # Proxyless gRPC (the injector's `grpc-agent` template).
    EnvVar("DISABLE_ENVOY", Kind.BOOL, False, "run no Envoy: the agent serves the xDS proxy and the certificates "
           "only, until SIGTERM"),
    EnvVar("GRPC_XDS_BOOTSTRAP", Kind.TEXT, "", "where to write the gRPC xDS bootstrap file (with DISABLE_ENVOY)"),
)

_BY_NAME = {var.name: var for var in ENV_VARS}


@dataclass(frozen=True, slots=True)
class Environment:
    """The environment as the sidecar reads it: `env["NAME"]` is the declared variable's value,
    parsed by its kind (unset or empty: its default); an undeclared name is a KeyError."""

    raw: Mapping[str, str]

    def __getitem__(self, name: str) -> Any:
        var = _BY_NAME[name]
        if var.prefix:
            raise KeyError(f"{name} is a prefix family: use family()")
        text = self.raw.get(name, "")
        return var.default if text == "" else var.read(text)

    def family(self, *prefixes: str) -> list[tuple[str, str]]:
        """(name, text) of every variable of the declared prefix families, sorted by name."""
        if not all(_BY_NAME[p].prefix for p in prefixes):
            raise KeyError(f"not a declared prefix family: {prefixes}")
        return sorted((k, v) for k, v in self.raw.items() if k.startswith(prefixes))


def usage_lines(flag_table: Sequence[flags.Flag]) -> list[str]:
    """The `Environment variables:` section of `pilot-agent proxy --help`."""
    lines = ["Environment variables:"]
    for name, kind, default, meaning in _rows(flag_table):
        lines.append(f"  {name + ' ' + kind:<48} {meaning} (default {default})")
    return lines


def markdown_table(flag_table: Sequence[flags.Flag]) -> str:
    """The README table of the sidecar's environment variables, generated from the declarations."""
    rows = ["| env var | kind | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {kind} | `{default}` | {meaning} |" for name, kind, default, meaning in _rows(flag_table)]
    return "\n".join(rows) + "\n"


def _rows(flag_table: Sequence[flags.Flag]) -> list[tuple[str, str, str, str]]:
    rows = [(v.shown_name(), v.kind.value, v.default_text(), v.help) for v in ENV_VARS]
    for f in flag_table:
        for var in f.env:
            strict = "; a value that does not parse is an error (Istio ignores it)" if f.kind != "str" else ""
            rows.append((var, f.kind, f.default_text(), f"same as `--{f.name}`{strict}"))
    return rows


def pod_files(read_file: ReadFile) -> tuple[dict[str, str], dict[str, str]]:
    labels = parse_downward_api(read_file(f"{PODINFO_DIR}/labels") or "")
    annotations = parse_downward_api(read_file(f"{PODINFO_DIR}/annotations") or "")
    return labels, annotations


def instance_ips(instance_ip: str, host_ips: Sequence[str]) -> tuple[str, ...]:
    ips = [instance_ip] if is_ip(instance_ip) else []
    ips += [ip for ip in host_ips if ip not in ips]
    return tuple(ips) or ("127.0.0.1", "::1")


def meta_env(pc: Mapping[str, Any], env: Environment, warnings: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(raw node metadata, static labels), as Istio's GetNodeMetaData builds them
    (https://github.com/istio/istio/blob/master/pkg/bootstrap/config.go): the ISTIO_META_* entries
    of ProxyConfig.proxyMetadata, then the environment's ISTIO_META_* (a string each), then every
    ISTIO_METAJSON_* object's keys merged in at the top level, later ones winning. The static labels
    are the ISTIO_METAJSON_LABELS object (its values as text), when not empty."""
    meta: dict[str, Any] = {}
    for key, value in sorted(string_map("ProxyConfig.proxyMetadata", pc.get("proxyMetadata")).items()):
        if key.startswith("ISTIO_META_"):
            meta[key.removeprefix("ISTIO_META_")] = value
    for key, value in env.family("ISTIO_META_"):
        meta[key.removeprefix("ISTIO_META_")] = value
    static: dict[str, str] = {}
    for key, value in env.family("ISTIO_METAJSON_"):
        obj = _json_object(value)
        if obj is None:  # Istio logs and ignores it too
            warnings.append(f"ignored {key}: not a JSON object")
            continue
        meta.update(obj)
        if key == "ISTIO_METAJSON_LABELS":
            static = {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    return meta, static


def _json_object(text: str) -> dict | None:
    """A JSON object as Go's encoding/json reads it (no NaN/Infinity, no out-of-range numbers), or None."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and json_data_problem(obj) is None else None


def stats_patterns(pc: Mapping[str, Any], annotations: Mapping[str, str], kind: str) -> tuple[str, ...]:
    """The sidecar.istio.io/statsInclusion<kind> annotation, else ProxyConfig.proxyStatsMatcher's list
    (the annotation replaces it, no merging, as Istio's bootstrap does)."""
    matcher = object_field("ProxyConfig", pc, "proxyStatsMatcher")
    from_pc = string_list(f"ProxyConfig.proxyStatsMatcher.inclusion{kind}", matcher.get(f"inclusion{kind}"))
    note = annotations.get(f"sidecar.istio.io/statsInclusion{kind}")
    if note is not None:
        return tuple(p.strip() for p in note.split(",") if p.strip())
    return tuple(p for p in from_pc if p)


def extra_stat_tags(pc: Mapping[str, Any], annotations: Mapping[str, str]) -> tuple[str, ...]:
    tags = [t for t in string_list("ProxyConfig.extraStatTags", pc.get("extraStatTags")) if t]
    tags += [t.strip() for t in annotations.get("sidecar.istio.io/extraStatTags", "").split(",") if t.strip()]
    return tuple(dict.fromkeys(tags))


def bootstrap_override(env: Environment, read_file: ReadFile, warnings: list[str]) -> dict | None:
    path = env["ISTIO_BOOTSTRAP_OVERRIDE"]
    if not path:
        return None
    text = read_file(path)
    if text is None:
        warnings.append(f"ISTIO_BOOTSTRAP_OVERRIDE file {path} not readable; ignored")
        return None
    host_ip = env["HOST_IP"]
    if ":" in host_ip:  # IPv6: bracket it, without double-bracketing "[$(HOST_IP)]"
        text = text.replace("[$(HOST_IP)]", "$(HOST_IP)").replace("$(HOST_IP)", f"[{host_ip}]")
    text = text.replace("$(HOST_IP)", host_ip)
    value = parse_structured(f"ISTIO_BOOTSTRAP_OVERRIDE file {path}", text)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"invalid ISTIO_BOOTSTRAP_OVERRIDE file {path}: expected an object")
    return value


def xds_root_cert(env: Environment, path_exists: PathExists) -> str:
    """The control plane's root certificate, in the order Istio's agent looks for it (without
    PROV_CERT): XDS_ROOT_CA, the mounted ./etc/certs, the istio-ca-root-cert ConfigMap's mount, the
    ISTIO_META_TLS_CLIENT_ROOT_CERT metadata."""
    if root := env["XDS_ROOT_CA"]:
        return root
    for path in ("./etc/certs/root-cert.pem", "./var/run/secrets/istio/root-cert.pem"):
        if path_exists(path):
            return path
    meta_root = dict(env.family("ISTIO_META_")).get("ISTIO_META_TLS_CLIENT_ROOT_CERT", "")
    return meta_root or "./var/run/secrets/istio/root-cert.pem"


def istiod_san(env: Environment, discovery_address: str) -> str:
    if san := env["ISTIOD_SAN"]:
        return san
    host = discovery_address.rpartition(":")[0].strip("[]")
    return "istiod.istio-system.svc" if host in ("", "localhost") else host


def concurrency(pc: Mapping[str, Any], parsed: flags.Parsed, env: Environment) -> int:
    value = pc.get("concurrency")
    n = to_int("ProxyConfig.concurrency", value) if value not in (None, "") else env["ISTIO_CPU_LIMIT"]
    legacy = parsed.values["concurrency"]
    return legacy if legacy != 0 else n  # a negative value is reported by validation


def termination_drain(pc: Mapping[str, Any], env: Environment) -> float:
    legacy = env["TERMINATION_DRAIN_DURATION_SECONDS"]
    if legacy is not None:
        return legacy
    return to_duration("ProxyConfig.terminationDrainDuration", pc.get("terminationDrainDuration", "5s"))


def binary_path(pc: Mapping[str, Any], path_exists: PathExists, find_wheel_envoy: Callable[[], str | None]) -> str:
    path = scalar_text("ProxyConfig.binaryPath", pc.get("binaryPath"))
    if path == DEFAULT_BINARY and not path_exists(path):
        return find_wheel_envoy() or path
    return path


#: Envoy's DownstreamConnectionsConfig.max_active_downstream_connections: int64, > 0.
MAX_DOWNSTREAM_CONNECTIONS = 2**63 - 1


def downstream_connection_limit(pc: Mapping[str, Any], meta: Mapping[str, Any], runtime: Mapping[str, str]) -> int:
    """The global downstream connection limit: the first set (non-empty, non-zero) of
    ProxyConfig.connectionSettings, ISTIO_META_GLOBAL_DOWNSTREAM_MAX_CONNECTIONS, runtimeValues."""
    sources = (
        ("ProxyConfig.connectionSettings.globalDownstreamConnectionLimit",
         object_field("ProxyConfig", pc, "connectionSettings").get("globalDownstreamConnectionLimit")),
        ("ISTIO_META_GLOBAL_DOWNSTREAM_MAX_CONNECTIONS", meta.get("GLOBAL_DOWNSTREAM_MAX_CONNECTIONS")),
        ("ProxyConfig.runtimeValues.overload.global_downstream_max_connections",
         runtime.get("overload.global_downstream_max_connections")),
    )
    for setting, value in sources:
        if value:
            limit = to_int(setting, value)
            if not 0 < limit <= MAX_DOWNSTREAM_CONNECTIONS:
                raise ConfigError(f"invalid {setting}: {shown(value)} (1..{MAX_DOWNSTREAM_CONNECTIONS})")
            return limit
    return 2147483647
