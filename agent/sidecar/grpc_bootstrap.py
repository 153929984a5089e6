"""The gRPC xDS bootstrap for proxyless gRPC (DISABLE_ENVOY): `build(cfg) -> dict` (pure), `write`.

A proxyless gRPC application finds its control plane through the file GRPC_XDS_BOOTSTRAP names.
As Istio's agent writes it (https://github.com/istio/istio/blob/master/pkg/istio-agent/grpcxds/grpc_bootstrap.go):
the xDS server is the agent's xDS proxy socket (plaintext on the pod-local socket; the agent does
TLS and the token towards istiod), the node is the sidecar's node, and, when OUTPUT_CERTS names a
directory, the `default` certificate provider watches the files the agent writes there.
"""
from __future__ import annotations

import json
import os
from typing import Any

from agent.sidecar import identity
from agent.sidecar.config_model import SidecarConfig

#: istiod answers gRPC servers' listener requests under this name (Istio's grpcxds.ServerListenerNamePrefix).
SERVER_LISTENER_TEMPLATE = "xds.istio.io/grpc/lds/inbound/%s"


def build(cfg: SidecarConfig) -> dict[str, Any]:
    socket = os.path.abspath(cfg.xds_socket_path)
    data: dict[str, Any] = {
        "xds_servers": [{"server_uri": f"unix://{socket}", "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3"]}],
        "node": {"id": identity.node_id(cfg), "locality": identity.locality(cfg),
                 "metadata": identity.node_metadata(cfg)},
        "server_listener_resource_name_template": SERVER_LISTENER_TEMPLATE,
    }
    if certs := cfg.mesh.output_certs:
        data["certificate_providers"] = {"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": os.path.join(certs, "cert-chain.pem"),
            "private_key_file": os.path.join(certs, "key.pem"),
            "ca_certificate_file": os.path.join(certs, "root-cert.pem"),
            "refresh_interval": "900s"}}}
    return data


def write(cfg: SidecarConfig, path: str) -> None:
    """Written whole (temp file + rename): the application may read it at any moment."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(build(cfg), f, indent=2)
    os.replace(tmp, path)
