"""Small pure parsers for sidecar settings; each raises ConfigError naming the setting and value."""
from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from typing import Any

from agent import flags


class ConfigError(ValueError, flags.UsageError):
    """Bad configuration: one line naming each bad setting and its value.

    It is also a flags.UsageError, so an edge that maps UsageError to exit 255 covers both.
    """


#: Go's time.Duration range (what Istio's flags and ProxyConfig durations are converted to): 2562047h47m16.854775807s.
MAX_DURATION = 9223372036.854775807
#: A JSON/YAML value holding more than this many values is refused (a recursive or exploding YAML alias).
MAX_JSON_VALUES = 100_000


def shown(value: Any, limit: int = 80) -> str:
    """A value in an error message: repr (one line, control characters escaped), shortened."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__} too large to show>"
    return _short(text, limit)


def to_duration(setting: str, value: Any) -> float:
    """A ProxyConfig/env duration: a Go duration string, or a number of seconds; finite and in Go's range."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            seconds = flags.parse_duration(str(value))
    except (ValueError, OverflowError):
        raise ConfigError(f"invalid duration for {setting}: {shown(value)}") from None
    if not -MAX_DURATION <= seconds <= MAX_DURATION:  # also refuses NaN
        raise ConfigError(f"invalid duration for {setting}: {shown(value)} (out of range)")
    return seconds


def to_bool(setting: str, value: str) -> bool:
    try:
        return flags.parse_bool(value)
    except ValueError:
        raise ConfigError(f"invalid boolean for {setting}: {shown(value)}") from None


def to_int(setting: str, value: Any) -> int:
    """An integer: an int, a whole finite float (JSON 15000.0) or decimal ASCII text; never a bool."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # False for inf and NaN
        return int(value)
    if isinstance(value, str) and value.isascii():
        try:
            return int(value, 10)
        except ValueError:
            pass
    raise ConfigError(f"invalid integer for {setting}: {shown(value)}")


def scalar_text(setting: str, value: Any) -> str:
    """A string setting from JSON/YAML: None is empty, numbers and booleans are written as JSON does."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"invalid {setting}: expected a string, got {shown(value)}")


def object_field(setting: str, parent: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """parent[name] as an object (absent or null: empty); anything else is a ConfigError."""
    value = parent.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid {setting}.{name}: expected an object, got {shown(value)}")
    return value


def string_list(setting: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ConfigError(f"invalid {setting}: expected a list of strings, got {shown(value)}")
    return tuple(value)


def string_map(setting: str, value: Any) -> dict[str, str]:
    """A map<string, string> field (proxyMetadata, runtimeValues): scalar values written as text."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid {setting}: expected an object, got {shown(value)}")
    return {str(k): scalar_text(f"{setting}.{k}", v) for k, v in value.items()}


def json_data_problem(value: Any) -> str | None:
    """What makes a decoded JSON/YAML value unusable as JSON data, or None: a non-finite number
    (NaN, Infinity, 1e400), a YAML-only type (dates, binary, sets), a non-string key, too many values."""
    stack: list[tuple[str, Any]] = [("", value)]
    count = 0
    while stack:
        path, v = stack.pop()
        count += 1
        if count > MAX_JSON_VALUES:
            return f"more than {MAX_JSON_VALUES} values (recursive or exploding YAML aliases?)"
        where = f" at {_short(path, 60)!r}" if path else ""
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"key {shown(k)}{where} is not a string"
                stack.append((f"{path}.{k}" if path else k, x))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, str) and not v.isascii() and not _is_utf8(v):
            return f"text {shown(v)}{where} is not valid Unicode (a lone surrogate)"
        elif isinstance(v, float) and not math.isfinite(v):
            return f"{shown(v)}{where} is not a finite number"
        elif v is not None and not isinstance(v, (str, int, float)):
            return f"{type(v).__name__} value {shown(v)}{where} is not JSON data"
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_json_data(setting: str, value: Any) -> Any:
    problem = json_data_problem(value)
    if problem:
        raise ConfigError(f"invalid {setting}: {problem}")
    return value


def json_loads(setting: str, text: str, what: str = "not JSON") -> Any:
    """json.loads whose every failure (syntax, nesting depth, huge numbers, NaN) is a ConfigError."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"invalid {setting} ({what}: {detail}): {shown(_short(text))}") from None
    return check_json_data(setting, value)


def parse_structured(setting: str, text: str) -> Any:
    """JSON first (what the injector writes), then YAML; the result is plain, finite JSON data."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        return check_json_data(setting, value)  # valid JSON is never re-read as YAML
    import yaml  # only when someone passes YAML

    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as e:
        # ValueError/TypeError: a YAML scalar that does not construct (`2020-13-01`, `!!float x`)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"invalid {setting} (neither JSON nor YAML: {first}): {_short(text)!r}") from None
    return check_json_data(setting, value)


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
        if key == "proxyMetadata":
            out[key] = {**out.get(key, {}), **string_map("ProxyConfig.proxyMetadata", value)}
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
        except (ValueError, RecursionError):
            value = raw.strip('"')
        out[key.strip()] = value if isinstance(value, str) else raw.strip('"')
    return out


PROBE_KINDS = ("httpGet", "tcpSocket", "grpc")


def parse_app_probers(text: str) -> dict[str, dict]:
    """ISTIO_KUBE_APP_PROBERS: {"/app-health/<container>/livez": {"httpGet": {...}, "timeoutSeconds": 1}}.

    The shape is checked here, before anything starts: an object of probe objects, each handler an
    object, timeoutSeconds a number. (Ports and paths are checked by agent.sidecar.probes.)
    """
    setting = "ISTIO_KUBE_APP_PROBERS"
    if not text.strip():
        return {}
    value = json_loads(setting, text)
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"invalid {setting} (expected an object of probes): {_short(text)!r}")
    for path, probe in value.items():
        if not path.startswith(("/app-health/", "/app-lifecycle/")):  # lifecycle: prestopz, poststartz hooks
            raise ConfigError(f"invalid {setting}: path {shown(path)} does not start with /app-health/ "
                              "or /app-lifecycle/")
        kinds = [k for k in PROBE_KINDS if probe.get(k) is not None]
        if not kinds:
            raise ConfigError(f"invalid {setting}: probe {shown(path)} has no httpGet, tcpSocket or grpc")
        for kind in kinds:
            if not isinstance(probe[kind], dict):
                raise ConfigError(f"invalid {setting}: {shown(path)} {kind}: expected an object, "
                                  f"got {shown(probe[kind])}")
        timeout = probe.get("timeoutSeconds")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout < 0):
            raise ConfigError(f"invalid {setting}: {shown(path)} timeoutSeconds: expected a number >= 0, "
                              f"got {shown(timeout)}")
    return value


def parse_prometheus_annotations(text: str | None) -> dict | None:
    """ISTIO_PROMETHEUS_ANNOTATIONS: {"scrape", "port", "path"} as text; `targets` (a list of objects,
    or that list as a JSON string) decoded. Ports are checked by agent.sidecar.metrics."""
    setting = "ISTIO_PROMETHEUS_ANNOTATIONS"
    if text is None or not text.strip():
        return None
    value = json_loads(setting, text)
    if not isinstance(value, dict):
        raise ConfigError(f"invalid {setting} (expected an object): {_short(text)!r}")
    out: dict[str, Any] = {str(k): str(v) for k, v in value.items() if k != "targets" and v is not None}
    targets = value.get("targets")
    if isinstance(targets, str):
        targets = json_loads(f"{setting} targets", targets)
    if targets and (not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets)):
        raise ConfigError(f"invalid {setting}: targets: expected a list of objects, got {shown(targets)}")
    if targets:
        out["targets"] = targets
    return out


def check_host_port(setting: str, value: str) -> str | None:
    """Istio's ValidateProxyAddress: host:port with a valid host and port 1..65535; None if fine."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 1 <= int(port) <= 65535:
        return f"invalid {setting}: {shown(value)} (want host:port)"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not all(lb and len(lb) <= 63 and lb.isascii() and lb.replace("-", "").isalnum() for lb in labels):
        return f"invalid {setting}: {shown(value)} (bad host)"
    return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


