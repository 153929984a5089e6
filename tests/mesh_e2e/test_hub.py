"""The test cluster itself: a pod attached later must not cut the pods already there off the hub."""
import json

from tests.mesh_e2e.cluster import HUB_IP
from tests.support.netns import PROXY_UID
from tests.support.process import PY

CONNECT = ("import socket, sys\n"
           "s = socket.socket(); s.settimeout(1)\n"
           "try:\n    s.connect((sys.argv[1], 15012)); print('ok')\n"
           "except OSError as e:\n    print(e)\n")


def _reaches_istiod(pod) -> str:
    # As the proxy's uid, as the agent's CA and xDS connections go: the pod's capture rules exempt it.
    return pod.run([PY, "-c", CONNECT, HUB_IP], uid=PROXY_UID).stdout.strip()


def _attach(mesh, name: str, ip: str, mac: str):
    """A pod whose port on the bridge has `mac`: the lowest MACs a veth can get by chance are above
    these two, so a bridge left to choose would take them."""
    known = {link["ifname"] for link in json.loads(mesh.hub.ns.run(["ip", "-j", "link", "show"]).stdout)}
    pod = mesh.hub.attach(name, ip)
    (port,) = {link["ifname"] for link in json.loads(mesh.hub.ns.run(["ip", "-j", "link", "show"]).stdout)} - known
    mesh.hub.ns.run(["ip", "link", "set", port, "address", mac])
    return pod


def test_a_pod_attached_later_leaves_the_others_their_hub(mesh, istiod_running):
    pods = [_attach(mesh, "other", "198.18.4.249", "02:00:00:00:00:01")]
    try:
        pods.append(mesh.hub.attach("first", "198.18.4.250"))
        assert _reaches_istiod(pods[-1]) == "ok"  # its neighbour entry now holds the hub's MAC
        pods.append(_attach(mesh, "second", "198.18.4.251", "02:00:00:00:00:00"))
        assert [_reaches_istiod(pods[1]) for _ in range(3)] == ["ok"] * 3
    finally:
        for pod in pods:
            pod.close()
