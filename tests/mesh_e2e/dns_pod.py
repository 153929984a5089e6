"""DNS in the mesh tests: Debian's dnsmasq as the cluster resolver on the hub (198.18.4.1:53), pods
whose resolv.conf names it (with the Kubernetes search list), optionally with `istio-iptables
--redirect-dns` as the injector adds it for ISTIO_META_DNS_CAPTURE, the NDS NameTable istiod serves
a pod, and the app's lookups (uid 1000) with the C library and dnspython.

dnsmasq knows only the names below (its hosts file) and answers NXDOMAIN for everything else, so an
answer for a mesh name can only have come from the agent's table.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass

from google.protobuf import json_format

from agent.mesh.protos import nds_pb2
from tests.mesh.dns_helpers import dnsmasq_argv
from tests.mesh.istiod import NAME_TABLE
from tests.mesh_e2e import resources
from tests.mesh_e2e.cluster import HUB_IP, Hub
from tests.mesh_e2e.helpers import MeshPod
from tests.mesh_e2e.mesh_istiod import MESH_FILE
from tests.support.agent import curl
from tests.support.netns import APP_UID
from tests.support.process import PY, script, wait_until

NAMESPACE = "nsd"
SEARCH = (f"{NAMESPACE}.svc.cluster.local", "svc.cluster.local", "cluster.local")
#: What the cluster resolver knows: names outside the mesh.
EXTERNAL = {"www.external.test": "198.18.6.5"}
DNS_PORT = 15053


def resolv_conf() -> str:
    """A Kubernetes pod's resolv.conf with the hub's dnsmasq as the cluster DNS. The C library's
    timeout is above the proxy's forwarding bound, so a SERVFAIL is seen rather than a retry."""
    return f"nameserver {HUB_IP}\nsearch {' '.join(SEARCH)}\noptions ndots:5 timeout:5 attempts:1\n"


@dataclass(eq=False)
class Resolver:
    """dnsmasq in the hub namespace, listening on the hub address (UDP and TCP 53)."""

    hub: Hub
    proc: subprocess.Popen | None = None

    def start(self) -> "Resolver":
        hosts = self.hub.work / "dnsmasq-hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in EXTERNAL.items()))
        with open(self.hub.work / "dnsmasq.log", "ab") as log:
            self.proc = subprocess.Popen(self.hub.ns.argv(dnsmasq_argv([HUB_IP], hosts)), stdout=log,
                                         stderr=subprocess.STDOUT)
        self.hub.ns.procs.append(self.proc)
        wait_until(lambda: self.proc.poll() is None and self._bound(), 10, 0.05, "dnsmasq on the hub")
        return self

    def _bound(self) -> bool:
        out = self.hub.ns.run(["ss", "-lnut", "sport", "= :53"]).stdout
        return out.count(f"{HUB_IP}:53") >= 2

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def add_pod(mesh, name: str, ip: str, *, capture: bool) -> MeshPod:
    """A pod in NAMESPACE on the hub (`mesh` is conftest's Mesh), resolving through dnsmasq; with
    `capture`, its DNS redirected to the agent as `istio-iptables --redirect-dns` does."""
    ns = mesh.hub.attach(name, ip, init_args=("--redirect-dns",) if capture else (), resolv_conf=resolv_conf())
    try:
        root = mesh.hub.pod_root(name, token=mesh.pki.token(NAMESPACE, name), root_pem=mesh.pki.root_pem)
    except BaseException:
        ns.close()
        raise
    pod = MeshPod(name, NAMESPACE, name, ip, ns, root)
    mesh.pods.append(pod)
    return pod


def serve(mesh, pod: MeshPod, table: nds_pb2.NameTable | None) -> None:
    """What istiod serves the pod from now on: no listeners or clusters, and `table` over NDS (None:
    no NDS answer at all, as an istiod that has not computed it yet). Pushed at once (SIGHUP)."""
    path = mesh.dir / MESH_FILE
    spec = json.loads(path.read_text())
    spec[pod.key] = resources.empty()
    if table is not None:
        spec[pod.key][NAME_TABLE] = [json_format.MessageToDict(table)]
    path.write_text(json.dumps(spec))
    mesh.istiod.proc.send_signal(signal.SIGHUP)


def forget(mesh, pod: MeshPod) -> None:
    path = mesh.dir / MESH_FILE
    spec = json.loads(path.read_text())
    spec.pop(pod.key, None)
    path.write_text(json.dumps(spec))
    mesh.istiod.proc.send_signal(signal.SIGHUP)


# ---- the app's side -----------------------------------------------------------------------------

def getent(pod: MeshPod, *args: str) -> list[list[str]]:
    """`getent <database> <key>` as the app: rows split on blanks (none when not found)."""
    cp = pod.ns.run(["getent", *args], uid=APP_UID, check=False, timeout=30)
    return [line.split() for line in cp.stdout.splitlines()]


def lookup(pod: MeshPod, *specs: str) -> list[dict]:
    """dnspython's stub resolver as the app, through resolv.conf and its search list (`A:name`)."""
    cp = pod.ns.run([PY, script("mesh_e2e/dns_client.py"), *specs], uid=APP_UID, timeout=60)
    return json.loads(cp.stdout)


def query(pod: MeshPod, *specs: str, tcp: bool = False) -> list[dict]:
    """One raw query per spec to the resolv.conf server (as an app sends it; the capture rules decide
    where it goes): {rcode, answers: [[name, type, value]], tc, ms}."""
    argv = [PY, script("mesh/dns_runner.py"), "query", "--server", HUB_IP, *specs]
    cp = pod.ns.run(argv + (["--tcp"] if tcp else []), uid=APP_UID, timeout=60)
    return json.loads(cp.stdout)


def values(reply: dict) -> list[str]:
    return sorted(v for _, t, v in reply["answers"] if t in ("A", "AAAA"))


def dns_metrics(pod: MeshPod) -> dict[str, float]:
    """The agent's istio_agent_dns_* series from its merged Prometheus endpoint."""
    code, body = curl(pod.ns, "http://127.0.0.1:15020/stats/prometheus", timeout=5)
    assert code == 200, (code, body[-500:])
    found = re.findall(r"^(istio_agent_dns_\w+(?:\{[^}]*\})?) (\S+)$", body, re.M)
    return {name: float(value) for name, value in found}


def dns_listeners(pod: MeshPod) -> list[str]:
    """Sockets bound to the DNS proxy's port in the pod (UDP and TCP), as `ss` lists them."""
    out = pod.ns.run(["ss", "-Hlnup"]).stdout + pod.ns.run(["ss", "-Hlntp"]).stdout
    return [line for line in out.splitlines() if f":{DNS_PORT} " in line]
