"""A pod whose proxy container runs as root with gid 1337, the shape Istio's injector uses for TPROXY
and `capNetBindService` (runAsUser 0, runAsGroup 1337), in the mesh: Envoy runs as uid 1337 with
the network capabilities kept, reaches the agent's SDS and xDS sockets, and the pod's app calls B
over mTLS through it. The agent's own connections to istiod leave by the rules' gid exemption; started
with gid 0 (root outside a container), the agent takes gid 1337 itself."""
import json
import subprocess
import time

import pytest

from tests.mesh_e2e.cluster import BASE_ENV
from tests.mesh_e2e.helpers import APP_PORT, injected_args, injected_env
from tests.support.agent import Agent
from tests.support.netns import IP, SETPRIV
from tests.support.process import PILOT_AGENT, proc_status

B_URL = f"http://b.nsb.svc.cluster.local:{APP_PORT}"
CAPS = (1 << 10) | (1 << 12)  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN


@pytest.mark.parametrize("gid", [1337, 0])
def test_root_proxy_container_in_the_mesh(mesh, server_pod, gid):
    pod = mesh.pod(f"rootpod{gid}", "nsa", "rootpod")
    env = {**BASE_ENV, **injected_env(pod.name, pod.namespace, pod.sa, pod.ip)}
    argv = [IP, "netns", "exec", pod.ns.name, SETPRIV, f"--regid={gid}", "--clear-groups",
            PILOT_AGENT, *injected_args(pod.namespace)]
    log_path = pod.root.parent / f"{pod.name}-agent.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(pod.root))
    pod.ns.procs.append(proc)
    pod.agent = Agent(pod.ns, proc, log_path, pod.root / "etc/istio/proxy", time.monotonic())
    try:
        pod.wait_ready()
        assert proc_status(proc.pid)["Uid"][0] == "0" and proc_status(proc.pid)["Gid"] == ["1337"] * 4
        took = "the agent runs as root: it takes the proxy's gid" in pod.agent.log()
        assert took == (gid == 0)
        (envoy,) = pod.envoy_pids()
        st = proc_status(envoy)
        assert st["Uid"] == ["1337"] * 4 and st["Gid"] == ["1337"] * 4
        assert int(st["CapAmb"][0], 16) == CAPS
        assert pod.identity in pod.admin("/certs")[1]  # its certificate came over the agent's SDS socket
        code, body = pod.call(B_URL + "/root")
        assert code == 200, (code, body, pod.agent.log()[-3000:])
        assert f"URI={pod.identity}" in json.loads(body)["headers"]["x-forwarded-client-cert"]
    finally:
        mesh.close_pod(pod)
