"""Two pods as today's injection starts them, against the test istiod on 15012: mTLS between them with
the agent's certificates, certificate rotation under load, and an istiod restart mid-run.

Pod A's app (uid 1000) calls B's Service name; A's iptables capture it to A's Envoy (uid 1337), which
originates ISTIO_MUTUAL to B's pod; B's iptables capture that to B's Envoy on 15006, which requires
A's certificate and tells B's app who called in `x-forwarded-client-cert`.
"""
import json
import os
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

from tests.mesh_e2e.cluster import ROOT_CERT, TOKEN
from tests.mesh_e2e.helpers import APP_PORT, LOADGEN, read_events
from tests.support.netns import APP_UID, PROXY_UID
from tests.support.process import PY, wait_until

B_URL = f"http://b.nsb.svc.cluster.local:{APP_PORT}"


def _xfcc(pod, path: str = "/") -> str:
    code, body = pod.call(B_URL + path)
    assert code == 200, (code, body, pod.agent.log()[-3000:])
    return json.loads(body)["headers"].get("x-forwarded-client-cert", "")


def test_a_calls_b_over_mtls_and_b_sees_a_identity(mesh, client_pod, server_pod):
    a, b = client_pod, server_pod
    xfcc = _xfcc(a, "/hello")
    assert f"URI={a.identity}" in xfcc and f"By={b.identity}" in xfcc, xfcc
    # B's only listener for 8080 takes TLS alone and requires a client certificate: XFCC with A's URI
    # means A's Envoy originated mTLS with the agent's certificate. (Istio's bootstrap keeps per-cluster
    # and per-listener TLS stats out of /stats, so they cannot be counted here.)
    for pod in (a, b):
        (envoy,) = pod.envoy_pids()
        assert f"Uid:\t{PROXY_UID}\t" in open(f"/proc/{envoy}/status").read()
        # The pipes Istio's bootstrap names, relative to the pod's root.
        assert (pod.root / "var/run/secrets/workload-spiffe-uds/socket").is_socket()
        assert (pod.root / "etc/istio/proxy/XDS").is_socket()
        assert pod.identity in pod.admin("/certs")[1]


def test_agent_authenticates_to_istiod_as_istio_does(mesh, client_pod, server_pod):
    streams = [e for e in read_events(mesh.dir, "stream") if f"~{client_pod.key}~" in e["node"]]
    assert streams and all(e["token"] and e["clusterid"] == "Kubernetes" for e in streams), streams
    assert streams[0]["delta"], "today's bootstrap asks for Delta xDS"
    csrs = [e for e in read_events(mesh.dir, "csr") if e["identity"] == client_pod.identity]
    assert csrs and all(e["clusterid"] == "Kubernetes" and not e["refused"] for e in csrs)
    # The private key stays in memory: nothing in the pod's root holds one (no OUTPUT_CERTS here).
    for dirpath, _, names in os.walk(client_pod.root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    assert b"PRIVATE KEY" not in f.read(), path


def _certs_by_serial(pod) -> dict[str, datetime] | None:
    """The workload certificates Envoy holds, by serial with their expiry; None if admin did not answer."""
    code, body = pod.admin("/certs")
    if code != 200:
        return None
    out = {}
    for entry in json.loads(body).get("certificates", []):
        for chain in entry.get("cert_chain", []):
            if any(s.get("uri") == pod.identity for s in chain.get("subject_alt_names", [])):
                out[chain["serial_number"]] = datetime.fromisoformat(chain["expiration_time"].replace("Z", "+00:00"))
    return out


def _watch_rotation(pods, stop: threading.Event, seen: dict, blind: dict) -> None:
    """Record, per pod, each serial Envoy holds with its expiry and when it first showed up, and the
    longest time without an answer from its admin (a busy machine can delay a poll: a certificate
    first seen after such a gap may have arrived at its start)."""
    last = {pod.name: time.monotonic() for pod in pods}
    while True:
        done = stop.is_set()  # one more round after the load: the last certificate is seen too
        for pod in pods:
            certs = _certs_by_serial(pod)
            if certs is None:
                continue
            now = time.monotonic()
            blind[pod.name] = max(blind[pod.name], now - last[pod.name])
            last[pod.name] = now
            for serial, expires in certs.items():
                seen[pod.name].setdefault(serial, (datetime.now(timezone.utc), expires))
        if done:
            return
        time.sleep(0.5)


def test_rotation_under_steady_load_fails_no_request(mesh, client_pod, server_pod):
    """Certificates of 30 s, renewed at about half their life, served by the same Envoys; a request
    every 50 ms from A's app to B's service meanwhile, each on a new connection."""
    pods = (client_pod, server_pod)
    envoys = {pod.name: pod.envoy_pids() for pod in pods}
    seen: dict[str, dict] = {pod.name: {} for pod in pods}
    blind = {pod.name: 0.0 for pod in pods}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_rotation, args=(pods, stop, seen, blind), daemon=True)
    watcher.start()
    load = subprocess.run(client_pod.ns.argv([PY, LOADGEN, "198.18.5.11", str(APP_PORT), "--period", "0.05",
                                              "--duration", "22"], APP_UID),
                          capture_output=True, text=True, timeout=60)
    stop.set()
    watcher.join()
    counts = json.loads(load.stdout.strip().splitlines()[-1])["counts"]
    assert set(counts) == {"ok"} and counts["ok"] > 100, counts
    for pod in pods:
        assert pod.envoy_pids() == envoys[pod.name], f"{pod.name}: Envoy was restarted"
        timeline = sorted(seen[pod.name].values())
        assert len(timeline) >= 2, f"{pod.name}: no rotation in 22 s of 30 s certificates: {seen[pod.name]}"
        slack = timedelta(seconds=blind[pod.name])  # a certificate first seen may have come at the poll before
        issued = [line[:27] for line in pod.agent.log().splitlines() if "generated new workload certificate" in line]
        for (_, old_expiry), (new_seen, _) in zip(timeline, timeline[1:]):
            assert new_seen < old_expiry + slack, (f"{pod.name}: renewed only after the old certificate expired: "
                                                   f"{timeline}, polls up to {slack} apart, issued at {issued}")


def test_istiod_restart_mid_run(mesh, client_pod, server_pod, istiod_running):
    pods = (client_pod, server_pod)
    envoys = {pod.name: pod.envoy_pids() for pod in pods}
    mesh.istiod.stop()
    down_at = time.time()
    for _ in range(3):  # Envoy keeps its config and certificates while istiod is away
        assert "URI=" in _xfcc(client_pod)
        time.sleep(0.5)
    mesh.istiod.start()
    for pod in pods:
        wait_until(lambda: any(f"~{pod.key}~" in e["node"] and e["at"] > down_at
                               for e in read_events(mesh.dir, "stream")), 30, 0.2, f"{pod.name} reconnected")
        wait_until(lambda: pod.ready()[0] == 200, 30, 0.2, f"{pod.name} ready again")
        assert pod.envoy_pids() == envoys[pod.name]
        assert pod.agent.proc.poll() is None
    assert f"URI={client_pod.identity}" in _xfcc(client_pod)


def test_sigterm_exits_cleanly(mesh, server_pod):
    """A pod of its own (the shared ones stay up): SIGTERM drains Envoy, then the agent exits 0 with
    its sockets and bootstrap gone and no Envoy left."""
    pod = mesh.pod("term", "nsc", "term")
    agent = pod.start_agent(env={"TERMINATION_DRAIN_DURATION_SECONDS": "1"})
    pod.wait_ready()
    (envoy,) = pod.envoy_pids()
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(30) == 0
    assert not os.path.exists(f"/proc/{envoy}/status") or "State:\tZ" in open(f"/proc/{envoy}/status").read()
    log = agent.log()
    assert "Traceback" not in log and "Agent has successfully terminated" in log, log[-2000:]
    left = sorted(str(p.relative_to(pod.root)) for p in pod.root.rglob("*") if not p.is_dir())
    assert left == [ROOT_CERT, TOKEN], left  # the mounted files only: no socket, no bootstrap
    mesh.close_pod(pod)
