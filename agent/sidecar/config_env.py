"""Settings that come from the environment, the pod's downward-API files and the ProxyConfig (pure).

Each function takes plain values (an env mapping, the ProxyConfig dict, injected file/path callables)
and raises ConfigError naming the setting on bad input.
"""
from __future__ import annotations

import json
from collections.abc import (
    Callable,  # the aliases below are run-time values (re-exported)
)

from agent import flags
from agent.sidecar.config_model import DEFAULT_BINARY
from agent.sidecar.config_parse import (
    MAX_DURATION,
    ConfigError,
    is_ip,
    json_data_problem,
    object_field,
    parse_downward_api,
    parse_structured,
    scalar_text,
    shown,
    string_list,
    string_map,
    to_bool,
    to_duration,
    to_int,
)

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence

ReadFile = Callable[[str], "str | None"]
PathExists = Callable[[str], bool]
PODINFO_DIR = "./etc/istio/pod"


def pod_files(read_file: ReadFile) -> tuple[dict[str, str], dict[str, str]]:
    labels = parse_downward_api(read_file(f"{PODINFO_DIR}/labels") or "")
    annotations = parse_downward_api(read_file(f"{PODINFO_DIR}/annotations") or "")
    return labels, annotations


def instance_ips(instance_ip: str, host_ips: Sequence[str]) -> tuple[str, ...]:
    ips = [instance_ip] if is_ip(instance_ip) else []
    ips += [ip for ip in host_ips if ip not in ips]
    return tuple(ips) or ("127.0.0.1", "::1")


def meta_env(pc: Mapping[str, Any], env: Mapping[str, str], warnings: list[str]) -> dict[str, Any]:
    """§4.4 steps 1-2: proxyMetadata ISTIO_META_* then process env ISTIO_META_* / ISTIO_METAJSON_*."""
    meta: dict[str, Any] = {}
    for source in (string_map("ProxyConfig.proxyMetadata", pc.get("proxyMetadata")), env):
        for key, value in sorted(source.items()):
            if key.startswith("ISTIO_META_"):
                meta[key[len("ISTIO_META_"):]] = str(value)
            elif key.startswith("ISTIO_METAJSON_") and source is env:
                obj = _json_object(value)
                if obj is None:  # Istio logs and ignores it too
                    warnings.append(f"ignored {key}: not a JSON object")
                    continue
                name = key[len("ISTIO_METAJSON_"):]
                meta[name] = obj
                if name == "LABELS":
                    meta["STATIC_LABELS"] = obj
    return meta


def _json_object(text: str) -> dict | None:
    """A JSON object as Go's encoding/json reads it (no NaN/Infinity, no out-of-range numbers), or None."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and json_data_problem(obj) is None else None


def stats_patterns(pc: Mapping[str, Any], annotations: Mapping[str, str], kind: str) -> tuple[str, ...]:
    """Annotation wins over ProxyConfig.proxyStatsMatcher (no merging), §5.3."""
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


def bootstrap_override(env: Mapping[str, str], read_file: ReadFile, warnings: list[str]) -> dict | None:
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


def xds_root_cert(env: Mapping[str, str], path_exists: PathExists) -> str:
    """§5.5's root CA order, without PROV_CERT: XDS_ROOT_CA, ./etc/certs, the istio-ca-root-cert ConfigMap."""
    if env.get("XDS_ROOT_CA"):
        return env["XDS_ROOT_CA"]
    for path in ("./etc/certs/root-cert.pem", "./var/run/secrets/istio/root-cert.pem"):
        if path_exists(path):
            return path
    meta_root = env.get("ISTIO_META_TLS_CLIENT_ROOT_CERT", "")
    return meta_root or "./var/run/secrets/istio/root-cert.pem"


def istiod_san(env: Mapping[str, str], discovery_address: str) -> str:
    if env.get("ISTIOD_SAN"):
        return env["ISTIOD_SAN"]
    host = discovery_address.rpartition(":")[0].strip("[]")
    return "istiod.istio-system.svc" if host in ("", "localhost") else host


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    return to_bool(name, env[name]) if env.get(name, "") != "" else default


def env_port(env: Mapping[str, str], name: str, default: int) -> int:
    if env.get(name, "") == "":
        return default
    port = to_int(name, env[name])
    if not 0 < port < 65536:
        raise ConfigError(f"invalid port for {name}: {shown(env[name])}")
    return port


def concurrency(pc: Mapping[str, Any], parsed: flags.Parsed, env: Mapping[str, str]) -> int:
    value = pc.get("concurrency")
    n = to_int("ProxyConfig.concurrency", value) if value not in (None, "") else 0
    if value in (None, "") and env.get("ISTIO_CPU_LIMIT"):
        n = to_int("ISTIO_CPU_LIMIT", env["ISTIO_CPU_LIMIT"])
    legacy = parsed.values["concurrency"]
    return legacy if legacy != 0 else n  # a negative value is reported by validation


def termination_drain(pc: Mapping[str, Any], env: Mapping[str, str]) -> float:
    legacy = env.get("TERMINATION_DRAIN_DURATION_SECONDS", "")
    if legacy != "":
        seconds = to_int("TERMINATION_DRAIN_DURATION_SECONDS", legacy)
        if not 0 <= seconds <= MAX_DURATION:
            raise ConfigError(f"invalid TERMINATION_DRAIN_DURATION_SECONDS: {shown(legacy)}")
        return float(seconds)
    return to_duration("ProxyConfig.terminationDrainDuration", pc.get("terminationDrainDuration", "5s"))


def binary_path(pc: Mapping[str, Any], path_exists: PathExists, find_wheel_envoy: Callable[[], "str | None"]) -> str:
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
