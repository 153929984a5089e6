"""A small "cluster" for the mesh tests: a hub network namespace with a bridge, where istiod runs,
and pod namespaces plugged into it, each with istio-iptables applied as the init container does.

    198.18.4.1      the hub (bridge address): istiod, `istiod.istio-system.svc` in every pod's /etc/hosts
    198.18.4.10+    pods (default route via the hub)
    198.18.5.0/24   Service VIPs: only names in /etc/hosts, captured by the client pod's iptables

Each pod also gets a root directory laid out as the istio-proxy container sees its volumes (token,
mesh root certificate, the emptyDirs the agent writes to, owned by uid 1337), under /tmp so uid
1337 can read it; the agent runs with it as its working directory, so Istio's relative default
paths (./var/run/secrets/..., ./etc/istio/proxy) land in it.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import ISTIO_INIT_ARGS, PROXY_UID, Netns, sh
from tests.support.process import PY, REPO

HUB_IP = "198.18.4.1"
#: The bridge's own MAC, fixed: a Linux bridge left to choose takes the lowest MAC of its ports, so a
#: pod attached later with a lower (random) veth MAC changed the hub's MAC under the pods already
#: there, whose neighbour entries kept the old one: they lost the hub (istiod, the CA) for up to
#: ~30 s, until the entry went stale (in CI a renewal came 4 s after its certificate had expired).
HUB_MAC = "02:c6:12:04:01:00"
ISTIOD_HOST = "istiod.istio-system.svc"
#: What the agent runs with besides the pod's own variables: the test environment's interpreter paths.
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "HOME": "/tmp", "LANG": "C.UTF-8"}
TOKEN = "var/run/secrets/tokens/istio-token"
ROOT_CERT = "var/run/secrets/istio/root-cert.pem"
#: emptyDir volumes of the injected pod (and the sockets' parents), writable by the proxy's uid.
PROXY_DIRS = ("etc/istio/proxy", "var/run/secrets/workload-spiffe-uds", "var/run/secrets/credential-uds",
              "var/lib/istio/data", "etc/istio/pod", "tmp")


@dataclass(eq=False)
class Hub:
    """The hub namespace with its bridge; pods are attached with `attach`."""

    ns: Netns
    work: Path
    hosts: dict[str, str] = field(default_factory=lambda: {HUB_IP: ISTIOD_HOST})

    @classmethod
    def create(cls) -> "Hub":
        ns = Netns.create("mh")
        try:
            ns.run(["ip", "link", "add", "br0", "address", HUB_MAC, "type", "bridge"])
            ns.run(["ip", "addr", "add", f"{HUB_IP}/24", "dev", "br0"])
            ns.run(["ip", "link", "set", "br0", "up"])
            work = Path(tempfile.mkdtemp(prefix="mesh-e2e-", dir="/tmp"))
            work.chmod(0o755)
        except BaseException:
            ns.close()
            raise
        return cls(ns, work)

    def attach(self, name: str, ip: str, *, init_args: tuple[str, ...] = (), resolv_conf: str | None = None) -> Netns:
        """A new pod namespace on the bridge at `ip`, with /etc/hosts and istio-iptables (the injector's
        arguments plus `init_args`, run after `resolv_conf` is in place: --redirect-dns reads it)."""
        pod = Netns.create("mp")
        tmp = "v" + secrets.token_hex(4)
        try:
            sh(["ip", "link", "add", tmp, "netns", pod.name, "type", "veth", "peer", "name", tmp + "h",
                "netns", self.ns.name])
            self.ns.run(["ip", "link", "set", tmp + "h", "master", "br0", "up"])
            pod.run(["ip", "link", "set", tmp, "name", "eth0"])
            pod.run(["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
            pod.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
            pod.run(["ip", "link", "set", "eth0", "up"])
            pod.run(["ip", "route", "add", "default", "via", HUB_IP])
            self.write_hosts(pod)
            # By default nothing answers DNS here: lookups fail at once instead of timing out.
            resolv_conf = resolv_conf or "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
            (pod.etc_dir / "resolv.conf").write_text(resolv_conf)
            init = pod.run([str(Path(PY).parent / "pilot-agent"), "istio-iptables", *ISTIO_INIT_ARGS, *init_args],
                           check=False, env=BASE_ENV)
            assert init.returncode == 0, f"istio-iptables in {name}: {init.stderr}"
        except BaseException:
            pod.close()
            raise
        return pod

    def write_hosts(self, pod: Netns) -> None:
        lines = ["127.0.0.1 localhost"] + [f"{ip} {host}" for ip, host in self.hosts.items()]
        (pod.etc_dir / "hosts").write_text("\n".join(lines) + "\n")

    def pod_root(self, name: str, *, token: str | None, root_pem: bytes | None) -> Path:
        """The pod's root directory, as the istio-proxy container's volumes lay it out."""
        root = self.work / name
        for rel in PROXY_DIRS:
            (root / rel).mkdir(parents=True, exist_ok=True)
            os.chown(root / rel, PROXY_UID, PROXY_UID)
        for d in [root, *root.rglob("*")]:
            if d.is_dir():
                d.chmod(0o755)
        if token is not None:
            write_file(root / TOKEN, token.encode())
        if root_pem is not None:
            write_file(root / ROOT_CERT, root_pem)
        return root

    def close(self) -> None:
        self.ns.close()
        if os.environ.get("MESH_E2E_KEEP"):  # logs and pod roots, for a look after a failure
            print(f"\nmesh_e2e: kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """A file a uid-1337 process can read (its parents made traversable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in (path.parent, *path.parent.parents):
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o755)
    path.write_bytes(data)
    path.chmod(mode)


@dataclass(eq=False)
class IstiodProcess:
    """tests/mesh_e2e/mesh_istiod.py in the hub namespace; restartable with the same PKI."""

    hub: Hub
    directory: Path
    port: int = 15012
    validity: float = 30.0
    proc: subprocess.Popen | None = None

    def start(self) -> "IstiodProcess":
        argv = [PY, "-m", "tests.mesh_e2e.mesh_istiod", "--dir", str(self.directory), "--port", str(self.port),
                "--validity", str(self.validity)]
        log = open(self.directory / f"istiod-{self.port}.log", "ab")
        self.proc = subprocess.Popen(self.hub.ns.argv(argv), stdout=subprocess.PIPE, stderr=log, text=True,
                                     env=BASE_ENV, cwd=str(REPO))
        log.close()
        self.hub.ns.procs.append(self.proc)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.proc.kill()
            raise RuntimeError(f"istiod did not start: {line!r}\n{self.log()}")
        return self

    def stop(self) -> None:
        """As a killed istiod pod: no goodbye to the open streams."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        path = self.directory / f"istiod-{self.port}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
