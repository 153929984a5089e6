"""The Envoy bootstrap: `build_bootstrap(cfg) -> dict` (pure) and `write_bootstrap(cfg, data) -> path`.

Control-plane mode follows Istio's default template
(https://github.com/istio/istio/blob/master/tools/packaging/common/envoy_bootstrap.json) and
pkg/bootstrap (https://github.com/istio/istio/blob/master/pkg/bootstrap/config.go), Istio's layout
since 1.8: `xds-grpc` is a pipe to the agent's xDS proxy at `<configPath>/XDS` (the agent dials
istiod, with TLS and the pod's token), `sds-grpc` a pipe to the agent's SDS server. The 2020 command
line gets the same: its Envoy no longer dials istiod itself.

Standalone mode (beyond Istio) builds a static configuration with no control plane: original-
destination passthrough on 15001 (outbound) and 15006 (inbound, upstream bound to 127.0.0.6), so a
pod with the init container's iptables rules works end to end. `config/envoy-standalone.yaml` is this
builder's output for the default settings (kept in sync by a test).

ISTIO_BOOTSTRAP_OVERRIDE is merged into the dict here (protobuf MergeFrom, what Envoy's
`--config-yaml` does), so the Envoy argv must not pass `--config-yaml` again.
"""
from __future__ import annotations

import json
import os
from typing import Any

from agent import __version__
from agent.sidecar import bootstrap_services, config_bootstrap, identity
from agent.sidecar.bootstrap_parts import (
    admin,
    application_log_config,
    bootstrap_extensions,
    ip_family,
    layered_runtime,
    local_clusters,
    local_listeners,
    overload_manager,
    proto_merge,
    seconds,
    socket_address,
    stats_config,
    xds_type,
)
from agent.sidecar.bootstrap_services import http2_options
from agent.sidecar.config_env import WORKLOAD_IDENTITY_DIR
from agent.sidecar.config_model import SidecarConfig

BOOTSTRAP_FILE = "envoy-rev.json"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"  # the iptables rules RETURN traffic from this source (no loop)


def bootstrap_path(cfg: SidecarConfig) -> str:
    """The file Envoy is started with: customConfigFile as given, else <configPath>/envoy-rev.json."""
    return cfg.custom_config_file or os.path.join(cfg.config_path, BOOTSTRAP_FILE)


def build_bootstrap(cfg: SidecarConfig, version: str = __version__) -> dict[str, Any]:
    """The whole bootstrap as a dict; ISTIO_BOOTSTRAP_OVERRIDE merged last."""
    data = build_standalone(cfg, version) if cfg.standalone else _control_plane(cfg, version)
    if cfg.bootstrap_override:
        data = proto_merge(data, cfg.bootstrap_override)
    return data


def _node(cfg: SidecarConfig, version: str) -> dict[str, Any]:
    return {"id": identity.node_id(cfg), "cluster": identity.service_cluster(cfg),
            "locality": identity.locality(cfg), "metadata": identity.node_metadata(cfg, version)}


def _control_plane(cfg: SidecarConfig, version: str) -> dict[str, Any]:
    xds = _xds_pipe_cluster(cfg)
    clusters = [*local_clusters(cfg), _sds_cluster(cfg), xds, *bootstrap_services.collector_clusters(cfg)]
    if _self_discovery(cfg):
        clusters.append(_local_cluster())
    data: dict[str, Any] = {
        "application_log_config": application_log_config(cfg),
        "node": _node(cfg, version),
        "layered_runtime": layered_runtime(cfg),
        "bootstrap_extensions": bootstrap_extensions(),
    }
    if cfg.stats_flush_interval:
        data["stats_flush_interval"] = seconds(cfg.stats_flush_interval)
    if cfg.stats_eviction_interval:
        data["stats_eviction_interval"] = seconds(cfg.stats_eviction_interval)
    data.update({
        "stats_config": stats_config(cfg),
        "admin": admin(cfg),
        "dynamic_resources": _dynamic_resources(cfg),
        "static_resources": {"clusters": clusters, "listeners": local_listeners(cfg)},
        "overload_manager": overload_manager(cfg),
    })
    if tracer := bootstrap_services.tracing(cfg):
        data["tracing"] = {"http": tracer}
    if sinks := bootstrap_services.stats_sinks(cfg):
        data["stats_sinks"] = sinks
    if manager := _cluster_manager(cfg):
        data["cluster_manager"] = manager
    data["deferred_stat_options"] = {"enable_deferred_creation_stats": True}
    return data


def _self_discovery(cfg: SidecarConfig) -> bool:
    return config_bootstrap.meta_bool(cfg.meta_env.get("ENABLE_SELF_DISCOVERY"))


def _local_cluster() -> dict[str, Any]:
    """ISTIO_META_ENABLE_SELF_DISCOVERY: the workload's own endpoints (EDS over ADS), which Envoy's
    zone-aware load balancing compares with each upstream's."""
    policy = {"name": "envoy.load_balancing_policies.least_request", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        "locality_lb_config": {"zone_aware_lb_config": {"min_cluster_size": "1"}}}}
    return {"name": "local_cluster", "alt_stat_name": "local_cluster;", "type": "EDS", "connect_timeout": "1s",
            "load_balancing_policy": {"policies": [{"typed_extension_config": policy}]},
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"},
                                   "service_name": "local_cluster"}}


def _cluster_manager(cfg: SidecarConfig) -> dict[str, Any] | None:
    """The outlier event log, load reporting (ISTIO_META_LOAD_STATS_CONFIG_JSON, an LRS
    ApiConfigSource) and the local cluster, with clusters created on first use, as Istio renders it
    when any is set."""
    if not cfg.outlier_log_path and cfg.load_stats_config is None and not _self_discovery(cfg):
        return None
    manager: dict[str, Any] = {}
    if _self_discovery(cfg):
        manager["local_cluster_name"] = "local_cluster"
    if cfg.outlier_log_path:
        manager["outlier_detection"] = {"event_log_path": cfg.outlier_log_path}
    if cfg.load_stats_config is not None:
        manager["load_stats_config"] = cfg.load_stats_config
    manager["enable_deferred_cluster_creation"] = True
    return manager


def _dynamic_resources(cfg: SidecarConfig) -> dict[str, Any]:
    source = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    return {
        "lds_config": dict(source),
        "cds_config": dict(source),
        "ads_config": {
            "api_type": xds_type(cfg),
            "set_node_on_first_message_only": True,
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
        },
    }


def _xds_limits() -> dict[str, Any]:
    """No circuit breaking on the control-plane connection; TCP keepalive after 5 idle minutes."""
    limits = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
    return {"circuit_breakers": {"thresholds": [{"priority": p, **limits} for p in ("DEFAULT", "HIGH")]},
            "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}}}


def _pipe_cluster(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "alt_stat_name": f"{name};", "type": "STATIC", "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN", "load_assignment": {"cluster_name": name, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}}]}]}}


def _xds_pipe_cluster(cfg: SidecarConfig) -> dict[str, Any]:
    """ADS to the agent's xDS proxy, `<configPath>/XDS`: no TLS on the local socket, the agent does
    TLS, the token and ClusterID towards istiod. `max_requests_per_connection` at the cluster level
    as Istio writes it (deprecated in Envoy 1.40 for the protocol options' field; Envoy refuses both
    at once), so one stream per connection: a broken stream means a new connection."""
    cluster = _pipe_cluster("xds-grpc", cfg.xds_socket_path)
    cluster.update(_xds_limits())
    cluster["max_requests_per_connection"] = 1
    cluster["typed_extension_protocol_options"] = http2_options()
    return cluster


def _sds_cluster(cfg: SidecarConfig) -> dict[str, Any]:
    """The agent's SDS server (workload certificates), or whatever serves WORKLOAD_IDENTITY_SOCKET_FILE
    (a SPIRE agent); relative to the working directory, as Istio writes it."""
    cluster = _pipe_cluster("sds-grpc", f"{WORKLOAD_IDENTITY_DIR}/{cfg.workload_identity_socket_file}")
    cluster["typed_extension_protocol_options"] = http2_options()
    return cluster


# ---------------------------------------------------------------------------------------------------
# Standalone: static capture listeners, no control plane.


def _passthrough_listener(name: str, wildcard: str, port: int, cluster: str, direction: str) -> dict[str, Any]:
    # traffic_direction, as on Istio's own listeners: the drain on SIGTERM
    # (admin /drain_listeners?inboundonly&graceful) only drains listeners marked INBOUND.
    return {
        "name": name,
        "address": socket_address(wildcard, port),
        "traffic_direction": direction,
        "listener_filters": [{"name": "envoy.filters.listener.original_dst",
                              "typed_config": {"@type": ORIGINAL_DST}}],
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}]}],
    }


def _original_dst_cluster(name: str, timeout: float, bind: str | None = None) -> dict[str, Any]:
    # alt_stat_name "<name>;" as istiod sets on every cluster: Istio's cluster_name tag regex
    # (`^cluster(\.(.+);)`) then yields envoy_cluster_*{cluster_name="PassthroughCluster"}; the admin
    # /stats name is `cluster.PassthroughCluster;.upstream_cx_total`.
    cluster: dict[str, Any] = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                               "connect_timeout": seconds(timeout), "alt_stat_name": f"{name};"}
    if bind:
        cluster["upstream_bind_config"] = {"source_address": {"address": bind, "port_value": 0}}
    return cluster


def build_standalone(cfg: SidecarConfig, version: str = __version__) -> dict[str, Any]:
    """15001 outbound and 15006 inbound original-destination passthrough, plus 15090, 15021 and admin.

    No stats matcher: without Istio's telemetry filters the interesting numbers are Envoy's own
    (`cluster.PassthroughCluster.*`, `cluster.InboundPassthroughCluster.*`, `listener.*`).
    """
    _, wildcard, _ = ip_family(cfg)
    stats = stats_config(cfg)
    stats.pop("stats_matcher")
    listeners = [
        _passthrough_listener("virtualOutbound", wildcard, 15001, "PassthroughCluster", "OUTBOUND"),
        _passthrough_listener("virtualInbound", wildcard, 15006, "InboundPassthroughCluster", "INBOUND"),
        *local_listeners(cfg),
    ]
    clusters = [
        *local_clusters(cfg),
        _original_dst_cluster("PassthroughCluster", cfg.connect_timeout),
        _original_dst_cluster("InboundPassthroughCluster", cfg.connect_timeout, INBOUND_PASSTHROUGH_SOURCE),
    ]
    return {
        "application_log_config": application_log_config(cfg),
        "node": _node(cfg, version),
        "layered_runtime": layered_runtime(cfg),
        "stats_config": stats,
        "admin": admin(cfg),
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "overload_manager": overload_manager(cfg),
    }


# ---------------------------------------------------------------------------------------------------
# Writing.


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_bootstrap(cfg: SidecarConfig, data: dict[str, Any]) -> str:
    """Write <configPath>/envoy-rev.json atomically (temp file in the same directory + rename), and
    the lightstep token file first when there is a lightstep tracer.

    On any error the temp file is removed and no partial envoy-rev.json exists. The directory is
    created 0700, as Istio does.

    The temp file is `.envoy-rev.<pid>.tmp`, created exclusively and never through a symlink (what
    tempfile.mkstemp would give, without importing tempfile, shutil and random before Envoy's spawn);
    a leftover of a crashed agent with the same pid (PID 1 in every container run) is removed first.
    No fsync: the file is rewritten at every start and read at once by the Envoy we spawn (Istio
    does not sync it either); the rename alone keeps readers from a partial file.
    """
    text = render(data)
    os.makedirs(cfg.config_path, mode=0o700, exist_ok=True)
    if cfg.tracer and cfg.tracer.kind == "lightstep":
        _write_lightstep_token(cfg)
    path = os.path.join(cfg.config_path, BOOTSTRAP_FILE)
    tmp = os.path.join(cfg.config_path, f".envoy-rev.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _write_lightstep_token(cfg: SidecarConfig) -> None:
    """<configPath>/lightstep_access_token.txt, as Istio writes it for templates that read the token
    from a file (ours passes it in the tracer's gRPC metadata)."""
    path = bootstrap_services.lightstep_token_path(cfg)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(cfg.tracer.access_token if cfg.tracer else "")
