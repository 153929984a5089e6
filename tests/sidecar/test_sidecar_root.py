"""The agent started as root in a pod whose istio-iptables rules exempt only uid/gid 1337: Envoy
runs as 1337 (its upstream connections leave instead of being captured again and looping), keeps
the network capabilities a root start gives and dies with the agent; where uid 1337 cannot reach
Envoy's files, Envoy keeps uid 0 with gid 1337, which the rules exempt too."""
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.agent import APP, BASE_ENV, Agent, curl, stat
from tests.mesh.ca_server import TestPKI
from tests.support.netns import APP_UID, ISTIO_INIT_ARGS, POD4, REMOTE4, SETPRIV, Pod
from tests.support.process import PILOT_AGENT, PY, proc_status, wait_until

CAPS = (1 << 10) | (1 << 12)  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN


@pytest.fixture(scope="module")
def env():
    pod = Pod.create(prefix="sroot")
    work = Path(tempfile.mkdtemp(prefix="sidecar-root-"))
    work.chmod(0o755)
    try:
        assert pod.istio_iptables(*ISTIO_INIT_ARGS).returncode == 0
        pod.spawn([PY, APP, "--http", "8080"], uid=APP_UID, wait_ready=True)
        pod.remote.spawn([PY, APP, "--http", "9090", "--tag", "remote"], wait_ready=True)
        config_path = work / "etc" / "proxy"  # not there yet: the agent makes it, owned by uid 1337
        log_path = work / "agent.log"
        argv = [PILOT_AGENT, "proxy", "sidecar", "--standalone", "--configPath", str(config_path),
                "--concurrency", "1"]
        with open(log_path, "ab") as log:  # as root: no uid given
            proc = subprocess.Popen(pod.ns.argv(argv), stdout=log, stderr=subprocess.STDOUT, cwd=str(work),
                                    env={**BASE_ENV, "INSTANCE_IP": POD4})
        pod.ns.procs.append(proc)
        agent = Agent(pod.ns, proc, log_path, config_path, time.monotonic())
        agent.wait_ready()
        yield pod, agent
    finally:
        pod.close()
        shutil.rmtree(work, ignore_errors=True)


def test_envoy_runs_as_the_proxy_user_with_network_capabilities(env):
    pod, agent = env
    assert proc_status(agent.proc.pid)["Uid"][0] == "0"  # `ip netns exec` execs the agent: it runs as root
    (envoy,) = agent.envoy_pids()
    st = proc_status(envoy)
    assert st["Uid"] == ["1337"] * 4 and st["Gid"] == ["1337"] * 4 and st["Groups"] == []
    assert int(st["CapAmb"][0], 16) == CAPS and int(st["CapEff"][0], 16) == CAPS
    assert "Envoy runs as the proxy user" in agent.log() and "uid=1337" in agent.log()
    assert proc_status(agent.proc.pid)["Gid"] == ["0"] * 4  # --standalone: no connections of its own to let out
    made = agent.config_path.stat()
    assert (made.st_uid, made.st_gid, made.st_mode & 0o777) == (1337, 1337, 0o700)


def test_outbound_request_through_envoy_leaves_the_pod_once(env):
    """As root, Envoy's upstream connection would be captured again: hundreds of connections, no answer."""
    pod, agent = env
    before = stat(pod.ns, "cluster.PassthroughCluster;.upstream_cx_total") or 0
    for _ in range(5):
        code, body = curl(pod.ns, f"http://{REMOTE4}:9090/ok", uid=APP_UID)
        assert (code, body) == (200, f"remote peer={POD4}")
    assert stat(pod.ns, "cluster.PassthroughCluster;.upstream_cx_total") == before + 5
    assert (stat(pod.ns, "listener.0.0.0.0_15001.downstream_cx_total") or 0) <= before + 5 + 1


def test_inbound_request_through_envoy(env):
    pod, agent = env
    assert curl(pod.remote, f"http://{POD4}:8080/ok") == (200, "app peer=127.0.0.6")


def test_agent_sigkill_takes_the_proxy_user_envoy_along(env):
    pod, agent = env
    (envoy,) = agent.envoy_pids()
    agent.signal(signal.SIGKILL)
    agent.wait_exit(10)
    wait_until(lambda: agent.envoy_pids() == [], 10, 0.05, "Envoy gone with the agent")


def test_unreachable_files_keep_envoy_root_with_the_proxy_gid():
    """A root-only directory (0700) that uid 1337 cannot enter: Envoy keeps uid 0 but takes gid
    1337, which the capture rules' gid-owner rule lets out (Istio's TPROXY pods run Envoy so), and
    the agent says why in one warning line. Before, the agent refused to start: a harness or a user
    keeping Envoy's files under /root could not run it as root at all."""
    pod = Pod.create(prefix="sroot0")
    work = Path(tempfile.mkdtemp(prefix="sidecar-root-"))  # 0700 root: uid 1337 cannot enter it
    try:
        assert pod.istio_iptables(*ISTIO_INIT_ARGS).returncode == 0
        pod.remote.spawn([PY, APP, "--http", "9090", "--tag", "remote"], wait_ready=True)
        config_path, log_path = work / "proxy", work / "agent.log"
        argv = [PILOT_AGENT, "proxy", "sidecar", "--standalone", "--configPath", str(config_path),
                "--concurrency", "1"]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(pod.ns.argv(argv), stdout=log, stderr=subprocess.STDOUT, cwd=str(work),
                                    env={**BASE_ENV, "INSTANCE_IP": POD4})
        pod.ns.procs.append(proc)
        agent = Agent(pod.ns, proc, log_path, config_path, time.monotonic())
        agent.wait_ready()
        (envoy,) = agent.envoy_pids()
        st = proc_status(envoy)
        assert st["Uid"] == ["0"] * 4 and st["Gid"] == ["1337"] * 4 and st["Groups"] == []
        warnings = [line for line in agent.log().splitlines() if "Envoy keeps uid 0 with the proxy's gid" in line]
        assert len(warnings) == 1 and "\twarn\t" in warnings[0]
        assert "uid 1337 cannot reach --binaryPath" in warnings[0] or f"{work} is 0700" in warnings[0]
        assert config_path.stat().st_uid == 0  # nothing handed to uid 1337
        before = stat(pod.ns, "cluster.PassthroughCluster;.upstream_cx_total") or 0
        for _ in range(3):  # Envoy's upstream connection leaves once, by the gid rule
            assert curl(pod.ns, f"http://{REMOTE4}:9090/ok", uid=APP_UID) == (200, f"remote peer={POD4}")
        assert stat(pod.ns, "cluster.PassthroughCluster;.upstream_cx_total") == before + 3
    finally:
        pod.close()
        shutil.rmtree(work, ignore_errors=True)


def test_root_agent_that_cannot_take_the_proxy_gid_stops_with_one_line_and_leaves_nothing(tmp_path):
    """Mesh mode as root with gid 0 and no CAP_SETGID: the agent's own connections could not be let
    out (nor could Envoy be given uid 1337), so start-up stops before anything is written."""
    tmp_path.chmod(0o755)
    root_cert = tmp_path / "var/run/secrets/istio/root-cert.pem"
    root_cert.parent.mkdir(parents=True)
    root_cert.write_bytes(TestPKI().root_pem)
    before = sorted(tmp_path.rglob("*"))
    pod = Pod.create(prefix="sroot1")
    try:
        argv = [SETPRIV, "--bounding-set=-setgid", PILOT_AGENT, "proxy", "sidecar"]
        res = subprocess.run(pod.ns.argv(argv), capture_output=True, text=True, cwd=str(tmp_path), timeout=30,
                             env={**BASE_ENV, "INSTANCE_IP": POD4})
    finally:
        pod.close()
    assert res.returncode == 255, res.stderr
    assert res.stderr.splitlines() == ["Error: the agent runs as root with gid 0 and cannot take the proxy's gid 1337: "
                                       "Operation not permitted; run it with gid 1337"], res.stderr
    assert sorted(tmp_path.rglob("*")) == before
