"""The CA down at start, and a token istiod refuses: readiness says why, nothing crashes."""
import json
import time

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.mesh_e2e.cluster import IstiodProcess
from tests.mesh_e2e.helpers import APP_PORT
from tests.support.process import wait_until


def not_ready_reasons(log: str) -> list[str]:
    return [line.partition("Envoy proxy is NOT ready: ")[2] for line in log.splitlines()
            if "Envoy proxy is NOT ready: " in line]


def test_ca_down_at_start_then_up(mesh, server_pod):
    """CA_ADDR names a CA that is not up yet (xDS on 15012 is): not ready, with the reason; ready once
    the CA answers, with a certificate that works for mTLS."""
    pod = mesh.pod("late-ca", "nsc", "late-ca")
    pod.start_agent(env={"CA_ADDR": "istiod.istio-system.svc:15013"})
    wait_until(lambda: pod.ready()[0] == 503, 20, 0.1, "readiness answering 503")
    time.sleep(3)  # give it time to become ready by mistake
    assert pod.ready()[0] == 503
    # Like Istio, the probe's body is empty and the reason is logged.
    reasons = not_ready_reasons(pod.agent.log())
    print(f"\nreadiness while the CA is down: {reasons[-1:]}")
    assert reasons and "cert" in reasons[-1].lower(), pod.agent.log()[-3000:]
    ca = IstiodProcess(mesh.hub, mesh.dir, port=15013, validity=3600).start()
    try:
        pod.wait_ready(40)
        code, body = pod.call(f"http://b.nsb.svc.cluster.local:{APP_PORT}/")
        assert code == 200 and f"URI={pod.identity}" in json.loads(body)["headers"]["x-forwarded-client-cert"]
    finally:
        ca.stop()
    assert "Traceback" not in pod.agent.log()
    mesh.close_pod(pod)


def test_refused_token_one_clear_line_never_ready(mesh):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pod = mesh.pod("bad-token", "nsc", "bad-token", token=mesh.pki.token("nsc", "bad-token", key=stranger))
    agent = pod.start_agent()
    deadline = time.monotonic() + 10
    codes = set()
    while time.monotonic() < deadline:
        codes.add(pod.ready()[0])
        time.sleep(0.25)
    assert 200 not in codes and 503 in codes, codes
    assert agent.proc.poll() is None, "the agent exited"
    log = agent.log()
    print(f"\nagent log with a refused token:\n{log[-2500:]}")
    assert "Traceback" not in log
    # The CA's refusal, in one line naming the token file; retried with a growing backoff, not a tight loop.
    refusals = [line for line in log.splitlines() if "istio-token" in line and "uthenticat" in line]
    assert refusals, "no log line says the token in ./var/run/secrets/tokens/istio-token was refused"
    assert len(refusals) <= 12, refusals
    assert not_ready_reasons(log), "readiness never logged why it is not ready"
    mesh.close_pod(pod)
