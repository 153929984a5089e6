"""App probes, readiness logging and merged metrics of a real sidecar (Envoy as uid 1337, the init
rules in place) as kubelet and Prometheus see them from another namespace: HTTP, TCP and gRPC apps
in the pod, lifecycle-hook keys as the injector writes them, Istio's ISTIO_PROMETHEUS_ANNOTATIONS
example, a fast poller against the log, prometheus_client's strict OpenMetrics parser.

One agent serves the module; nothing probes it before the first test (the startup duration).
"""
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from prometheus_client import parser as text_parser
from prometheus_client.openmetrics import parser as om_parser

from tests.support.agent import APP, BASE_ENV, Agent, curl
from tests.support.netns import APP_UID, ISTIO_INIT_ARGS, POD4, PROXY_UID, Pod
from tests.support.process import PILOT_AGENT, PY, script, wait_until

PROBE_HOST = "probe.example:9999"
PROBERS = {
    "/app-health/app/livez": {"httpGet": {"path": "/ok", "port": 8080}, "timeoutSeconds": 1},
    "/app-health/app/readyz": {"httpGet": {"path": "/fail", "port": 8080}, "timeoutSeconds": 1},
    "/app-health/hdr/readyz": {"httpGet": {"path": "/headers", "port": 8080, "httpHeaders": [
        {"name": "X-Probe", "value": "1"}, {"name": "Host", "value": PROBE_HOST}]}, "timeoutSeconds": 1},
    # lifecycle hooks as the injector writes them: no timeoutSeconds
    "/app-lifecycle/app/prestopz": {"httpGet": {"path": "/ok", "port": 8080}},
    "/app-lifecycle/app/poststartz": {"tcpSocket": {"port": 7070}},
    "/app-health/grpc/livez": {"grpc": {"port": 9090, "service": "serving-svc"}, "timeoutSeconds": 2},
    "/app-health/grpc/readyz": {"grpc": {"port": 9090, "service": "no-such-svc"}, "timeoutSeconds": 2},
    "/app-health/grpc/startupz": {"grpc": {"port": 9090, "service": "down-svc"}, "timeoutSeconds": 2},
    "/app-health/gone/livez": {"tcpSocket": {"port": 7071}, "timeoutSeconds": 1},
}
ANNOTATIONS = {"scrape": "true", "path": "/metrics", "port": "8080"}  # Istio's own example
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # what Prometheus 2.x sends
POLLER = """
import http.client, sys, time
host, paths, seconds = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
count, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for path in paths:
        conn = http.client.HTTPConnection(host, 15020, timeout=5)
        conn.request("GET", path)
        conn.getresponse().read()
        conn.close()
        count += 1
    time.sleep(0.05)
print(count)
"""


@pytest.fixture(scope="module")
def env():
    pod = Pod.create(prefix="pm")
    work = Path(tempfile.mkdtemp(prefix="sidecar-pm-"))
    try:
        init = pod.istio_iptables(*ISTIO_INIT_ARGS)
        assert init.returncode == 0, init.stderr
        pod.spawn([PY, APP, "--http", "8080", "--hold", "7070"], uid=APP_UID, wait_ready=True)
        pod.spawn([PY, script("sidecar/grpc_app.py"), "--port", "9090"], uid=APP_UID, wait_ready=True)
        agent = Agent.start(pod.ns, work, "--concurrency", "1", uid=PROXY_UID, env={
            "INSTANCE_IP": POD4, "POD_NAME": "app-0", "POD_NAMESPACE": "default",
            "ISTIO_KUBE_APP_PROBERS": json.dumps(PROBERS), "ISTIO_PROMETHEUS_ANNOTATIONS": json.dumps(ANNOTATIONS)})
        # No probe: the agent finds out by itself when it is ready.
        wait_until(lambda: "Readiness succeeded" in agent.log() or agent.proc.poll() is not None, 30, 0.05,
                   "the agent's own readiness")
        yield pod, agent, agent.log()
    finally:
        pod.close()
        shutil.rmtree(work, ignore_errors=True)


def scrape(pod: Pod, accept: str) -> tuple[str, str]:
    out = pod.remote.run(["curl", "-s", "-D", "-", "-H", f"Accept: {accept}",
                          f"http://{POD4}:15020/stats/prometheus"]).stdout
    head, _, body = out.partition("\n\n")  # text mode turned CRLF into LF
    assert head.startswith("HTTP/1.1 200"), head
    ctype = next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("content-type:"))
    return ctype, body


def test_startup_duration_is_the_time_to_ready_not_to_the_first_probe(env):
    pod, agent, log_at_ready = env
    assert "Envoy proxy is ready" not in log_at_ready  # what a probe would have logged: nobody asked yet
    logged = float(re.search(r"Readiness succeeded in [0-9.]+s startup_duration_seconds=([0-9.]+)", log_at_ready)[1])
    assert curl(pod.remote, f"http://{POD4}:15021/healthz/ready")[0] == 200
    _, body = scrape(pod, "text/plain;version=0.0.4")
    gauge = next(s for f in text_parser.text_string_to_metric_families(body) for s in f.samples
                 if s.name == "istio_agent_startup_duration_seconds")
    assert round(gauge.value, 3) == logged
    assert agent.log().count("Envoy proxy is ready") == 1


@pytest.mark.parametrize("path, want_code, want_body", [
    ("/app-health/app/livez", 200, "app peer=127.0.0.6"),
    ("/app-health/app/readyz", 500, "failing on purpose"),
    ("/app-lifecycle/app/prestopz", 200, "app peer=127.0.0.6"),
    ("/app-lifecycle/app/poststartz", 200, ""),
    ("/app-health/grpc/livez", 200, ""),
    ("/app-health/grpc/readyz", 500, "grpc probe failed: health check failed: NOT_FOUND"),
    ("/app-health/grpc/startupz", 500, "grpc probe failed: service unhealthy (responded with NOT_SERVING)"),
    ("/app-health/gone/livez", 500, "tcp probe failed: connection refused"),
    ("/app-health/nope/livez", 400, "app prober config does not exists for /app-health/nope/livez"),
])
def test_app_probes_as_kubelet_sees_them(env, path, want_code, want_body):
    pod, agent, _ = env
    assert curl(pod.remote, f"http://{POD4}:15020{path}", headers={"User-Agent": "kube-probe/1.30"}) == (
        want_code, want_body)


def test_kubelet_headers_reach_the_app_at_the_pod_ip(env):
    """The rewritten probe keeps httpHeaders, so kubelet sends them (Host too): the app gets them,
    each once, at INSTANCE_IP, with nothing of the agent's own but `Connection: close`."""
    pod, agent, _ = env
    code, body = curl(pod.remote, f"http://{POD4}:15020/app-health/hdr/readyz",
                      headers={"X-Probe": "1", "Host": PROBE_HOST, "User-Agent": "kube-probe/1.30"})
    assert code == 200
    lines = body.splitlines()
    assert lines[0] == f"local: {POD4}"
    assert sorted(lines[1:]) == sorted([f"Host: {PROBE_HOST}", "X-Probe: 1", "User-Agent: kube-probe/1.30",
                                        "Accept: */*", "Connection: close"])  # Accept: curl's, forwarded


def _probe_lines(agent: Agent) -> list[str]:
    keys = ("Envoy proxy", "app probe", "Prober does not exist", "probes without a prober")
    return [line for line in agent.log().splitlines() if any(k in line for k in keys)]


def test_a_fast_poller_does_not_set_the_log_rate(env):
    """3 s of a 50 ms poller on readiness (ready), a failing probe and an unconfigured path: the log
    says each state once (already said by the tests before), not once per request."""
    pod, agent, _ = env
    paths = ["/healthz/ready", "/app-health/app/readyz", "/app-health/nope/livez", "/app-health/gone/livez"]
    assert all(curl(pod.remote, f"http://{POD4}:15020{p}")[0] for p in paths)  # every state seen once
    before = _probe_lines(agent)
    out = pod.remote.run([PY, "-c", POLLER, POD4, ",".join(paths), "3"], timeout=60).stdout
    requests = int(out)
    new = _probe_lines(agent)[len(before):]
    print(f"\n{requests} requests in 3 s, {len(new)} new probe/readiness log lines")
    assert requests >= 4 * 20 and new == []


def test_merged_metrics_say_openmetrics_and_are_openmetrics(env):
    pod, agent, _ = env
    ctype, body = scrape(pod, PROMETHEUS_ACCEPT)
    assert ctype == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    families = {f.name: f for f in om_parser.text_string_to_metric_families(body)}  # strict: raises if not
    assert families["istio_agent_scrapes"].type == "counter"
    assert families["istio_agent_startup_duration_seconds"].type == "gauge"
    assert families["envoy_server_live"].type == "gauge"
    assert families["app_requests"].type == "counter" and families["app_build"].type == "info"  # the app's own
    assert body.index("istio_agent_scrapes_total") < body.index("envoy_server_live") < body.index("app_requests_total")
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1


def test_merged_metrics_in_text_when_text_is_asked(env):
    pod, agent, _ = env
    ctype, body = scrape(pod, "text/plain;version=0.0.4")
    assert ctype == "text/plain; version=0.0.4; charset=utf-8" and "# EOF" not in body
    families = {f.name: f for f in text_parser.text_string_to_metric_families(body)}
    assert {"istio_agent_scrapes", "envoy_server_live", "app_requests"} <= set(families)
    assert 'istio_agent_scrape_failures_total{type="application"} 0.0' in body


def test_not_ready_is_said_once_while_it_lasts(env):
    """After POST /drain readiness is 503 for good: one line, however fast the poller."""
    pod, agent, _ = env
    cp = pod.ns.run([PILOT_AGENT, "request", "--debug-port", "15020", "POST", "drain"], env=BASE_ENV, check=False)
    assert (cp.returncode, cp.stdout) == (0, "OK")
    before = _probe_lines(agent)
    requests = int(pod.remote.run([PY, "-c", POLLER, POD4, "/healthz/ready", "3"], timeout=60).stdout)
    new = _probe_lines(agent)[len(before):]
    assert requests >= 20 and len(new) == 1 and "Envoy proxy is NOT ready: server is terminated: drain requested" in new[0]
