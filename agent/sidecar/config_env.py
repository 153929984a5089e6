"""Settings that come from the environment, the pod's downward-API files and the ProxyConfig (pure).

Each function takes plain values (an env mapping, the ProxyConfig dict, injected file/path callables)
and raises ConfigError naming the setting on bad input.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

from agent import flags
from agent.sidecar.config_model import DEFAULT_BINARY
from agent.sidecar.config_parse import (
    ConfigError,
    is_ip,
    parse_downward_api,
    parse_structured,
    to_bool,
    to_duration,
    to_int,
)

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


def stats_patterns(pc: Mapping[str, Any], annotations: Mapping[str, str], kind: str) -> tuple[str, ...]:
    """Annotation wins over ProxyConfig.proxyStatsMatcher (no merging), §5.3."""
    note = annotations.get(f"sidecar.istio.io/statsInclusion{kind}")
    if note is not None:
        return tuple(p.strip() for p in note.split(",") if p.strip())
    matcher = pc.get("proxyStatsMatcher") or {}
    return tuple(matcher.get(f"inclusion{kind}") or ())


def extra_stat_tags(pc: Mapping[str, Any], annotations: Mapping[str, str]) -> tuple[str, ...]:
    tags = list(pc.get("extraStatTags") or [])
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
        raise ConfigError(f"invalid port for {name}: {env[name]!r}")
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
        if seconds < 0:
            raise ConfigError(f"invalid TERMINATION_DRAIN_DURATION_SECONDS: {legacy!r}")
        return float(seconds)
    return to_duration("ProxyConfig.terminationDrainDuration", pc.get("terminationDrainDuration", "5s"))


def binary_path(pc: Mapping[str, Any], path_exists: PathExists, find_wheel_envoy: Callable[[], "str | None"]) -> str:
    path = str(pc.get("binaryPath") or "")
    if path == DEFAULT_BINARY and not path_exists(path):
        return find_wheel_envoy() or path
    return path
