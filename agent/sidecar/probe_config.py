"""ISTIO_KUBE_APP_PROBERS: the app probes the injector moved from the pod spec into the agent (pure).

The injector rewrites each container's httpGet/tcpSocket/grpc probe to `/app-health/<container>/
<livez|readyz|startupz>` on the status port and passes the originals as JSON
(https://github.com/istio/istio/blob/master/pkg/kube/inject/app_probe.go). They are validated
before Envoy is spawned: a bad entry is one start-up error naming the variable.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PATH_RE = re.compile(r"^/(app-health|app-lifecycle)/[^/]+/(livez|readyz|startupz|prestopz|poststartz)$")


class ProbeConfigError(ValueError):
    """A malformed ISTIO_KUBE_APP_PROBERS entry; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Prober:
    kind: str  # "http", "tcp" or "grpc"
    port: int
    path: str = "/"
    scheme: str = "http"
    timeout: float = 1.0  # 0 = no timeout
    service: str = ""  # gRPC health service name


def _port(key: str, spec: Mapping[str, Any]) -> int:
    port = spec.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: the port must be int type, got {port!r}")
    return port


def _timeout(key: str, value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: timeoutSeconds must be a number, got {value!r}")
    return float(value)


def parse_probers(probers: Mapping[str, Any]) -> dict[str, Prober]:
    """The decoded ISTIO_KUBE_APP_PROBERS object -> {path: Prober}. Raises ProbeConfigError."""
    out: dict[str, Prober] = {}
    if not isinstance(probers, Mapping):
        raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: expected an object, got {probers!r}")
    for key, probe in probers.items():
        if not isinstance(key, str) or not PATH_RE.match(key):
            raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: invalid path {key!r}")
        kinds = [k for k in ("httpGet", "tcpSocket", "grpc") if isinstance(probe, Mapping) and probe.get(k) is not None]
        if len(kinds) != 1:
            raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: invalid prober type, "
                                   "must be one of type httpGet, tcpSocket or gRPC")
        spec = probe[kinds[0]]
        if not isinstance(spec, Mapping):
            raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: {kinds[0]} must be an object, got {spec!r}")
        timeout = _timeout(key, probe.get("timeoutSeconds"))
        if kinds[0] == "httpGet":
            path = str(spec.get("path") or "/")
            out[key] = Prober("http", _port(key, spec), path if path.startswith("/") else "/" + path,
                              str(spec.get("scheme") or "HTTP").lower(), timeout)
        elif kinds[0] == "tcpSocket":
            out[key] = Prober("tcp", _port(key, spec), timeout=timeout)
        else:
            out[key] = Prober("grpc", _port(key, spec), timeout=timeout, service=str(spec.get("service") or ""))
    return out
