"""Settings of the bootstrap read from the ProxyConfig, the node metadata and the pod's annotations
(pure): the telemetry collectors (tracer, metrics and access-log services, statsd), histogram buckets
and stats intervals, load reporting, and where the xDS socket can live.

Istio reads them in pkg/bootstrap/config.go
(https://github.com/istio/istio/blob/master/pkg/bootstrap/config.go, getProxyConfigOptions and
getStatsOptions) and renders addresses with option.addressConverter
(https://github.com/istio/istio/blob/master/pkg/bootstrap/option/convert.go): host:port, a host of
`$(HOST_IP)` replaced by the HOST_IP variable (tracer settings come from the mesh config, where the
pod's own variables are not expanded). A bad address is a ConfigError here, where Istio fails to
render the bootstrap.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from agent import flags
from agent.sidecar.config_env import Environment
from agent.sidecar.config_model import RemoteService, TlsSettings, Tracer
from agent.sidecar.config_parse import (
    ConfigError,
    check_host_port,
    is_ip,
    json_data_problem,
    object_field,
    scalar_text,
    shown,
    string_list,
    to_duration,
    to_int,
)

TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")  # protojson also accepts their numbers
TRACERS = ("zipkin", "lightstep", "datadog")
DEFAULT_STATS_FLUSH_INTERVAL = 5.0  # Envoy's, which the eviction interval must be a multiple of
MAX_STATS_FLUSH_INTERVAL = 300.0  # Envoy's bound (exclusive)


def address(setting: str, value: Any, host_ip: str) -> str:
    """host:port, `$(HOST_IP)` replaced when HOST_IP is set; "" when unset."""
    text = scalar_text(setting, value)
    if not text:
        return ""
    host, _, port = text.rpartition(":")
    if host == "$(HOST_IP)" and host_ip:
        text = f"[{host_ip}]:{port}" if ":" in host_ip else f"{host_ip}:{port}"
    if problem := check_host_port(setting, text):
        raise ConfigError(problem)
    return text


def statsd_address(pc: Mapping[str, Any], host_ip: str) -> str:
    """ProxyConfig.statsdUdpAddress. Envoy's statsd sink takes an IP address only (Istio would render
    a host name and Envoy refuse the bootstrap), so a name is refused here, where it is clear."""
    setting = "ProxyConfig.statsdUdpAddress"
    text = address(setting, pc.get("statsdUdpAddress"), host_ip)
    if text and not is_ip(text.rpartition(":")[0].strip("[]")):
        raise ConfigError(f"invalid {setting}: {shown(text)} (Envoy's statsd sink needs an IP address)")
    return text


def tls_settings(setting: str, value: Mapping[str, Any], meta_root: str = "") -> TlsSettings:
    """ClientTLSSettings. SIMPLE and MUTUAL need a root to verify the collector with (caCertificates,
    or the TLS_CLIENT_ROOT_CERT metadata that overrides it): without one Istio renders a validation
    context Envoy refuses, so it is refused here."""
    mode = value.get("mode")
    mode = "DISABLE" if mode is None else mode  # null: unset, as protojson reads it
    if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode < len(TLS_MODES):
        mode = TLS_MODES[mode]
    if mode not in TLS_MODES:
        raise ConfigError(f"invalid {setting}.mode: {shown(mode)} ({', '.join(TLS_MODES)})")
    text = {k: scalar_text(f"{setting}.{k}", value.get(k))
            for k in ("clientCertificate", "privateKey", "caCertificates", "sni")}
    if mode in ("SIMPLE", "MUTUAL") and not (text["caCertificates"] or meta_root):
        raise ConfigError(f"invalid {setting}: mode {mode} needs caCertificates (the root to verify the server with)")
    return TlsSettings(mode=mode, client_certificate=text["clientCertificate"], private_key=text["privateKey"],
                       ca_certificates=text["caCertificates"], sni=text["sni"],
                       subject_alt_names=string_list(f"{setting}.subjectAltNames", value.get("subjectAltNames")))


def _keepalive_seconds(setting: str, value: Any) -> int:
    # Envoy's TcpKeepalive takes whole seconds; Istio keeps the Duration's seconds part.
    seconds = to_duration(setting, value) if value not in (None, "") else 0.0
    return int(seconds) if 0 < seconds < 2**32 else 0


def tcp_keepalive(setting: str, value: Mapping[str, Any]) -> dict[str, int]:
    """ConnectionPoolSettings.TCPSettings.TcpKeepalive -> Envoy's TcpKeepalive, set fields only."""
    probes = to_int(f"{setting}.probes", value.get("probes") or 0)
    out = {"keepalive_probes": probes if 0 < probes < 2**32 else 0,
           "keepalive_time": _keepalive_seconds(f"{setting}.time", value.get("time")),
           "keepalive_interval": _keepalive_seconds(f"{setting}.interval", value.get("interval"))}
    return {k: v for k, v in out.items() if v}


def remote_service(setting: str, pc: Mapping[str, Any], name: str, host_ip: str,
                   meta_root: str = "") -> RemoteService | None:
    """ProxyConfig.envoyMetricsService / envoyAccessLogService (RemoteService); None without an address."""
    value = object_field(setting, pc, name)
    where = f"{setting}.{name}"
    addr = address(f"{where}.address", value.get("address"), host_ip)
    if not addr:
        return None
    keepalive = value.get("tcpKeepalive")
    return RemoteService(
        address=addr,
        tls=tls_settings(f"{where}.tlsSettings", object_field(where, value, "tlsSettings"), meta_root),
        tcp_keepalive=None if keepalive is None else tcp_keepalive(
            f"{where}.tcpKeepalive", object_field(where, value, "tcpKeepalive")))


def tracer(pc: Mapping[str, Any], host_ip: str, meta_root: str = "") -> Tracer | None:
    """The first of zipkin, lightstep, datadog that ProxyConfig.tracing sets (a protobuf oneof: at
    most one is set). Stackdriver needs the GCP project from the metadata server, which this agent
    does not query: refused with Istio's message. Other tracers render nothing, as in Istio."""
    tracing = object_field("ProxyConfig", pc, "tracing")
    if "stackdriver" in tracing and tracing["stackdriver"] is not None:
        raise ConfigError("invalid ProxyConfig.tracing: unable to process Stackdriver tracer: missing GCP Project")
    for kind in TRACERS:
        if tracing.get(kind) is None:
            continue
        value = object_field("ProxyConfig.tracing", tracing, kind)
        addr = address(f"ProxyConfig.tracing.{kind}.address", value.get("address"), host_ip)
        if not addr:
            return None
        tls = tls_settings("ProxyConfig.tracing.tlsSettings",
                           object_field("ProxyConfig.tracing", tracing, "tlsSettings"), meta_root)
        token = scalar_text(f"ProxyConfig.tracing.{kind}.accessToken", value.get("accessToken"))
        return Tracer(kind=kind, service=RemoteService(address=addr, tls=tls), access_token=token)
    return None


def histogram_buckets(annotations: Mapping[str, str], warnings: list[str]) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """`sidecar.istio.io/statsHistogramBuckets`: {"<stat prefix>": [bucket, ...]}, sorted by prefix.
    Not such an object: a warning and no buckets, as Istio does."""
    name = "sidecar.istio.io/statsHistogramBuckets"
    if name not in annotations:
        return ()
    try:
        value = json.loads(annotations[name])
    except (ValueError, RecursionError):
        value = None
    # Envoy wants at least one bucket per prefix, each positive and distinct.
    ok = isinstance(value, dict) and all(
        isinstance(v, list) and v and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0 for b in v)
        and len(set(v)) == len(v) for v in value.values())
    if not ok:
        warnings.append(f"ignored annotation {name}: not an object of lists of distinct positive buckets: "
                        f"{shown(annotations[name])}")
        return ()
    return tuple((prefix, tuple(float(b) for b in value[prefix])) for prefix in sorted(value))


def stats_intervals(annotations: Mapping[str, str], warnings: list[str]) -> tuple[float | None, float | None]:
    """(stats_flush_interval, stats_eviction_interval) from `sidecar.istio.io/statsFlushInterval` and
    `.../statsEvictionInterval` (Go durations). Istio ignores, with a warning, one that does not parse
    and an eviction interval that is not a multiple of the flush interval; the eviction interval is
    whole seconds."""
    flush = _duration_note(annotations, "sidecar.istio.io/statsFlushInterval", warnings, MAX_STATS_FLUSH_INTERVAL)
    eviction = _duration_note(annotations, "sidecar.istio.io/statsEvictionInterval", warnings)
    period = flush or DEFAULT_STATS_FLUSH_INTERVAL
    if eviction is not None and round(eviction * 1e9) % round(period * 1e9):
        warnings.append("ignored annotation sidecar.istio.io/statsEvictionInterval: "
                        "not a multiple of the stats flush interval")
        eviction = None
    return flush, (float(int(eviction)) or None) if eviction is not None else None


def _duration_note(annotations: Mapping[str, str], name: str, warnings: list[str],
                   limit: float = 315_576_000_000) -> float | None:
    if name not in annotations:
        return None
    try:
        seconds = flags.parse_duration(annotations[name])
    except (ValueError, OverflowError):
        seconds = -1.0
    # Envoy refuses an interval under 1ms (and a flush interval from 5 minutes); Istio passes it on.
    if not 0.001 <= seconds < limit:
        warnings.append(f"ignored annotation {name}: not a duration from 1ms to {flags.format_duration(limit)}: "
                        f"{shown(annotations[name])}")
        return None
    return seconds


def collectors(pc: Mapping[str, Any], host_ip: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The SidecarConfig fields of the telemetry collectors."""
    root = str(meta.get("TLS_CLIENT_ROOT_CERT") or "")
    return {
        "tracer": tracer(pc, host_ip, root),
        "metrics_service": remote_service("ProxyConfig", pc, "envoyMetricsService", host_ip, root),
        "access_log_service": remote_service("ProxyConfig", pc, "envoyAccessLogService", host_ip, root),
        "statsd_address": statsd_address(pc, host_ip),
    }


def load_stats_config(meta: Mapping[str, Any]) -> dict | None:
    """LOAD_STATS_CONFIG_JSON of the node metadata, a JSON object Istio pastes into the bootstrap's
    cluster_manager.load_stats_config; not an object is an error here rather than a broken bootstrap."""
    text = meta.get("LOAD_STATS_CONFIG_JSON")
    if text is None or text == "":
        return None
    try:
        obj = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict) or json_data_problem(obj):
        raise ConfigError(f"invalid ISTIO_META_LOAD_STATS_CONFIG_JSON: not a JSON object: {shown(text)}")
    return obj


#: sun_path holds 108 bytes, the terminating NUL included.
UNIX_PATH_MAX = 107


def unix_socket_path(setting: str, path: str, cwd: Callable[[], str]) -> str:
    """`path` if a Unix socket can be bound there, else the same file relative to the working
    directory (which Envoy shares with the agent) if that is short enough; else a ConfigError."""
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        return path
    relative = os.path.relpath(path, cwd())
    if len(os.fsencode(relative)) <= UNIX_PATH_MAX:
        return relative
    raise ConfigError(f"invalid {setting}: the socket {shown(path, 200)} is longer than a Unix socket path "
                      f"can be ({UNIX_PATH_MAX} bytes), relative to the working directory too")


def mesh_settings(env: Environment, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The SidecarConfig fields of the SDS socket, peer metadata discovery and compliance policy."""
    discovery = env["PEER_METADATA_DISCOVERY"]
    if discovery is None:  # Istio: the value of ENABLE_HBONE (ambient) when not set explicitly
        discovery = meta_bool(meta.get("ENABLE_HBONE"))
    return {
        "workload_identity_socket_file": env["WORKLOAD_IDENTITY_SOCKET_FILE"],
        "metadata_discovery": discovery,
        "compliance_policy": env["COMPLIANCE_POLICY"],
    }


def meta_bool(value: Any) -> bool:
    """A StringBool of Istio's node metadata ("true", "1", "T", ...); anything else is false."""
    try:
        return flags.parse_bool(str(value)) if value is not None else False
    except ValueError:
        return False
