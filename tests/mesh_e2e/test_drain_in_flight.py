"""The end of a drain in mesh mode: a request that pod S's Envoy accepted before SIGTERM, still
running when terminationDrainDuration (1 s) ends, completes, while new connections are refused.

S serves istiod's inbound shape (virtualInbound on 15006, mTLS, the HTTP connection manager named as
istiod names it, `inbound_0.0.0.0_8080;`); client pod C calls S's Service over mTLS; S's app answers
/slow after 5 s. The agent closes S's inbound listeners after the wait and stops Envoy once nothing
they accepted is in flight, which it reads from Envoy's stats. Istio's stats matcher, which the mesh
bootstrap carries, drops them; the regex the bootstrap appends keeps them (without it Envoy was
stopped at once and the request cut: a 503).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest

from tests.mesh_e2e import resources
from tests.mesh_e2e.helpers import APP_PORT, ISTIOD
from tests.mesh_e2e.mesh_istiod import MESH_FILE
from tests.support.netns import APP_UID
from tests.support.process import PY, script, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

VIP = "198.18.5.40"
APP = script("sidecar/app_server.py")
HCM_PREFIX = "inbound_0.0.0.0_8080;"  # istiod's: "inbound_" + bind_port, then the stats delimiter
CONNECT = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close()\n"
           "    print('open')\nexcept ConnectionRefusedError:\n    print('refused')\n")
#: The drain's stats as Envoy's Prometheus endpoint shows them (what the bootstrap adds to :15090).
DRAIN_SERIES = re.compile(r"^envoy_(?:listener|http)_downstream_(?:cx_active|cx_total|rq_active)\{[^}]*\}", re.M)


def _server(prefix: str) -> dict[str, list[dict]]:
    """resources.server with the connection manager's stat prefix as istiod writes it."""
    out = resources.server(APP_PORT)
    for listener in out[resources.LISTENER]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                f["typed_config"]["stat_prefix"] = prefix
    return out


def _serve(mesh, spec: dict[str, dict], forget: tuple[str, ...] = ()) -> None:
    """What istiod serves from now on: `spec` added, the pods `forget` names removed (pushed at once)."""
    path = mesh.dir / MESH_FILE
    data = {k: v for k, v in json.loads(path.read_text()).items() if k not in forget}
    path.write_text(json.dumps({**data, **spec}))
    mesh.istiod.proc.send_signal(signal.SIGHUP)


def _connect(mesh, ip: str) -> str:
    """A new TCP connection to the pod's app port from outside the pod (the hub): captured to 15006."""
    return mesh.hub.ns.run([PY, "-c", CONNECT, ip, str(APP_PORT)], check=False, timeout=30).stdout.strip()


def _app_connections(pod) -> int:
    """Connections the pod's app has accepted (from its Envoy), i.e. requests being forwarded."""
    out = pod.ns.run(["ss", "-Htn", "state", "established", f"( sport = :{APP_PORT} )"], check=False).stdout
    return len(out.splitlines())


@pytest.fixture
def pods(mesh):
    s = mesh.pod("drain-s", "nsb", "drain-s")
    c = mesh.pod("drain-c", "nsa", "drain-c")
    keys = (s.key, c.key)
    try:
        _serve(mesh, {s.key: _server(HCM_PREFIX), c.key: resources.client(s.service(VIP))})
        s.ns.spawn([PY, APP, "--http", str(APP_PORT), "--tag", s.name], uid=APP_UID, wait_ready=True)
        s.start_agent(env={"PROXY_CONFIG": json.dumps({"discoveryAddress": ISTIOD, "terminationDrainDuration": "1s"})})
        c.start_agent()
        s.wait_ready()
        c.wait_ready()
        yield s, c
    finally:
        for pod in (c, s):
            mesh.close_pod(pod)
        _serve(mesh, {}, forget=keys)


def test_a_running_inbound_request_outlives_a_short_drain(mesh, pods):
    s, c = pods
    code, body = c.call(f"http://{VIP}:{APP_PORT}/ok")
    assert code == 200 and body.startswith(s.name), (code, body, s.agent.log()[-3000:])
    series = sorted(DRAIN_SERIES.findall(_prometheus(s)))
    assert _connect(mesh, s.ip) == "open"  # S's inbound listener accepts new connections

    slow = subprocess.Popen(c.ns.argv(["curl", "-s", "--noproxy", "*", "-w", "\n%{http_code}", "--max-time", "30",
                                       f"http://{VIP}:{APP_PORT}/slow"], APP_UID), stdout=subprocess.PIPE, text=True)
    c.ns.procs.append(slow)
    wait_until(lambda: _app_connections(s) >= 1, 15, 0.05, "the slow request forwarded to S's app")
    s.agent.signal(signal.SIGTERM)
    wait_until(lambda: "listeners closed" in s.agent.log(), 15, 0.05, "S's inbound listener closed")
    refused = _connect(mesh, s.ip)
    running = slow.poll() is None and s.envoy_pids() != []
    out, _ = slow.communicate(timeout=30)
    assert out == "slow\n\n200", (out, s.agent.log()[-3000:])  # the body, then curl's status line
    assert refused == "refused" and running  # nothing new accepted while the request still ran
    assert s.agent.wait_exit(15) == 0
    assert "termination drain duration elapsed; no new connection for 0.1s; no accepted request in flight" \
        in s.agent.log()
    assert s.envoy_pids() == []
    # What the drain reads, and nothing more of its kind, was on S's Prometheus endpoint.
    assert series == [
        'envoy_http_downstream_cx_active{http_conn_manager_prefix="inbound_0.0.0.0_8080"}',
        'envoy_http_downstream_rq_active{http_conn_manager_prefix="inbound_0.0.0.0_8080"}',
        'envoy_listener_downstream_cx_active{listener_address="0.0.0.0_15006"}',
        'envoy_listener_downstream_cx_total{listener_address="0.0.0.0_15006"}'], series


def _prometheus(pod) -> str:
    return pod.ns.run(["curl", "-s", "--noproxy", "*", "http://127.0.0.1:15090/stats/prometheus"],
                      check=False).stdout

