"""The xDS proxy's upstream connection: start-up checks, TLS rules (15012 means TLS), plaintext,
keepalive against a silent istiod, and the test istiod run as a process."""
from __future__ import annotations

import asyncio
import os

import grpc
import grpc.aio
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from agent.mesh import uds, upstream
from agent.mesh.upstream import AuthPolicy, UpstreamOptions
from agent.mesh.xds_proxy import XdsProxy, XdsProxyOptions
from tests.mesh.istiod import CLUSTER, TestIstiod
from tests.mesh.streams import Stream
from tests.mesh.xds_helpers import clusters, files, pki, sotw, upstream_options  # noqa: F401 (fixtures)


async def test_start_up_errors_are_one_line(files, pki):
    opts = UpstreamOptions(root_cert_path=f"{files}/missing.pem")
    with pytest.raises(upstream.UpstreamError, match=f"^root CA file for XDS does not exist {files}/missing.pem$"):
        await XdsProxy(opts, XdsProxyOptions(socket_path=f"{files}/XDS")).start()
    long_path = f"{files}/{'p' * 110}/XDS"
    with pytest.raises(uds.UdsError) as e:
        await XdsProxy(UpstreamOptions(root_cert_path=f"{files}/root-cert.pem"),
                       XdsProxyOptions(socket_path=long_path)).start()
    assert str(e.value) == (f'failed to start xds proxy: xds proxy socket path "{long_path}" is '
                            f"{len(long_path)} bytes; the kernel allows at most 107 (sun_path)")


def test_tls_server_name_and_the_15012_rule():
    assert UpstreamOptions(address="istiod.istio-system.svc:15012", auth_policy=AuthPolicy.NONE).tls
    assert not UpstreamOptions(address="istiod.istio-system.svc:15010", auth_policy=AuthPolicy.NONE).tls
    assert UpstreamOptions(address="10.0.0.1:443").tls
    assert UpstreamOptions(address="localhost:15012").server_name == "istiod.istio-system.svc"
    assert UpstreamOptions(address="10.0.0.1:15012", istiod_san="istiod.x.svc").server_name == "istiod.x.svc"
    assert UpstreamOptions(address="[2001:db8::1]:15012").host == "2001:db8::1"


async def test_plaintext_policy_none_off_15012_sends_the_token_too(pki, files):
    async with TestIstiod(pki, plaintext=True) as istiod:
        istiod.set(CLUSTER, clusters("c"))
        proxy = XdsProxy(upstream_options(files, istiod, address=f"127.0.0.1:{istiod.port}",
                                          auth_policy=AuthPolicy.NONE),
                         XdsProxyOptions(socket_path=f"{files}/XDS"))
        await proxy.start()
        async with grpc.aio.insecure_channel(uds.grpc_target(proxy.path)) as channel:
            envoy = Stream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
            await envoy.write(sotw(CLUSTER, node=True))
            assert len((await envoy.read()).resources) == 1
            assert istiod.streams[0].metadata["authorization"].startswith("Bearer ")
            envoy.cancel()
        await proxy.stop(0)


async def test_port_15012_means_tls_even_with_policy_none(pki, files):
    try:
        istiod = await TestIstiod(pki, port=15012).start()
    except RuntimeError:
        pytest.skip("127.0.0.1:15012 is taken on this host")
    try:
        istiod.set(CLUSTER, clusters("c"))
        proxy = XdsProxy(upstream_options(files, istiod, address="localhost:15012", auth_policy=AuthPolicy.NONE),
                         XdsProxyOptions(socket_path=f"{files}/XDS"))
        await proxy.start()
        async with grpc.aio.insecure_channel(uds.grpc_target(proxy.path)) as channel:
            envoy = Stream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
            await envoy.write(sotw(CLUSTER, node=True))
            assert len((await envoy.read()).resources) == 1, "TLS to 15012 although the policy says NONE"
            envoy.cancel()
        await proxy.stop(0)
    finally:
        await istiod.stop()




class FreezableTcpRelay:
    """127.0.0.1:<port> -> istiod; freeze() stops passing bytes but keeps the connections open, as a
    network partition looks to both ends."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.frozen, self.port = target_port, asyncio.Event(), 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        while data := await reader.read(65536):
            if self.frozen.is_set():
                await asyncio.Event().wait()  # hold forever: nothing passes
            writer.write(data)
            await writer.drain()

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self._server.close()


async def test_keepalive_ends_the_stream_when_istiod_goes_silent(pki, files):
    async with TestIstiod(pki) as istiod:
        istiod.set(CLUSTER, clusters("c"))
        relay = FreezableTcpRelay(istiod.port)
        await relay.start()
        proxy = XdsProxy(upstream_options(files, istiod, address=f"localhost:{relay.port}", keepalive_time=1,
                                          keepalive_timeout=1), XdsProxyOptions(socket_path=f"{files}/XDS"))
        await proxy.start()
        async with grpc.aio.insecure_channel(uds.grpc_target(proxy.path)) as channel:
            envoy = Stream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
            await envoy.write(sotw(CLUSTER, node=True))
            await envoy.read()
            relay.freeze()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await envoy.read(timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
            assert proxy.unreachable_reason() is not None
        await proxy.stop(0)
        relay.close()


async def test_istiod_as_a_process_serves_json_resources_and_pushes_on_sighup(files):
    import json
    import signal
    import subprocess
    import sys

    resources = os.path.join(files, "resources.json")
    cluster = {"name": "c1", "type": "STATIC", "connect_timeout": "1s"}
    with open(resources, "w") as f:
        json.dump({CLUSTER: [cluster]}, f)
    proc = subprocess.Popen([sys.executable, "-m", "tests.mesh.istiod", "--dir", f"{files}/istiod", "--port", "0",
                             "--token", "ns1/productpage", "--resources", resources], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        line = await asyncio.to_thread(proc.stdout.readline)
        port = int(line.split()[1])
        proxy = XdsProxy(UpstreamOptions(address=f"localhost:{port}", root_cert_path=f"{files}/istiod/root-cert.pem",
                                         token_path=f"{files}/istiod/token-ns1-productpage"),
                         XdsProxyOptions(socket_path=f"{files}/XDS"))
        await proxy.start()
        async with grpc.aio.insecure_channel(uds.grpc_target(proxy.path)) as channel:
            envoy = Stream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
            await envoy.write(sotw(CLUSTER, node=True))
            first = await envoy.read()
            assert [cluster_pb2.Cluster.FromString(r.value).name for r in first.resources] == ["c1"]
            with open(resources, "w") as f:
                json.dump({CLUSTER: [cluster, {**cluster, "name": "c2"}]}, f)
            proc.send_signal(signal.SIGHUP)
            assert len((await envoy.read()).resources) == 2
            envoy.cancel()
        await proxy.stop(0)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        proc.kill()
        proc.wait()
