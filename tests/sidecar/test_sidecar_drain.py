"""Drain on shutdown (readiness fails, inbound listeners drain, after terminationDrainDuration they
are closed once no new connection comes and Envoy is stopped once what they accepted is done) with
real traffic from the remote namespace through Envoy's inbound capture: SIGTERM turns readiness 503
at once, a load that outlasts the window is served to its end, the agent exits 0; a request still
running when the window ends completes while new connections are refused; exit-on-zero mode exits
soon after the last connection closes."""
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.agent import APP, HOLD_CLIENT, LOADGEN, Agent, curl, stat
from tests.support.netns import APP_UID, ISTIO_INIT_ARGS, POD4, PROXY_UID, Pod
from tests.support.process import PY, wait_until


@pytest.fixture(scope="module")
def pod():
    pod = Pod.create(prefix="sd")
    try:
        assert pod.istio_iptables(*ISTIO_INIT_ARGS).returncode == 0
        pod.spawn([PY, APP, "--http", "8080", "--hold", "7070"], uid=APP_UID, wait_ready=True)
        yield pod
    finally:
        pod.close()


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="sidecar-rt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_drain_under_steady_load(pod, work):
    agent = Agent.start(pod.ns, work, "--drainDuration", "2s", "--concurrency", "1", uid=PROXY_UID,
                        env={"INSTANCE_IP": POD4, "TERMINATION_DRAIN_DURATION_SECONDS": "3"})
    agent.wait_ready()
    load = pod.remote.spawn([PY, LOADGEN, POD4, "8080", "--period", "0.02", "--duration", "5"], wait_ready=True)
    time.sleep(1.0)
    sent = time.monotonic()
    agent.signal(signal.SIGTERM)
    first = curl(pod.remote, f"http://{POD4}:15020/healthz/ready", timeout=2)[0]
    flipped = time.monotonic() - sent
    assert first == 503  # the very first probe after the signal fails
    code = agent.wait_exit(15)
    exited = time.monotonic() - sent
    summary = json.loads(load.communicate(timeout=30)[0].strip().splitlines()[-1])
    print(f"\nreadiness 503 after {flipped:.3f}s; exit after {exited:.3f}s; load {summary}")
    assert code == 0
    # Every request of the load (5 s, the signal at 1 s) was served: the inbound listener accepted
    # past drainDuration (2 s: Envoy no longer closes it then, the agent does) and past
    # terminationDrainDuration (3 s: the load still came), and closed once the load had stopped.
    assert list(summary["counts"]) == ["ok"] and summary["counts"]["ok"] > 100, summary
    assert "termination drain duration elapsed; no new connection for 0.1s; no accepted request in flight" in agent.log()
    assert agent.envoy_pids() == []


def test_a_request_running_when_the_window_ends_completes(pod, work):
    """terminationDrainDuration (1 s) shorter than the request (5 s) and than drainDuration (45 s):
    at the end of the window the inbound listener closes and Envoy runs on until the request is done."""
    agent = Agent.start(pod.ns, work, "--concurrency", "1", uid=PROXY_UID,
                        env={"INSTANCE_IP": POD4, "TERMINATION_DRAIN_DURATION_SECONDS": "1"})
    agent.wait_ready()
    slow = subprocess.Popen(pod.remote.argv(["curl", "-s", "--noproxy", "*", "-w", "\n%{http_code}", "--max-time", "30",
                                             f"http://{POD4}:8080/slow"]), stdout=subprocess.PIPE, text=True)
    pod.remote.procs.append(slow)
    wait_until(lambda: (stat(pod.ns, "cluster.InboundPassthroughCluster;.upstream_cx_active") or 0) == 1, 10,
               0.05, "the slow request accepted through Envoy")
    agent.signal(signal.SIGTERM)
    wait_until(lambda: "listeners closed" in agent.log(), 10, 0.05, "the inbound listener closed")
    assert curl(pod.remote, f"http://{POD4}:8080/ok", timeout=2)[0] == 0  # nothing new is accepted
    assert agent.proc.poll() is None and agent.envoy_pids() != []  # Envoy still serves the request
    out, _ = slow.communicate(timeout=30)
    assert out == "slow\n\n200"  # the body, then curl's status line
    assert agent.wait_exit(15) == 0
    assert "termination drain duration elapsed; no new connection for 0.1s; no accepted request in flight" in agent.log()
    assert agent.envoy_pids() == []


def test_exit_on_zero_active_connections(pod, work):
    agent = Agent.start(pod.ns, work, "--concurrency", "1", uid=PROXY_UID, env={
        "INSTANCE_IP": POD4, "EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "true", "MINIMUM_DRAIN_DURATION": "1s",
        "TERMINATION_DRAIN_DURATION_SECONDS": "1"})
    agent.wait_ready()
    held = subprocess.Popen(pod.remote.argv([PY, HOLD_CLIENT, POD4, "7070"]), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    pod.remote.procs.append(held)
    assert held.stdout.readline().strip() == "connected held"  # through Envoy's inbound listener
    agent.signal(signal.SIGTERM)
    time.sleep(3.0)  # past MINIMUM_DRAIN_DURATION and terminationDrainDuration: still one connection
    assert agent.proc.poll() is None, agent.log()
    closed = time.monotonic()
    held.stdin.close()
    assert held.stdout.readline().strip() == "closed"
    code = agent.wait_exit(15)
    print(f"\nexit-on-zero: exit {time.monotonic() - closed:.3f}s after the last connection closed")
    assert code == 0
    assert "zero active connections" in agent.log()
