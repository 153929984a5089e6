"""The full pod path: istio-iptables with the init container's flags, then the standalone sidecar with
Envoy as uid 1337, an app (uid 1000) in the pod and a remote peer across a veth.

One agent serves the whole module (start-up is the expensive part); the last test ends it.
"""
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.agent import APP, BASE_ENV, Agent, curl, stat
from tests.support.netns import APP_UID, ISTIO_INIT_ARGS, POD4, PROXY_UID, REMOTE4, Pod
from tests.support.process import PILOT_AGENT, PY

PROBERS = {
    "/app-health/app/livez": {"httpGet": {"path": "/ok", "port": 8080}, "timeoutSeconds": 1},
    "/app-health/app/readyz": {"httpGet": {"path": "/fail", "port": 8080}, "timeoutSeconds": 1},
    "/app-health/app/startupz": {"httpGet": {"path": "/slow", "port": 8080}, "timeoutSeconds": 1},
    "/app-health/db/livez": {"tcpSocket": {"port": 7070}, "timeoutSeconds": 1},
    "/app-health/db/readyz": {"tcpSocket": {"port": 7071}, "timeoutSeconds": 1},
}
ANNOTATIONS = {"scrape": "true", "targets": [{"port": "8080", "path": "/metrics"}, {"port": "8081"}]}


@pytest.fixture(scope="module")
def env():
    pod = Pod.create(prefix="sr")
    work = Path(tempfile.mkdtemp(prefix="sidecar-rt-"))
    try:
        init = pod.istio_iptables(*ISTIO_INIT_ARGS)
        assert init.returncode == 0, init.stderr
        pod.spawn([PY, APP, "--http", "8080", "--hold", "7070"], uid=APP_UID, wait_ready=True)
        pod.remote.spawn([PY, APP, "--http", "9090", "--tag", "remote"], wait_ready=True)
        agent = Agent.start(pod.ns, work, "--concurrency", "1", uid=PROXY_UID, env={
            "INSTANCE_IP": POD4, "POD_NAME": "app-0", "POD_NAMESPACE": "default",
            "ISTIO_KUBE_APP_PROBERS": json.dumps(PROBERS), "ISTIO_PROMETHEUS_ANNOTATIONS": json.dumps(ANNOTATIONS)})
        took = agent.wait_ready()
        print(f"\nstandalone sidecar start-to-ready (Envoy as uid 1337, netns): {took:.3f}s")
        yield pod, agent
    finally:
        pod.close()
        shutil.rmtree(work, ignore_errors=True)


def test_envoy_runs_as_proxy_uid_in_its_own_session(env):
    pod, agent = env
    (envoy,) = agent.envoy_pids()
    status = Path(f"/proc/{envoy}/status").read_text()
    assert f"Uid:\t{PROXY_UID}\t" in status
    assert os.getsid(envoy) == envoy
    assert "--concurrency 1" in agent.log() and "--drain-time-s 45" in agent.log()


def test_remote_reaches_app_only_through_inbound_listener(env):
    pod, agent = env
    before = stat(pod.ns, "cluster.InboundPassthroughCluster;.upstream_cx_total") or 0
    code, body = curl(pod.remote, f"http://{POD4}:8080/ok")
    assert (code, body) == (200, "app peer=127.0.0.6")  # Envoy's inbound passthrough binds 127.0.0.6
    assert stat(pod.ns, "cluster.InboundPassthroughCluster;.upstream_cx_total") == before + 1


def test_app_reaches_remote_only_through_outbound_listener(env):
    pod, agent = env
    before = stat(pod.ns, "cluster.PassthroughCluster;.upstream_cx_total") or 0
    code, body = curl(pod.ns, f"http://{REMOTE4}:9090/ok", uid=APP_UID)
    assert (code, body) == (200, f"remote peer={POD4}")
    assert stat(pod.ns, "cluster.PassthroughCluster;.upstream_cx_total") == before + 1


def test_agent_ports_are_not_captured(env):
    pod, agent = env
    before = stat(pod.ns, "cluster.InboundPassthroughCluster;.upstream_cx_total")
    assert curl(pod.remote, f"http://{POD4}:15020/healthz/ready")[0] == 200
    assert curl(pod.remote, f"http://{POD4}:15021/healthz/ready")[0] == 200
    assert "envoy_server_live" in curl(pod.remote, f"http://{POD4}:15090/stats/prometheus")[1]
    # Had 15020 gone through Envoy, the agent would see 127.0.0.6 and accept; it sees the remote: 403.
    assert curl(pod.remote, f"http://{POD4}:15020/quitquitquit", "POST") == (403, "Only requests from localhost are allowed")
    assert stat(pod.ns, "cluster.InboundPassthroughCluster;.upstream_cx_total") == before


@pytest.mark.parametrize("path, want_code, want_body", [
    ("/app-health/app/livez", 200, "app peer=127.0.0.6"),
    ("/app-health/app/readyz", 500, "failing on purpose"),
    ("/app-health/app/startupz", 500, None),  # 5 s handler, 1 s timeout
    ("/app-health/db/livez", 200, ""),
    ("/app-health/db/readyz", 500, None),
    ("/app-health/nope/livez", 400, "app prober config does not exists for /app-health/nope/livez"),
])
def test_app_probes_as_kubelet_sees_them(env, path, want_code, want_body):
    pod, agent = env
    code, body = curl(pod.remote, f"http://{POD4}:15020{path}", headers={"User-Agent": "kube-probe/1.30"})
    assert code == want_code
    if want_body is not None:
        assert body.strip() == want_body


def test_merged_metrics_with_app_up_and_down(env):
    pod, agent = env
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    argv = ["curl", "-s", "-D", "-", "-H", f"Accept: {accept}", f"http://{POD4}:15020/stats/prometheus"]
    out = pod.remote.run(argv).stdout
    head, _, body = out.partition("\n\n")  # text mode turned CRLF into LF
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8" in head.lower()
    assert "istio_agent_scrapes_total" in body, body[:3000]
    assert "envoy_server_live" in body, body[-3000:]
    agent_at, envoy_at, app_at = (body.index("istio_agent_scrapes_total"), body.index("envoy_server_live"),
                                  body.index("app_requests_total 42"))
    assert agent_at < envoy_at < app_at and body.endswith("# EOF\n")
    assert "istio_agent_envoy_process_resident_memory_bytes" in body
    _, again = curl(pod.remote, f"http://{POD4}:15020/metrics")
    assert 'istio_agent_scrape_failures_total{type="application"} 2.0' in again  # 8081: nobody listens
    assert 'istio_agent_scrape_failures_total{type="envoy"} 0.0' in again


def test_wait_and_request_subcommands(env):
    pod, agent = env
    cp = pod.ns.run([PILOT_AGENT, "wait", "--timeoutSeconds", "10", "--periodMillis", "100"], env=BASE_ENV, check=False)
    assert cp.returncode == 0 and "Envoy is ready!" in cp.stdout
    cp = pod.ns.run([PILOT_AGENT, "request", "GET", "server_info"], env=BASE_ENV, check=False)
    assert cp.returncode == 0 and json.loads(cp.stdout)["state"] == "LIVE"
    cp = pod.ns.run([PILOT_AGENT, "request", "GET", "no/such/page"], env=BASE_ENV, check=False)
    assert cp.returncode == 0  # 404 bodies are printed, as Istio does
    cp = pod.ns.run([PILOT_AGENT, "wait", "--timeoutSeconds", "1", "--url", "http://localhost:15020/nope"],
                    env=BASE_ENV, check=False)
    assert cp.returncode == 255 and "Last error: HTTP status code 404" in cp.stdout


def test_quitquitquit_from_loopback_stops_everything(env):
    pod, agent = env
    (envoy,) = agent.envoy_pids()
    started = time.monotonic()
    cp = pod.ns.run([PILOT_AGENT, "request", "--debug-port", "15020", "POST", "quitquitquit"], env=BASE_ENV, check=False)
    assert (cp.returncode, cp.stdout) == (0, "OK")
    assert agent.wait_exit(10) == 0
    print(f"\nquitquitquit to exit: {time.monotonic() - started:.3f}s")
    assert agent.envoy_pids() == []
    assert not (agent.config_path / "envoy-rev.json").exists()
    assert "skipping drain" in agent.log()
