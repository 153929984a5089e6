"""The xDS proxy between a grpcio client (standing in for Envoy) and the test istiod, over real
sockets: a Unix socket downstream, TLS with the bearer JWT upstream."""
from __future__ import annotations

import asyncio
import os

import grpc
import grpc.aio
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from agent.mesh import uds
from agent.mesh.xds_proxy import XdsProxy, XdsProxyOptions
from agent.mesh.xds_relay import HEALTH_TYPE
from tests.mesh.istiod import CLUSTER, LISTENER, NAME_TABLE, TestIstiod
from tests.mesh.streams import Stream, nothing_within
from tests.mesh.xds_helpers import NODE, clusters, files, mesh, name_table, pki, sotw, upstream_options  # noqa: F401 (fixtures)


async def test_sotw_relayed_both_ways_with_credentials_and_nds_kept_local(mesh):
    istiod, proxy, stub, tables = mesh
    istiod.set(CLUSTER, clusters("outbound|9080||reviews.ns1.svc.cluster.local"))
    istiod.set(NAME_TABLE, [name_table()])
    envoy = Stream(stub.StreamAggregatedResources())
    await envoy.write(sotw(CLUSTER, node=True))
    cds = await envoy.read()
    assert cds.type_url == CLUSTER and len(cds.resources) == 1
    (stream,) = istiod.streams
    assert stream.metadata["clusterid"] == "Kubernetes" and stream.metadata["x-tenant"] == "blue"
    assert stream.metadata["authorization"].startswith("Bearer ey") and stream.node_id == NODE.id
    assert proxy.state.connected and proxy.unreachable_reason() is None

    await envoy.write(sotw(CLUSTER, cds.nonce, cds.version_info))
    await istiod.wait_for(lambda: istiod.acks(CLUSTER), what="CDS ACK relayed")
    assert not istiod.requests(NAME_TABLE), "NDS is asked for only after the first LDS request"

    await envoy.write(sotw(LISTENER))
    await istiod.wait_for(lambda: istiod.acks(NAME_TABLE), what="NDS ACK from the proxy")
    kinds = [(s.type_url, s.kind) for s in stream.seen]
    assert kinds.index((LISTENER, "request")) < kinds.index((NAME_TABLE, "request"))
    assert proxy.name_table == name_table() and tables == [name_table()]
    assert await nothing_within(envoy), "the NDS response never reaches Envoy (no LDS resources exist)"

    istiod.set(CLUSTER, clusters("a", "b"))
    pushed = await envoy.read()
    assert pushed.type_url == CLUSTER and len(pushed.resources) == 2
    assert proxy.counters.xds_proxy_responses == 3 and proxy.counters.xds_proxy_requests == 5
    envoy.cancel()
    await istiod.wait_for(lambda: stream.closed, what="upstream stream closed after Envoy left")
    await istiod.wait_for(lambda: proxy.counters.envoy_connection_terminations["cancelled"] == 1)


async def test_delta_relayed_both_ways_and_nds_injected(mesh):
    istiod, proxy, stub, tables = mesh
    istiod.set(CLUSTER, clusters("c1", "c2"))
    istiod.set(NAME_TABLE, [name_table()])
    envoy = Stream(stub.DeltaAggregatedResources())
    await envoy.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=NODE))
    first = await envoy.read()
    assert sorted(r.name for r in first.resources) == ["c1", "c2"]
    await envoy.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce))
    await envoy.write(discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER))
    await istiod.wait_for(lambda: istiod.acks(NAME_TABLE), what="delta NDS ACK")
    assert istiod.acks(CLUSTER) and tables == [name_table()]
    istiod.set(CLUSTER, clusters("c1"))
    removal = await envoy.read()
    assert list(removal.removed_resources) == ["c2"] and not removal.resources
    assert await nothing_within(envoy)
    assert istiod.streams[0].delta
    envoy.cancel()


async def test_error_on_either_side_closes_the_other(mesh):
    istiod, proxy, stub, _ = mesh
    istiod.set(CLUSTER, clusters("c"))
    envoy = Stream(stub.StreamAggregatedResources())
    await envoy.write(sotw(CLUSTER, node=True))
    await envoy.read()
    istiod.fail_streams(grpc.StatusCode.INTERNAL, "istiod exploded")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await envoy.read()
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INTERNAL, "istiod exploded")
    assert proxy.counters.istiod_connection_terminations["error"] == 1
    assert proxy.unreachable_reason() == "control plane unreachable: INTERNAL: istiod exploded"

    envoy = Stream(stub.StreamAggregatedResources())
    await envoy.write(sotw(CLUSTER, node=True))
    await envoy.read()
    assert proxy.unreachable_reason() is None
    upstream_stream = istiod.open_streams()[0]
    await envoy.call.done_writing()  # Envoy ends its side: the istiod stream ends too
    await istiod.wait_for(lambda: upstream_stream.closed, what="upstream closed after Envoy's end")


async def test_istiod_restart_next_envoy_stream_reconnects(mesh):
    istiod, proxy, stub, _ = mesh
    istiod.set(CLUSTER, clusters("c"))
    envoy = Stream(stub.StreamAggregatedResources())
    await envoy.write(sotw(CLUSTER, node=True))
    await envoy.read()
    await istiod.stop()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await envoy.read()
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)

    down = Stream(stub.StreamAggregatedResources())
    await down.write(sotw(CLUSTER, node=True))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await down.read()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details().startswith(f"failed to connect to upstream localhost:{istiod.port}")
    assert proxy.unreachable_reason().startswith("control plane unreachable: failed to connect to upstream")
    assert proxy.counters.istiod_connection_failures == 1

    await istiod.start()  # same port
    again = Stream(stub.StreamAggregatedResources())
    await again.write(sotw(CLUSTER, node=True))
    assert len((await again.read()).resources) == 1
    assert proxy.unreachable_reason() is None and proxy.state.connected
    again.cancel()


async def refused_status(stub) -> tuple[grpc.StatusCode, str]:
    """The status Envoy gets for a refused stream. When istiod's refusal overtakes the proxy's first
    write, grpcio reports INTERNAL "Internal error from Core" instead of istiod's status (a grpcio
    limitation); the next stream then usually sees the real one."""
    for _ in range(10):
        envoy = Stream(stub.StreamAggregatedResources())
        await envoy.write(sotw(CLUSTER, node=True))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await envoy.read()
        if e.value.details() != "Internal error from Core":
            return e.value.code(), e.value.details()
    raise AssertionError("istiod's refusal never reached Envoy")


async def test_stream_without_valid_token_is_refused(mesh, files, pki):
    istiod, proxy, stub, _ = mesh
    with open(f"{files}/istio-token", "w") as f:
        f.write(pki.token("ns1", "productpage", audience="someone-else"))
    code, details = await refused_status(stub)
    assert code == grpc.StatusCode.UNAUTHENTICATED and details.startswith("authentication failure")
    assert "UNAUTHENTICATED" in proxy.unreachable_reason() and not istiod.streams
    assert istiod.refused[-1] == "Audience doesn't match"

    os.remove(f"{files}/istio-token")  # no token at all: refused the same way
    assert (await refused_status(stub))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert istiod.refused[-1] == "no bearer token"


async def test_health_after_first_lds_and_foreign_types_dropped(mesh):
    istiod, proxy, stub, _ = mesh
    istiod.set("type.googleapis.com/istio.mesh.v1alpha1.MeshConfig", [name_table()])
    envoy = Stream(stub.StreamAggregatedResources())
    proxy.send_health(False, "app not ready")
    await envoy.write(sotw("type.googleapis.com/istio.mesh.v1alpha1.MeshConfig", node=True))
    await istiod.wait_for(lambda: istiod.responses_sent == 1)
    assert await nothing_within(envoy), "a non-Envoy type is not forwarded"
    assert not istiod.requests(HEALTH_TYPE), "no health report before the first LDS request"
    await envoy.write(sotw(LISTENER))
    (health,) = await istiod.wait_for(lambda: istiod.requests(HEALTH_TYPE), what="health report")
    assert health.request.error_detail.code == 13 and health.request.error_detail.message == "app not ready"
    proxy.send_health(True)
    await istiod.wait_for(lambda: len(istiod.requests(HEALTH_TYPE)) == 2)
    assert not istiod.requests(HEALTH_TYPE)[-1].request.HasField("error_detail")
    envoy.cancel()


async def test_slow_envoy_back_pressures_istiod(mesh):
    """Envoy reads nothing while istiod pushes 24 responses of 1 MB: the proxy holds at most a few."""
    istiod, proxy, stub, _ = mesh
    istiod.set(CLUSTER, clusters("c0", padding=1000))
    envoy = stub.StreamAggregatedResources()  # raw call: nothing reads it
    await envoy.write(sotw(CLUSTER, node=True))
    await istiod.wait_for(lambda: istiod.responses_sent == 1)
    for i in range(1, 24):
        istiod.set(CLUSTER, clusters(*(f"c{i}-{j}" for j in range(1000)), padding=1000))
        await asyncio.sleep(0.03)
    await asyncio.sleep(1.0)
    held = istiod.responses_sent
    assert held < 12, f"{held} responses of 1 MB left istiod while Envoy read nothing"
    reader = Stream(envoy)
    latest = str(istiod.versions[CLUSTER])
    while (await reader.read(10)).version_info != latest:
        pass  # they arrive once Envoy reads again, the latest last
    envoy.cancel()

async def test_proxy_config_trust_bundle_and_malformed_nds_is_nacked(pki, files):
    from agent.mesh.protos import proxy_config_pb2
    from agent.mesh.xds_relay import PROXY_CONFIG_TYPE

    bundles: list[list[str]] = []
    async with TestIstiod(pki) as istiod:
        istiod.set(PROXY_CONFIG_TYPE, [proxy_config_pb2.ProxyConfig(ca_certificates_pem=["-----PEM A-----"])])
        istiod.set(NAME_TABLE, [cluster_pb2.Cluster(name="not a name table")])
        proxy = XdsProxy(upstream_options(files, istiod),
                         XdsProxyOptions(socket_path=f"{files}/XDS", request_name_table=True,
                                         request_proxy_config=True), on_trust_bundle=bundles.append)
        await proxy.start()
        async with grpc.aio.insecure_channel(uds.grpc_target(proxy.path)) as channel:
            envoy = Stream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources())
            await envoy.write(discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER, node=NODE))
            await istiod.wait_for(lambda: istiod.acks(PROXY_CONFIG_TYPE), what="PCDS ACK")
            (nack,) = await istiod.wait_for(lambda: istiod.requests(NAME_TABLE, "nack"), what="NDS NACK")
            assert bundles == [["-----PEM A-----"]] and proxy.name_table is None
            assert nack.request.error_detail.code == 13 and nack.request.error_detail.message
            assert await nothing_within(envoy), "neither reaches Envoy"
            envoy.cancel()
        await proxy.stop(0)


async def test_a_newer_envoy_stream_replaces_the_previous_one(mesh):
    istiod, proxy, stub, _ = mesh
    istiod.set(CLUSTER, clusters("c"))
    first = Stream(stub.StreamAggregatedResources())
    await first.write(sotw(CLUSTER, node=True))
    await first.read()
    second = Stream(stub.StreamAggregatedResources())
    await second.write(sotw(CLUSTER, node=True))
    await second.read()
    assert await first.read() is grpc.aio.EOF, "the previous stream is closed (OK) when a newer one registers"
    await istiod.wait_for(lambda: len(istiod.open_streams()) == 1, what="its upstream stream closed too")
    assert proxy.state.connected, "the replaced stream's end does not mark its successor disconnected"
    second.cancel()
