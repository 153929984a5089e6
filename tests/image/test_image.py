"""The proxyv2 image runs the pod: both injected forms of config/k8s/'s productpage, from the image
built by docker/build-local.sh, in network namespaces (tests/support/netns.py).

For each example (2020 injection, native sidecar) one pod is started the way kubelet would:
1. `istio-init` as root: `/usr/local/bin/pilot-agent istio-iptables -p 15001 -z 15006 -u 1337
   -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020` through the image's ENTRYPOINT (native pod),
   or the 2020 pod's `command: istio-iptables ... -d 15090,15020` from the image's PATH; then `--verify`;
2. the app (uid 1000, :9080) and, in the remote namespace, a peer (:9091);
3. `istio-proxy` as uid 1337 through the ENTRYPOINT with the example's args + `--standalone` and its
   env, read-only root, emptyDirs and the downward-API podinfo mounted, no capabilities.
Then: readiness on :15021 and :15020 turns 200 (asked from the remote namespace, where kubelet would
be), inbound and outbound traffic go through Envoy, the rewritten app probes work, and termination
ends with exit 0: the 2020 pod on SIGTERM (readiness fails at once, then the drain), the native one
with its preStop `pilot-agent request --debug-port=15020 POST drain` and then SIGTERM.

Slow (builds the image): marked `image`; CI runs it as its own stage (see conftest.py).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.image.container import Container, Image
from tests.image.k8s import PodFacts, PodSpec
from tests.support.netns import APP_UID, POD4, PROXY_UID, REMOTE4, Pod
from tests.support.process import PY, poll, script

pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]

HTTPAPP, HTTPGET = script("image/httpapp.py"), script("image/httpget.py")
APP_PORT, PEER_PORT = 9080, 9091
FACTS = PodFacts(ip=POD4, host_ip=REMOTE4)
# Istio's legacy env for the termination drain (how long the agent waits after SIGTERM before it
# stops Envoy); short, so the test does not idle.
TEST_ENV = {"TERMINATION_DRAIN_DURATION_SECONDS": "3"}


def http(ns, url: str, *, method: str = "GET", uid: int | None = None, timeout: float = 3) -> dict:
    cp = ns.run([PY, HTTPGET, url, "--method", method, "--timeout", str(timeout)], uid=uid,
                check=False, timeout=timeout + 10)
    try:
        return json.loads(cp.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"httpget exit {cp.returncode}: {cp.stdout!r} {cp.stderr!r}"}


@dataclass
class RunningPod:
    example: str
    spec: PodSpec
    pod: Pod
    image: Image
    init_argv: list[str]
    init_result: subprocess.CompletedProcess
    verify_result: subprocess.CompletedProcess
    proxy: Container
    agent: subprocess.Popen
    log: Path

    def remote_get(self, port: int, path: str, **kw) -> dict:
        return http(self.pod.remote, f"http://{POD4}:{port}{path}", **kw)

    def envoy_stat(self, name: str) -> int:
        """A counter from Envoy's admin (localhost:15000 inside the pod, asked as uid 1337);
        0 when Envoy has not created it yet."""
        reply = http(self.pod.ns, f"http://127.0.0.1:15000/stats?filter=^{re.escape(name)}$", uid=PROXY_UID)
        assert reply.get("status") == 200, reply
        match = re.search(rf"^{re.escape(name)}: (\d+)$", reply["body"], re.M)
        return int(match.group(1)) if match else 0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def _start(example: str, image: Image, workdir: Path) -> tuple[RunningPod | None, list]:
    """Everything a kubelet does up to the running sidecar; returns the pod and what to clean up."""
    spec = PodSpec.load(example, FACTS)
    cleanup: list = []
    pod = Pod.create(prefix="img")
    cleanup.append(pod)
    # 1. istio-init, in its own container, as root. Kubernetes semantics: the 2020 pod's `command:
    # [istio-iptables, ...]` replaces the ENTRYPOINT (the image's /usr/local/bin/istio-iptables);
    # the native pod's `args: [istio-iptables, ...]` go to it (`/usr/local/bin/pilot-agent istio-iptables`).
    init_spec = spec.container("istio-init")
    init_argv = init_spec.argv(image.entrypoint)
    init = image.container("istio-init")
    cleanup.append(init)
    hosts = f"{POD4}\t{FACTS.name}"
    init_result = pod.ns.run(init.argv([], command=init_argv, user=init_spec.user, env=init_spec.env,
                                       pod_hosts=hosts), check=False)
    verify_result = pod.ns.run(init.argv(["--verify"], command=init_argv, user=init_spec.user,
                                         env=init_spec.env, pod_hosts=hosts), check=False)
    init.remove()
    # 2. the app and the remote peer.
    pod.ns.spawn([PY, HTTPAPP, "--port", str(APP_PORT), "--tag", "app"], uid=APP_UID, wait_ready=True)
    pod.remote.spawn([PY, HTTPAPP, "--port", str(PEER_PORT), "--tag", "remote"], wait_ready=True)
    # 3. istio-proxy, with the podinfo downward-API volume.
    proxy_spec = spec.container("istio-proxy")
    podinfo = workdir / "podinfo"
    podinfo.mkdir()
    for name, text in spec.downward_api_files().items():
        (podinfo / name).write_text(text)
    podinfo.chmod(0o755)
    proxy = image.container("istio-proxy")
    cleanup.append(proxy)
    argv = proxy.argv([*proxy_spec.argv([]), "--standalone"], env={**proxy_spec.env, **TEST_ENV},
                      user=proxy_spec.user, read_only=proxy_spec.security.get("readOnlyRootFilesystem", False),
                      empty_dirs=proxy_spec.mount_paths("emptyDir"),
                      ro_volumes={p: str(podinfo) for p in proxy_spec.mount_paths("downwardAPI")},
                      pod_hosts=hosts)
    log = workdir / "istio-proxy.log"
    with log.open("w") as out:
        agent = subprocess.Popen(pod.ns.argv(argv), stdout=out, stderr=subprocess.STDOUT)
    pod.ns.procs.append(agent)
    return RunningPod(example, spec, pod, image, init_argv, init_result, verify_result, proxy, agent, log), cleanup


@pytest.fixture(scope="module", params=["productpage-injected.yaml", "productpage-native-sidecar.yaml"])
def running(request, proxyv2_image, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pod")
    cleanup: list = []
    try:
        rp, cleanup = _start(request.param, proxyv2_image, workdir)
        ready = poll(lambda: rp.remote_get(15020, "/healthz/ready").get("status") == 200
                     or rp.agent.poll() is not None, timeout=60, interval=0.25)
        assert ready and rp.agent.poll() is None, f"sidecar not ready:\n{rp.logs()}"
        yield rp
    finally:
        for item in reversed(cleanup):
            try:
                (item.close if isinstance(item, Pod) else item.remove)()
            except Exception:  # keep going: every namespace and container must go
                pass


def test_image_config(proxyv2_image):
    img = proxyv2_image
    assert img.entrypoint == ["/usr/local/bin/pilot-agent"] and img.user == "1337"
    print(f"image {img.name} size {img.size}")


def test_image_is_lean(proxyv2_image):
    """No installers, compilers, caches, apt lists or tests in the image; the agent is precompiled."""
    with proxyv2_image.container("inspect") as c:
        root = Path(c.root)
        site = next(root.glob("opt/agent/lib/python3*/site-packages"))
        unwanted = [*site.glob("pip*"), *site.glob("setuptools*"), *site.glob("wheel*"),
                    *root.glob("opt/agent/bin/pip*"), *root.glob("opt/tools"), *root.glob("src"),
                    *root.glob("usr/bin/*gcc*"), *root.glob("usr/bin/cc"), *root.glob("usr/bin/make"),
                    *root.glob("var/lib/apt/lists/*_Packages*"), *root.glob("root/.cache"),
                    *root.glob("var/cache/apt/archives/*.deb"), *site.glob("tests"), *site.glob("agent/tests")]
        assert unwanted == [], unwanted
        assert list((site / "agent").glob("__pycache__/cli.cpython-3*.pyc")), "agent not byte-compiled"
        for tool in ("usr/sbin/iptables-legacy", "usr/sbin/iptables-nft", "usr/sbin/ip6tables-legacy",
                     "usr/sbin/ip6tables-nft", "usr/sbin/nft", "usr/bin/ip", "usr/bin/setpriv"):
            assert (root / tool).exists() or (root / tool.replace("usr/bin", "bin")).exists(), tool
        assert os.path.realpath(root / "usr/local/bin/envoy".lstrip("/")).endswith("envoy/_bin/envoy") \
            or os.readlink(root / "usr/local/bin/envoy").endswith("envoy/_bin/envoy")
        for d in ("etc/istio/proxy", "var/lib/istio/data"):
            st = (root / d).stat()
            assert (st.st_uid, st.st_gid) == (PROXY_UID, PROXY_UID), d
        assert "istio-proxy:x:1337:1337:" in (root / "etc/passwd").read_text()


def test_init_container_applied_rules_as_root(running):
    assert running.init_argv[:3] in (["istio-iptables", "-p", "15001"],  # 2020: command
                                     ["/usr/local/bin/pilot-agent", "istio-iptables", "-p"])  # today: args
    assert running.init_result.returncode == 0, running.init_result.stderr[-3000:]
    assert running.verify_result.returncode == 0, running.verify_result.stdout + running.verify_result.stderr
    rules = running.pod.save()
    assert "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN" in rules
    assert "--dport 15020 -j RETURN" in rules


def test_sidecar_runs_as_1337_from_the_image(running):
    """The agent and Envoy run as uid 1337, chrooted into the image's root (not the dev install)."""
    def procs():
        out = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
                root = (status.parent / "root").resolve()
                cmd = (status.parent / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            uid = int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1))
            out.append((int(status.parent.name), uid, str(root), cmd))
        return out
    mine = [p for p in procs() if p[2] == running.proxy.root]
    envoy = [p for p in mine if p[3][0].endswith(b"envoy")]
    agent = [p for p in mine if p[0] == running.agent.pid]
    assert agent and agent[0][1] == PROXY_UID, mine
    assert envoy and all(p[1] == PROXY_UID for p in envoy), mine
    assert b"/opt/agent/bin/pilot-agent" in agent[0][3] or b"/usr/local/bin/pilot-agent" in agent[0][3]


def test_readiness_on_15021_and_15020(running):
    assert running.remote_get(15020, "/healthz/ready")["status"] == 200
    assert running.remote_get(15021, "/healthz/ready")["status"] == 200


def test_inbound_is_captured(running):
    before = running.envoy_stat("tcp.InboundPassthroughCluster.downstream_cx_total")
    reply = running.remote_get(APP_PORT, "/hello")
    assert reply.get("status") == 200, reply
    body = json.loads(reply["body"])
    # Envoy's inbound passthrough connects to the app from 127.0.0.6, the remote's address is gone.
    assert body["tag"] == "app" and body["client"] == "127.0.0.6", body
    assert running.envoy_stat("tcp.InboundPassthroughCluster.downstream_cx_total") == before + 1


def test_outbound_is_captured(running):
    before = running.envoy_stat("tcp.PassthroughCluster.downstream_cx_total")
    reply = http(running.pod.ns, f"http://{REMOTE4}:{PEER_PORT}/out", uid=APP_UID)
    assert reply.get("status") == 200 and json.loads(reply["body"])["tag"] == "remote", reply
    assert running.envoy_stat("tcp.PassthroughCluster.downstream_cx_total") == before + 1


def test_rewritten_app_probes(running):
    app = running.spec.container("productpage")
    for probe in app.http_probes().values():
        reply = running.remote_get(probe["port"], probe["path"])
        assert reply.get("status") == 200, (probe, reply)
    assert running.remote_get(15020, "/app-health/productpage/nope").get("status") in (400, 404)


def test_merged_metrics_on_15020_and_envoy_on_15090(running):
    merged = running.remote_get(15020, "/stats/prometheus")
    assert merged.get("status") == 200 and "istio_agent_" in merged["body"] and "envoy_" in merged["body"]
    assert running.remote_get(15090, "/stats/prometheus").get("status") == 200


def test_termination_exits_0(running):
    proxy_spec = running.spec.container("istio-proxy")
    pre_stop = proxy_spec.pre_stop
    if pre_stop:  # native sidecar: kubelet runs the preStop hook in the container, then SIGTERM
        hook = running.proxy.argv([], command=pre_stop, user=proxy_spec.user, env=proxy_spec.env,
                                  read_only=True, pod_hosts=f"{POD4}\t{FACTS.name}")
        result = running.pod.ns.run(hook, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    start = time.monotonic()
    running.agent.send_signal(signal.SIGTERM)
    if not pre_stop:  # readiness fails at once, while Envoy drains
        went_down = poll(lambda: running.remote_get(15020, "/healthz/ready", timeout=1).get("status") != 200,
                         timeout=3, interval=0.05)
        assert went_down, "readiness still 200 after SIGTERM"
    code = running.agent.wait(timeout=60)
    print(f"{running.example}: exit {code} {time.monotonic() - start:.1f}s after SIGTERM")
    assert code == 0, running.logs()
    assert "error" in http(running.pod.ns, "http://127.0.0.1:15000/ready", uid=PROXY_UID, timeout=1), \
        "Envoy still answering after the agent exited"
