"""Issue 3's 2020 injected command line, pointed at the test ADS control plane (tests/support/ads.py) inside a netns:
readiness is 503 (config not received) while the control plane holds back, 200 once it serves a
listener and a cluster, and the served listener carries traffic. Then SIGTERM drains and exits 0."""
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.agent import APP, BASE_ENV, Agent, curl
from tests.support.process import PILOT_AGENT, PY, REPO, wait_until

LINE_2020 = ("--domain ns1.svc.cluster.local --binaryPath /usr/local/bin/envoy --serviceCluster productpage.ns1 "
             "--drainDuration 45s --parentShutdownDuration 1m0s --discoveryAddress 127.0.0.1:15010 "
             "--zipkinAddress zipkin.istio-system:9411 --proxyLogLevel=warning --proxyComponentLogLevel=misc:error "
             "--connectTimeout 10s --proxyAdminPort 15000 --concurrency 2 --controlPlaneAuthPolicy NONE "
             "--dnsRefreshRate 300s --statusPort 15020 --trust-domain=cluster.local --controlPlaneBootstrap=false").split()
POD_ENV = {"POD_NAME": "productpage-v1-7f9c", "POD_NAMESPACE": "ns1", "INSTANCE_IP": "127.0.0.1",
           "SERVICE_ACCOUNT": "bookinfo-productpage", "ISTIO_META_CLUSTER_ID": "Kubernetes",
           "TERMINATION_DRAIN_DURATION_SECONDS": "1", "ISTIO_DELTA_XDS": "false"}  # the test ADS server: SotW only


def test_readiness_follows_the_control_plane(netns_factory):
    ns = netns_factory("sra")
    work = Path(tempfile.mkdtemp(prefix="sidecar-rt-"))
    try:
        ns.spawn([PY, APP, "--http", "8080"], wait_ready=True)
        ads = subprocess.Popen(ns.argv([PY, "-m", "tests.support.ads", "--port", "15010"]), cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=BASE_ENV)
        ns.procs.append(ads)
        assert ads.stdout.readline().strip() == "ready"
        agent = Agent.start(ns, work, *LINE_2020, env=POD_ENV, standalone=False)
        wait_until(lambda: "status server listening" in agent.log(), 30, what="status server up")
        time.sleep(1.0)  # Envoy is up and connected to the held-back control plane by now
        assert agent.ready() == 503
        assert "Envoy proxy is NOT ready: config not received from XDS server (is Istiod running?)" in agent.log()
        waited = ns.run([PILOT_AGENT, "wait", "--timeoutSeconds", "1", "--periodMillis", "200"], env=BASE_ENV, check=False)
        # Envoy opens no listener (not even 15021) before its initial xDS fetch completes.
        assert waited.returncode == 255 and "timeout waiting for Envoy proxy to become ready" in waited.stdout

        ads.stdin.write("release\n")
        ads.stdin.flush()
        assert ads.stdout.readline().strip() == "released"
        wait_until(lambda: agent.ready() == 200, 30, 0.1, "ready after the control plane served")
        waited = ns.run([PILOT_AGENT, "wait", "--timeoutSeconds", "10", "--periodMillis", "100"], env=BASE_ENV, check=False)
        assert waited.returncode == 0 and "Envoy is ready!" in waited.stdout  # through Envoy's 15021
        log = agent.log()
        assert "Readiness succeeded" in log and "Envoy proxy is ready" in log
        for arg in ("--drain-time-s 45", "--component-log-level misc:error", "-l warning", "--concurrency 2"):
            assert arg in log
        assert curl(ns, "http://127.0.0.1:10000/ok") == (200, "app peer=127.0.0.1")  # the ADS listener works
        ready_metric = curl(ns, "http://127.0.0.1:15020/stats/prometheus")[1]
        assert "istio_agent_startup_duration_seconds" in ready_metric

        agent.signal(signal.SIGTERM)
        assert agent.wait_exit(15) == 0
        assert agent.envoy_pids() == []
        assert "drain finished" in agent.log() and "termination drain duration elapsed" in agent.log()
    finally:
        shutil.rmtree(work, ignore_errors=True)
