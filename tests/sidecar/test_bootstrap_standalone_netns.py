"""The standalone bootstrap carries real traffic in a pod network namespace.

Envoy (uid 1337) runs the agent's standalone bootstrap in the harness's pod namespace, with a few
REDIRECT rules of the init container's kind written here (only the ports under test are captured,
so this test depends on the bootstrap alone; the full `istio-iptables` + agent path is the runtime
suite's). Inbound: remote -> pod:8080 is redirected to 15006 and reaches the app from 127.0.0.6.
Outbound: the app's connection to remote:9090 is redirected to 15001 and reaches the remote.
Envoy's own stats prove both went through it.
"""
import os
import shutil
import tempfile

import pytest

from agent.sidecar import bootstrap, config
from tests.support.netns import APP_UID, POD4, PROXY_UID, REMOTE4, Pod
from tests.support.process import poll

RULES = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 15006
-A OUTPUT -p tcp -m owner --uid-owner {uid} -j RETURN
-A OUTPUT -p tcp -d {remote} --dport 9090 -j REDIRECT --to-ports 15001
COMMIT
"""


@pytest.fixture
def pod():
    p = Pod.create(prefix="sb")
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def config_dir():
    # Readable by uid 1337 (pytest's tmp_path is 0700 root).
    d = tempfile.mkdtemp(prefix="agent-standalone-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def envoy_stat(pod: Pod, name: str) -> int:
    """One counter from Envoy's admin /stats (exact name; the `;` comes from alt_stat_name)."""
    out = pod.run(["curl", "-s", "http://127.0.0.1:15000/stats"], check=False).stdout
    for line in out.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise AssertionError(f"no stat {name!r} in Envoy's /stats")


def test_standalone_passthrough_inbound_and_outbound(pod, config_dir):
    cfg = config.load(["--standalone", "--configPath", f"{config_dir}/proxy"],
                      {"POD_NAME": "app-1", "POD_NAMESPACE": "ns1", "INSTANCE_IP": POD4})
    path = bootstrap.write_bootstrap(cfg, bootstrap.build_bootstrap(cfg))
    os.chown(os.path.dirname(path), PROXY_UID, PROXY_UID)
    os.chown(path, PROXY_UID, PROXY_UID)
    pod.run(["iptables-restore"], input=RULES.format(uid=PROXY_UID, remote=REMOTE4))

    pod.spawn_listener(tcp="8080", tag="app", uid=APP_UID)
    pod.remote.spawn_listener(tcp="9090", tag="remote", uid=None)
    pod.spawn([cfg.binary_path, "-c", path, "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
              uid=PROXY_UID)
    assert poll(lambda: pod.run(["curl", "-sf", "http://127.0.0.1:15000/ready"], check=False).stdout
                == "LIVE\n", timeout=20), "Envoy did not become LIVE"

    inbound = pod.remote.client(uid=None).tcp(POD4, 8080)
    assert inbound.get("tag") == "app", inbound
    assert inbound["peer"].startswith("127.0.0.6:"), inbound  # Envoy's inbound passthrough source
    assert envoy_stat(pod, "cluster.InboundPassthroughCluster;.upstream_cx_total") >= 1

    outbound = pod.client(uid=APP_UID).tcp(REMOTE4, 9090)
    assert outbound.get("tag") == "remote" and outbound["peer"].startswith(f"{POD4}:"), outbound
    assert envoy_stat(pod, "cluster.PassthroughCluster;.upstream_cx_total") >= 1

    # Envoy's Prometheus listener answers from outside the pod (not captured).
    metrics = pod.remote.run(["curl", "-s", f"http://{POD4}:15090/stats/prometheus"]).stdout
    assert "envoy_cluster_upstream_cx_total" in metrics
    assert 'envoy_cluster_upstream_cx_total{cluster_name="InboundPassthroughCluster"} 1' in metrics
    assert 'envoy_cluster_upstream_cx_total{cluster_name="PassthroughCluster"} 1' in metrics
