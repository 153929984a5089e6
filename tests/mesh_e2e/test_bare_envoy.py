"""The mesh's xDS resources checked without the agent: two bare Envoys (uid 1337, iptables applied)
dial the test istiod themselves with pre-issued file certificates, and A's app reaches B's app over
mTLS with A's identity in `x-forwarded-client-cert`. When this passes and the agent tests fail, the
agent is at fault, not the resources or the network."""
import json

from tests.mesh_e2e.helpers import APP_PORT


def test_bare_envoys_carry_mtls_and_xfcc(mesh):
    a, b = mesh.pod("bare-a"), mesh.pod("bare-b")
    b.start_app()
    for pod in (b, a):
        pod.start_bare_envoy(mesh.pki, mesh.pki.token(pod.namespace, pod.sa))
    for pod in (b, a):
        pod.wait_envoy_live()
    code, body = a.call(f"http://bare-b.nsb.svc.cluster.local:{APP_PORT}/hello")
    assert code == 200, (code, body)
    seen = json.loads(body)
    assert seen["tag"] == "bare-b" and seen["peer"] == "127.0.0.1"
    xfcc = seen["headers"]["x-forwarded-client-cert"]
    assert f"URI={a.identity}" in xfcc and f"By={b.identity}" in xfcc, xfcc
    assert b.stat("listener.0.0.0.0_15006.ssl.handshake") >= 1
    assert a.stat("cluster.outbound|8080||bare-b.nsb.svc.cluster.local.ssl.handshake") >= 1
