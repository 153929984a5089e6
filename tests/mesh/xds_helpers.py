"""Shared by the xDS proxy tests: the test istiod, a proxy in front of it, a grpcio client as Envoy."""
from __future__ import annotations

import os
import shutil

import grpc
import grpc.aio
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from agent.mesh import uds
from agent.mesh.protos import nds_pb2
from agent.mesh.upstream import UpstreamOptions
from agent.mesh.xds_proxy import XdsProxy, XdsProxyOptions
from tests.mesh.ca_server import TestPKI
from tests.mesh.istiod import TestIstiod
from tests.mesh.sds_fakes import short_tmp

NODE = base_pb2.Node(id="sidecar~198.18.0.10~productpage-v1.ns1~ns1.svc.cluster.local")


def clusters(*names: str, padding: int = 0) -> list[cluster_pb2.Cluster]:
    return [cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.STATIC, alt_stat_name="x" * padding)
            for n in names]


def name_table() -> nds_pb2.NameTable:
    table = nds_pb2.NameTable()
    table.table["reviews.ns1.svc.cluster.local"].ips.append("198.18.0.20")
    return table


@pytest.fixture(scope="module")
def pki():
    return TestPKI()


@pytest.fixture
def files(pki):
    d = short_tmp("xds")
    pki.write_root(os.path.join(d, "root-cert.pem"))
    with open(os.path.join(d, "istio-token"), "w") as f:
        f.write(pki.token("ns1", "productpage") + "\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def upstream_options(files, istiod, **kw) -> UpstreamOptions:
    kw.setdefault("address", f"localhost:{istiod.port}")
    return UpstreamOptions(root_cert_path=f"{files}/root-cert.pem", token_path=f"{files}/istio-token",
                           cluster_id="Kubernetes", headers=(("X-Tenant", "blue"),), connect_timeout=3, **kw)


@pytest.fixture
async def mesh(pki, files):
    """(istiod, proxy, stub, tables): the proxy asks for NDS; tables collects the callback's NameTables."""
    istiod = await TestIstiod(pki).start()
    tables: list[nds_pb2.NameTable] = []
    proxy = XdsProxy(upstream_options(files, istiod),
                     XdsProxyOptions(socket_path=f"{files}/etc/istio/proxy/XDS", request_name_table=True),
                     on_name_table=tables.append)
    await proxy.start()
    channel = grpc.aio.insecure_channel(uds.grpc_target(proxy.path))
    yield istiod, proxy, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), tables
    await channel.close()
    await proxy.stop(0)
    await istiod.stop()


def sotw(type_url, nonce="", version="", node=False):
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version)
    if node:
        request.node.CopyFrom(NODE)
    return request
