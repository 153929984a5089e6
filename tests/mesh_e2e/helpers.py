"""Pods of the mesh tests: the agent started as today's injector starts it (or with another command
line), the app beside it, and what a test reads back (readiness, Envoy's admin API, istiod's events).
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.mesh.ca_server import TestPKI, _key_pem, _pem
from tests.mesh.envoy_mesh import bootstrap as direct_bootstrap
from tests.mesh.envoy_mesh import envoy_binary
from tests.support.agent import Agent, curl
from tests.support.netns import APP_UID, PROXY_UID, Netns
from tests.support.process import PILOT_AGENT, PY, script, wait_until
from tests.mesh_e2e.cluster import BASE_ENV, HUB_IP, ISTIOD_HOST, ROOT_CERT, TOKEN, write_file
from tests.mesh_e2e.resources import Service

ISTIOD = f"{ISTIOD_HOST}:15012"
APP_PORT = 8080
ECHO = script("mesh_e2e/echo_app.py")
LOADGEN = script("sidecar/loadgen.py")


def injected_args(namespace: str) -> list[str]:
    """`proxy sidecar` as Istio's injection template writes it today."""
    return ["proxy", "sidecar", "--domain", f"{namespace}.svc.cluster.local", "--proxyLogLevel=warning",
            "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"]


def injected_env(name: str, namespace: str, sa: str, ip: str) -> dict[str, str]:
    """The istio-proxy container's environment as the injector writes it today (Go-only knobs left out)."""
    return {
        "PILOT_CERT_PROVIDER": "istiod", "CA_ADDR": ISTIOD, "POD_NAME": name, "POD_NAMESPACE": namespace,
        "INSTANCE_IP": ip, "SERVICE_ACCOUNT": sa, "HOST_IP": HUB_IP, "ISTIO_CPU_LIMIT": "2",
        "PROXY_CONFIG": json.dumps({"discoveryAddress": ISTIOD}),
        "ISTIO_META_POD_PORTS": json.dumps([{"containerPort": APP_PORT, "protocol": "TCP"}]),
        "ISTIO_META_APP_CONTAINERS": "app", "ISTIO_META_CLUSTER_ID": "Kubernetes",
        "ISTIO_META_NODE_NAME": "node-1", "ISTIO_META_INTERCEPTION_MODE": "REDIRECT",
        "ISTIO_META_WORKLOAD_NAME": name,
        "ISTIO_META_OWNER": f"kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{name}",
        "ISTIO_META_MESH_ID": "cluster.local", "TRUST_DOMAIN": "cluster.local",
    }


@dataclass(eq=False)
class MeshPod:
    name: str
    namespace: str
    sa: str
    ip: str
    ns: Netns
    root: Path
    agent: Agent | None = None
    envoy: subprocess.Popen | None = None

    @property
    def key(self) -> str:
        """How istiod's mesh.json names this pod (part of the node id)."""
        return f"{self.name}.{self.namespace}"

    @property
    def identity(self) -> str:
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.sa}"

    def service(self, vip: str) -> Service:
        return Service(f"{self.name}.{self.namespace}.svc.cluster.local", vip, APP_PORT, self.ip, self.identity)

    # -- processes ----------------------------------------------------------------------------------

    def start_agent(self, args: list[str] | None = None, env: dict | None = None,
                    replace_env: bool = False) -> Agent:
        """The agent as uid 1337 with the pod root as working directory (today's injection unless told;
        a variable given as None in `env` is left out)."""
        args = injected_args(self.namespace) if args is None else args
        pod_env = {} if replace_env else injected_env(self.name, self.namespace, self.sa, self.ip)
        full_env = {k: v for k, v in {**BASE_ENV, **pod_env, **(env or {})}.items() if v is not None}
        log_path = self.root.parent / f"{self.name}-agent.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(self.ns.argv([PILOT_AGENT, *args], PROXY_UID), stdout=log,
                                    stderr=subprocess.STDOUT, env=full_env, cwd=str(self.root))
        self.ns.procs.append(proc)
        self.agent = Agent(self.ns, proc, log_path, self.root / "etc/istio/proxy", time.monotonic())
        return self.agent

    def start_app(self) -> None:
        self.ns.spawn([PY, ECHO, "--port", str(APP_PORT), "--tag", self.name], uid=APP_UID, wait_ready=True)

    def envoy_pids(self) -> list[int]:
        """Envoy processes the agent started (its children), not zombies."""
        pids = []
        try:
            kids = Path(f"/proc/{self.agent.proc.pid}/task/{self.agent.proc.pid}/children").read_text().split()
        except OSError:
            return []
        for pid in kids:
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if argv0.endswith(b"envoy") and state != "Z":
                pids.append(int(pid))
        return pids

    def start_bare_envoy(self, pki: TestPKI, token: str, *, delta: bool = True) -> subprocess.Popen:
        """Envoy alone, as uid 1337, dialling istiod itself with certificates pre-issued as files."""
        files = issue_files(pki, self.identity, self.root / "bare-certs")
        config = bare_bootstrap(self, files, token, delta=delta)
        path = self.root / "bare-envoy.json"
        write_file(path, json.dumps(config).encode())
        log = open(self.root.parent / f"{self.name}-envoy.log", "ab")
        self.envoy = subprocess.Popen(self.ns.argv([envoy_binary(), "-c", str(path), "--disable-hot-restart",
                                                    "--concurrency", "1", "-l", "warning"], PROXY_UID),
                                      stdout=log, stderr=subprocess.STDOUT, cwd=str(self.root))
        log.close()
        self.ns.procs.append(self.envoy)
        return self.envoy

    # -- reading back -------------------------------------------------------------------------------

    def ready(self) -> tuple[int, str]:
        return curl(self.ns, "http://127.0.0.1:15020/healthz/ready", timeout=2)

    def wait_ready(self, timeout: float = 40) -> float:
        return self.agent.wait_ready(timeout)

    def admin(self, path: str) -> tuple[int, str]:
        return curl(self.ns, f"http://127.0.0.1:15000{path}", timeout=3)

    def stat(self, name: str) -> int:
        _, body = self.admin(f"/stats?filter=^{name}$")
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def workload_serials(self) -> set[str]:
        """Serial numbers of the leaf certificates Envoy holds (admin /certs), workload ones only."""
        code, body = self.admin("/certs")
        if code != 200:
            return set()
        serials = set()
        for entry in json.loads(body).get("certificates", []):
            for chain in entry.get("cert_chain", []):
                for san in chain.get("subject_alt_names", []):
                    if san.get("uri") == self.identity:
                        serials.add(chain["serial_number"])
        return serials

    def call(self, url: str, timeout: float = 5) -> tuple[int, str]:
        """One request from the app's uid, as the app would make it (captured by iptables)."""
        return curl(self.ns, url, uid=APP_UID, timeout=timeout)

    def wait_envoy_live(self, timeout: float = 30) -> None:
        def live() -> bool:
            if self.envoy is not None and self.envoy.poll() is not None:
                raise AssertionError(f"envoy exited {self.envoy.returncode}")
            code, body = self.admin("/ready")
            return code == 200 and body.strip() == "LIVE"
        wait_until(live, timeout, 0.1, f"{self.name}: envoy LIVE")


def issue_files(pki: TestPKI, identity: str, directory: Path, seconds: float = 3600) -> dict[str, Path]:
    """cert-chain.pem, key.pem and root-cert.pem for `identity`, as Istio's ./etc/certs holds them."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.issue(key.public_key(), x509.UniformResourceIdentifier(identity), seconds)
    files = {"cert": directory / "cert-chain.pem", "key": directory / "key.pem", "root": directory / "root-cert.pem"}
    write_file(files["cert"], _pem(leaf) + pki.root_pem)
    write_file(files["key"], _key_pem(key))
    write_file(files["root"], pki.root_pem)
    return files


def bare_bootstrap(pod: MeshPod, files: dict[str, Path], token: str, *, delta: bool) -> dict:
    config = direct_bootstrap(15000, delta=delta, istiod=(HUB_IP, 15012), root_pem_path=str(pod.root / ROOT_CERT),
                              token=token)
    config["node"] = {"id": f"sidecar~{pod.ip}~{pod.key}~{pod.namespace}.svc.cluster.local",
                      "cluster": f"{pod.name}.{pod.namespace}"}
    config["static_resources"]["secrets"] = [
        {"name": "default", "tls_certificate": {"certificate_chain": {"filename": str(files["cert"])},
                                                "private_key": {"filename": str(files["key"])}}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"filename": str(files["root"])}}}]
    return config


def read_events(directory: Path, event: str | None = None) -> list[dict]:
    path = directory / "events.jsonl"
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in out if event is None or e["event"] == event]


__all__ = ["ISTIOD", "APP_PORT", "LOADGEN", "MeshPod", "TOKEN", "ROOT_CERT", "bare_bootstrap", "issue_files",
           "read_events", "injected_args", "injected_env"]
