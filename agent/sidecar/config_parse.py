"""Small pure parsers for sidecar settings; each raises ConfigError naming the setting and value."""
from __future__ import annotations

import ipaddress
import json
from typing import Any, Mapping

from agent import flags


class ConfigError(ValueError, flags.UsageError):
    """Bad configuration: one line naming each bad setting and its value.

    It is also a flags.UsageError, so an edge that maps UsageError to exit 255 covers both.
    """


def to_duration(setting: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return flags.parse_duration(str(value))
    except ValueError:
        raise ConfigError(f"invalid duration for {setting}: {value!r}") from None


def to_bool(setting: str, value: str) -> bool:
    try:
        return flags.parse_bool(value)
    except ValueError:
        raise ConfigError(f"invalid boolean for {setting}: {value!r}") from None


def to_int(setting: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid integer for {setting}: {value!r}") from None


def parse_structured(setting: str, text: str) -> Any:
    """JSON first (what the injector writes), then YAML."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml  # only when someone passes YAML

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        raise ConfigError(f"invalid {setting} (neither JSON nor YAML: {first}): {_short(text)!r}") from None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def merge_proxy_config(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Istio's ApplyYAML: fields replace wholesale, except proxyMetadata maps are unioned."""
    out = dict(base)
    for key, value in overlay.items():
        key = _camel(key)
        if key == "proxyMetadata" and isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **{str(k): str(v) for k, v in value.items()}}
        else:
            out[key] = value
    return out


def proxy_config_layer(setting: str, text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    value = parse_structured(setting, text)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"invalid {setting}: expected an object, got {_short(text)!r}")
    return value


def parse_downward_api(text: str) -> dict[str, str]:
    """Kubernetes downward-API file: `key="Go-quoted value"` per line."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, raw = line.partition("=")
        if not eq:
            continue
        raw = raw.strip()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip('"')
        out[key.strip()] = str(value)
    return out


def parse_app_probers(text: str) -> dict[str, dict]:
    """ISTIO_KUBE_APP_PROBERS: {"/app-health/<container>/livez": {"httpGet": {...}, "timeoutSeconds": 1}}."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"invalid ISTIO_KUBE_APP_PROBERS (not JSON: {e}): {_short(text)!r}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"invalid ISTIO_KUBE_APP_PROBERS (expected an object of probes): {_short(text)!r}")
    for path, probe in value.items():
        if not path.startswith("/app-health/"):
            raise ConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: path {path!r} does not start with /app-health/")
        if not any(k in probe for k in ("httpGet", "tcpSocket", "grpc")):
            raise ConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: probe {path!r} has no httpGet, tcpSocket or grpc")
    return value


def parse_prometheus_annotations(text: str | None) -> dict | None:
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS (not JSON): {_short(text)!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS (expected an object): {_short(text)!r}")
    return {str(k): str(v) for k, v in value.items()}


def check_host_port(setting: str, value: str) -> str | None:
    """Istio's ValidateProxyAddress: host:port with a valid host and port 1..65535; None if fine."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"invalid {setting}: {value!r} (want host:port)"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not all(lb and len(lb) <= 63 and lb.replace("-", "").isalnum() for lb in labels):
        return f"invalid {setting}: {value!r} (bad host)"
    return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


