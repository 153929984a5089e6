"""istiod dialled by IP, as VMs and some multi-network set-ups do: the TLS server name then comes from
ISTIOD_SAN, for the xDS proxy and (CA_ADDR unset, so the CA is the discovery address) the CA alike.
Without it the name checked is the IP, which istiod's certificate does not carry: never ready."""
import json
import time

from tests.mesh_e2e.helpers import APP_PORT

BY_IP = {"PROXY_CONFIG": json.dumps({"discoveryAddress": "198.18.4.1:15012"}), "CA_ADDR": None}


def test_istiod_by_ip_with_istiod_san(mesh, server_pod):
    pod = mesh.pod("by-ip", "nsc", "by-ip")
    pod.start_agent(env={**BY_IP, "ISTIOD_SAN": "istiod.istio-system.svc"})
    pod.wait_ready()
    code, body = pod.call(f"http://b.nsb.svc.cluster.local:{APP_PORT}/")
    assert code == 200 and f"URI={pod.identity}" in json.loads(body)["headers"]["x-forwarded-client-cert"]
    mesh.close_pod(pod)


def test_istiod_by_ip_without_san_is_refused_by_hostname_check(mesh):
    pod = mesh.pod("by-ip-nosan", "nsc", "by-ip-nosan")
    agent = pod.start_agent(env=BY_IP)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert pod.ready()[0] != 200, "ready with istiod's certificate checked against the wrong name"
        time.sleep(0.3)
    log = agent.log()
    assert agent.proc.poll() is None and "Traceback" not in log
    assert any("control plane unreachable" in line and "Hostname" in line for line in log.splitlines()), log[-3000:]
    mesh.close_pod(pod)
