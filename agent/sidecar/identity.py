"""Who the proxy is to the control plane: node id, node.cluster, locality and node metadata, as
Istio's bootstrap computes them (https://github.com/istio/istio/blob/master/pkg/bootstrap/config.go).

Pure functions of a SidecarConfig; no environment, no I/O.
"""
from __future__ import annotations

from typing import Any

from agent import __version__
from agent.sidecar.config_model import SidecarConfig

_APP_LABELS = ("app", "app.kubernetes.io/name", "service.istio.io/canonical-name")
_CANONICAL_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")


def node_id(cfg: SidecarConfig) -> str:
    """`<type>~<first IP>~<POD_NAME>.<POD_NAMESPACE>~<domain>`; istiod takes the first IP as the pod IP."""
    first_ip = cfg.instance_ips[0] if cfg.instance_ips else ""
    return "~".join((cfg.proxy_type, first_ip, f"{cfg.pod_name}.{cfg.pod_namespace}", cfg.domain))


def _workload_name(cfg: SidecarConfig) -> str:
    return str(cfg.meta_env.get("WORKLOAD_NAME", ""))


def _canonical_name(cfg: SidecarConfig) -> str:
    labels = _labels(cfg)
    for label in _CANONICAL_LABELS:
        if labels.get(label):
            return labels[label]
    return _workload_name(cfg) or "istio-proxy"


def service_cluster(cfg: SidecarConfig) -> str:
    """Envoy node.cluster: by ProxyConfig.tracingServiceName (canonical name, with or without the
    namespace); else an explicit --serviceCluster; else `<app label or WORKLOAD_NAME>.<namespace>`."""
    ns = cfg.pod_namespace
    mode = str(cfg.proxy_config.get("tracingServiceName") or "")
    if mode == "CANONICAL_NAME_ONLY":
        return _canonical_name(cfg)
    if mode == "CANONICAL_NAME_AND_NAMESPACE":
        return f"{_canonical_name(cfg)}.{ns}" if ns else _canonical_name(cfg)
    if not mode and cfg.service_cluster and cfg.service_cluster != "istio-proxy":
        return cfg.service_cluster
    labels = _labels(cfg)
    for label in _APP_LABELS:
        if labels.get(label):
            return f"{labels[label]}.{ns}"
    if _workload_name(cfg):
        return f"{_workload_name(cfg)}.{ns}"
    return f"istio-proxy.{ns}" if ns else "istio-proxy"


def locality(cfg: SidecarConfig) -> dict[str, str]:
    """From the `istio-locality` label (`region.zone.subzone`); empty parts omitted."""
    text = cfg.labels.get("istio-locality", "").replace(".", "/")
    parts = (text.split("/") + ["", "", ""])[:3] if text else ["", "", ""]
    return {k: v for k, v in zip(("region", "zone", "sub_zone"), parts) if v}


def pilot_san(cfg: SidecarConfig) -> list[str]:
    """PILOT_SAN: the istiod name Envoy checks in the server certificate, only for MUTUAL_TLS."""
    return [cfg.istiod_san] if cfg.control_plane_auth_policy == "MUTUAL_TLS" and not cfg.standalone else []


def _labels(cfg: SidecarConfig) -> dict[str, str]:
    static = cfg.meta_env.get("STATIC_LABELS") or cfg.meta_env.get("LABELS") or {}
    labels = {**(static if isinstance(static, dict) else {}), **cfg.labels}
    labels.pop("pod-template-hash", None)
    if "istio-locality" in labels:
        labels["istio-locality"] = labels["istio-locality"].replace(".", "/")
    return labels


def node_metadata(cfg: SidecarConfig, version: str = __version__) -> dict[str, Any]:
    """The raw ISTIO_META_* / ISTIO_METAJSON_* entries first, then the typed keys (which always win,
    except that an empty one is left out, Go's omitempty)."""
    meta: dict[str, Any] = dict(cfg.meta_env)
    typed: dict[str, Any] = {
        "ISTIO_VERSION": str(cfg.meta_env.get("ISTIO_VERSION") or version),
        "INSTANCE_IPS": ",".join(dict.fromkeys(cfg.instance_ips)),
        "ENVOY_STATUS_PORT": cfg.envoy_status_port,
        "ENVOY_PROMETHEUS_PORT": cfg.envoy_prometheus_port,
        "EXIT_ON_ZERO_ACTIVE_CONNECTIONS": _str_bool(cfg.exit_on_zero_active_connections),
        "ENVOY_SKIP_DEPRECATED_LOGS": _str_bool(cfg.skip_deprecated_logs),
        "PROXY_CONFIG": cfg.proxy_config,
        "NAME": cfg.pod_name,
        "NAMESPACE": cfg.pod_namespace,
        "SERVICE_ACCOUNT": cfg.service_account,
        "STS_PORT": str(cfg.sts_port) if cfg.sts_port else "",
        "OUTLIER_LOG_PATH": cfg.outlier_log_path,
        "PILOT_SAN": pilot_san(cfg),
        "LABELS": _labels(cfg),
        "ANNOTATIONS": dict(cfg.annotations),
    }
    for key, value in typed.items():
        if value == "" or value == [] or (value == {} and key in meta):
            continue  # Go's omitempty; LABELS from ISTIO_METAJSON_LABELS survive absent pod files
        meta[key] = value
    return meta


def _str_bool(value: bool) -> str:
    return "true" if value else "false"
