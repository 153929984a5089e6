"""Real Envoy, started with the agent's control-plane bootstrap (controlPlaneAuthPolicy NONE) with its
xds-grpc pointed at the test ADS server, stays unready while the server holds back, then receives and uses a listener
and a cluster. Also: NACK handling and a 1,000-cluster push."""
import asyncio
import http.server
import socket
import threading
import time

import pytest

from agent.sidecar import identity
from tests.support.ads import CLUSTER, LISTENER, AdsServer, many_clusters, static_cluster, tcp_listener
from tests.support.process import free_port, wait_until
from tests.xds.envoy_proc import control_plane_config, dynamic_listener_names, http_get, running_envoy, stat


@pytest.fixture
def backend():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"hello from the backend\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_envoy_gets_listener_and_cluster_over_ads(tmp_path, backend):
    front = free_port()
    with AdsServer(hold=True) as ads:
        ads.set(clusters=[static_cluster("backend", "127.0.0.1", backend)],
                listeners=[tcp_listener("front", "127.0.0.1", front, "backend")])
        cfg = control_plane_config(tmp_path, ads.port)
        admin = f"http://127.0.0.1:{cfg.admin_port}"
        with running_envoy(cfg, tmp_path / "envoy.log", ads.port):
            first = ads.wait_connected()
            assert first.type_url == CLUSTER and first.node_id == identity.node_id(cfg)
            time.sleep(0.5)
            # Held back: Envoy waits for its initial CDS/LDS (initial_fetch_timeout 0s), so not LIVE.
            assert http_get(f"{admin}/ready")[0] == 503
            assert "front" not in dynamic_listener_names(admin)

            ads.release()
            ads.wait_acked(CLUSTER)
            ads.wait_acked(LISTENER)
            wait_until(lambda: http_get(f"{admin}/ready") == (200, "LIVE\n"), 30, what="Envoy LIVE")
            assert "front" in dynamic_listener_names(admin)
            assert "front::127.0.0.1:%d" % front in http_get(f"{admin}/listeners")[1]
            # And it carries traffic: front listener -> backend cluster -> the real HTTP server.
            assert http_get(f"http://127.0.0.1:{front}/") == (200, "hello from the backend\n")
            assert stat(admin, "cluster_manager.cds.update_success") >= 1
            assert stat(admin, "listener_manager.lds.update_success") >= 1


def test_nack_is_recorded_and_the_good_config_stays(tmp_path, backend):
    front = free_port()
    with AdsServer() as ads:
        good = ads.set(clusters=[static_cluster("backend", "127.0.0.1", backend)],
                       listeners=[tcp_listener("front", "127.0.0.1", front, "backend")])
        cfg = control_plane_config(tmp_path, ads.port)
        with running_envoy(cfg, tmp_path / "envoy.log", ads.port):
            ads.wait_acked(LISTENER, good)
            bad = static_cluster("bad", "127.0.0.1", 9)
            bad["lb_policy"] = "CLUSTER_PROVIDED"  # only valid for ORIGINAL_DST clusters
            # SotW: the snapshot is the whole set, so it keeps "backend"; Envoy rejects only "bad".
            ads.set(clusters=[static_cluster("backend", "127.0.0.1", backend), bad])
            nack = ads.wait_nacked(CLUSTER)
            assert nack.version == good and nack.error
            assert http_get(f"http://127.0.0.1:{front}/")[0] == 200


def test_thousand_clusters(tmp_path):
    with AdsServer() as ads:
        ads.set(clusters=[], listeners=[])
        cfg = control_plane_config(tmp_path, ads.port)
        admin = f"http://127.0.0.1:{cfg.admin_port}"
        with running_envoy(cfg, tmp_path / "envoy.log", ads.port):
            ads.wait_acked(LISTENER)
            static = stat(admin, "cluster_manager.active_clusters")
            start = time.monotonic()
            version = ads.set(clusters=many_clusters(1000))
            ads.wait_acked(CLUSTER, version, timeout=60)
            wait_until(lambda: stat(admin, "cluster_manager.active_clusters") == static + 1000, 60, what="1000 clusters")
            print(f"\n1000 clusters pushed and active in {time.monotonic() - start:.2f}s")


def test_server_stops_cleanly_with_open_streams(tmp_path):
    ads = AdsServer().start()
    cfg = control_plane_config(tmp_path, ads.port)
    with running_envoy(cfg, tmp_path / "envoy.log", ads.port):
        ads.wait_connected()
        ads.stop()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ads.port), timeout=1).close()


@pytest.mark.parametrize("san, connects", [("istiod.istio-system.svc", True), ("someone-else.example", False)])
async def test_mutual_tls_verifies_root_and_istiod_san(tmp_path, san, connects):
    """controlPlaneAuthPolicy MUTUAL_TLS: Envoy's ADS goes through the agent's xDS proxy, which dials the
    control plane over TLS, trusting the mounted root certificate and accepting only a server
    certificate for the istiod SAN."""
    from agent.mesh.upstream import AuthPolicy, UpstreamOptions
    from agent.mesh.xds_proxy import XdsProxy, XdsProxyOptions
    from tests.xds.certs import make_pki

    pki = make_pki(tmp_path / "pki", san=san)
    tls = (pki["cert"].read_bytes(), pki["key"].read_bytes())
    with AdsServer(tls=tls) as ads:
        ads.set(clusters=[], listeners=[])
        cfg = control_plane_config(tmp_path, ads.port, ["--controlPlaneAuthPolicy", "MUTUAL_TLS"],
                                   env={"XDS_ROOT_CA": str(pki["root"]), "ISTIOD_SAN": "istiod.istio-system.svc"})
        assert cfg.control_plane_auth_policy == "MUTUAL_TLS"
        proxy = XdsProxy(UpstreamOptions(address=f"127.0.0.1:{ads.port}", auth_policy=AuthPolicy.MUTUAL_TLS,
                                         root_cert_path=cfg.xds_root_cert, istiod_san=cfg.istiod_san, token_path=None),
                         XdsProxyOptions(socket_path=cfg.xds_socket_path))
        await proxy.start()
        admin = f"http://127.0.0.1:{cfg.admin_port}"
        try:
            with running_envoy(cfg, tmp_path / "envoy.log"):
                if connects:
                    await asyncio.to_thread(ads.wait_acked, LISTENER)
                    await asyncio.to_thread(wait_until, lambda: http_get(f"{admin}/ready")[0] == 200, 30,
                                            what="Envoy LIVE")
                else:
                    with pytest.raises(TimeoutError):
                        await asyncio.to_thread(ads.wait_connected, timeout=3)
                    assert http_get(f"{admin}/ready")[0] == 503
                    reason = proxy.unreachable_reason() or ""
                    assert reason.startswith("control plane unreachable:") and "Hostname Verification" in reason, reason
        finally:
            await proxy.stop()
