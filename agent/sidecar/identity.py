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
    labels = _merged_labels(cfg)
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
    labels = _merged_labels(cfg)
    for label in _APP_LABELS:
        if labels.get(label):
            return f"{labels[label]}.{ns}"
    if _workload_name(cfg):
        return f"{_workload_name(cfg)}.{ns}"
    return f"istio-proxy.{ns}" if ns else "istio-proxy"


def locality_label(cfg: SidecarConfig) -> str:
    """`topology.istio.io/locality`, else the legacy `istio-locality`; dots become slashes (Kubernetes
    label values cannot hold `/`) unless the value already has one (Istio's SanitizeLocalityLabel)."""
    labels = _merged_labels(cfg)
    text = labels.get("topology.istio.io/locality", labels.get("istio-locality", ""))
    return text if "/" in text else text.replace(".", "/")


def locality(cfg: SidecarConfig) -> dict[str, str]:
    """node.locality from the locality label, `region/zone/subzone`, empty parts left out. (Istio
    asks the cloud platform's metadata server when there is no label; this agent does not.)"""
    parts = locality_label(cfg).split("/")[:3] if locality_label(cfg) else []
    return {k: v for k, v in zip(("region", "zone", "sub_zone"), parts) if v}


def pilot_san(cfg: SidecarConfig) -> list[str]:
    """PILOT_SAN: the istiod name Envoy checks in the server certificate, only for MUTUAL_TLS."""
    return [cfg.istiod_san] if cfg.control_plane_auth_policy == "MUTUAL_TLS" and not cfg.standalone else []


def _merged_labels(cfg: SidecarConfig) -> dict[str, str]:
    """The static labels (ISTIO_METAJSON_LABELS), then the pod's labels file over them, without
    `pod-template-hash` (a Deployment's, changing with every rollout)."""
    labels = dict(cfg.static_labels)
    labels.update((k, v) for k, v in cfg.labels.items() if k != "pod-template-hash")
    return labels


def _labels(cfg: SidecarConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(LABELS, STATIC_LABELS) as Istio writes them: the locality label with slashes. Without a pod
    labels file Istio's two maps are one object, so STATIC_LABELS shows the slashes too."""
    labels, static = _merged_labels(cfg), dict(cfg.static_labels)
    if loc := locality_label(cfg):
        labels["istio-locality"] = loc
        if not cfg.labels:
            static = labels
    return labels, static


def node_metadata(cfg: SidecarConfig, version: str = __version__) -> dict[str, Any]:
    """The raw metadata (ISTIO_META_*, the keys of ISTIO_METAJSON_* objects) first, then the typed keys
    of Istio's BootstrapNodeMetadata (https://github.com/istio/istio/blob/master/pkg/model/proxy.go),
    which win. A typed key that is empty, zero or false is left out (Go's omitempty), so a raw value
    of that name, if any, stays."""
    meta: dict[str, Any] = dict(cfg.meta_env)
    labels, static = _labels(cfg)
    typed: dict[str, Any] = {
        "ISTIO_VERSION": str(cfg.meta_env.get("ISTIO_VERSION") or version),
        "INSTANCE_IPS": ",".join(dict.fromkeys(cfg.instance_ips)),
        "STS_PORT": str(cfg.sts_port) if cfg.sts_port else "",
        "ENVOY_STATUS_PORT": cfg.envoy_status_port,
        "ENVOY_PROMETHEUS_PORT": cfg.envoy_prometheus_port,
        "ENVOY_SECURE_METRICS_PORT": cfg.secure_metrics_port,
        "ENVOY_SECURE_MERGED_METRICS_PORT": cfg.secure_merged_metrics_port,
        "EXIT_ON_ZERO_ACTIVE_CONNECTIONS": _str_bool(cfg.exit_on_zero_active_connections),
        # A pointer in Istio's struct: always written, "false" included.
        "METADATA_DISCOVERY": "true" if cfg.metadata_discovery else "false",
        "ENVOY_SKIP_DEPRECATED_LOGS": _str_bool(cfg.skip_deprecated_logs),
        "WORKLOAD_IDENTITY_SOCKET_FILE": cfg.workload_identity_socket_file,
        "PROXY_CONFIG": cfg.proxy_config,
        "NAME": cfg.pod_name,
        "NAMESPACE": cfg.pod_namespace,
        "SERVICE_ACCOUNT": cfg.service_account,
        "LABELS": labels,
        "STATIC_LABELS": static,
        "ANNOTATIONS": {**_raw_map(cfg.meta_env.get("ANNOTATIONS")), **cfg.annotations},
        "PILOT_SAN": pilot_san(cfg),
        "OUTLIER_LOG_PATH": cfg.outlier_log_path,
    }
    for key, value in typed.items():
        if value not in ("", 0, [], {}, None):
            meta[key] = value
    return meta


def _raw_map(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _str_bool(value: bool) -> str | None:
    """Istio's StringBool with omitempty: "true", or left out."""
    return "true" if value else None
