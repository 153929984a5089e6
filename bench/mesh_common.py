"""Shared set-up of the mesh benchmarks (bench/mesh_start.py, bench/agent_rss.py): the test istiod in a
hub network namespace and one pod namespace on it, built with the mesh tests' own pieces
(tests/mesh_e2e/), with the benchmark process itself moved into the pod's namespace so it polls
127.0.0.1:15020 / :15000 with raw HTTP (no `ip netns exec` per poll).

The agent runs as today's injection starts it (tests/mesh_e2e/helpers.py: `injected_args`,
`injected_env`), as uid 1337, with the pod's root directory as its working directory.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sidecar_common import children, cmdline, wait_for, wait_port_free  # noqa: E402
from tests.mesh.ca_server import TestPKI  # noqa: E402
from tests.mesh_e2e import resources  # noqa: E402
from tests.mesh_e2e.cluster import BASE_ENV, Hub, IstiodProcess  # noqa: E402
from tests.mesh_e2e.helpers import APP_PORT, MeshPod, bare_bootstrap, issue_files  # noqa: E402
from tests.mesh_e2e.mesh_istiod import MESH_FILE, save_pki  # noqa: E402
from tests.support.netns import PROXY_UID  # noqa: E402

CLONE_NEWNET = 0x40000000
POD = ("bench", "nsa", "bench", "198.18.4.10")
BARE_NODE = "bench-bare.nsa"
#: B's Service as the pushed outbound cluster names it; no pod has to exist behind it for start-up.
PEER = resources.Service("b.nsb.svc.cluster.local", "198.18.5.11", APP_PORT, "198.18.4.11",
                         "spiffe://cluster.local/ns/nsb/sa/b")


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


@dataclass
class MeshBench:
    hub: Hub
    pki: TestPKI
    istiod: IstiodProcess
    pod: MeshPod

    @classmethod
    def create(cls, validity: float = 3600.0) -> "MeshBench":
        hub = Hub.create()
        try:
            directory = hub.work / "istiod"
            directory.mkdir()
            pki = TestPKI()
            save_pki(pki, directory)
            name, namespace, sa, ip = POD
            spec = {f"{name}.{namespace}": resources.client(PEER), BARE_NODE: resources.client(PEER, sds=False)}
            (directory / MESH_FILE).write_text(json.dumps(spec))
            istiod = IstiodProcess(hub, directory, validity=validity).start()
            ns = hub.attach(name, ip)
            root = hub.pod_root(name, token=pki.token(namespace, sa), root_pem=pki.root_pem)
            pod = MeshPod(name, namespace, sa, ip, ns, root)
        except BaseException:
            hub.close()
            raise
        enter_netns(ns.name)
        return cls(hub, pki, istiod, pod)

    def close(self) -> None:
        self.pod.ns.close()
        self.hub.close()

    # -- the agent --------------------------------------------------------------------------------

    def start_agent(self, env: dict | None = None) -> subprocess.Popen:
        for port in (15000, 15001, 15006, 15020, 15021, 15090):
            wait_port_free(port)
        agent = self.pod.start_agent(env={"TERMINATION_DRAIN_DURATION_SECONDS": "0", **(env or {})})
        return agent.proc

    def stop_agent(self, proc: subprocess.Popen) -> None:
        envoys = [p for p in children(proc.pid) if _is_envoy(p)]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in envoys:
            _kill(pid)

    def envoy_argv(self, proc: subprocess.Popen) -> list[str]:
        pid = wait_for(lambda: next((p for p in children(proc.pid) if _is_envoy(p)), None), 10, 0.01, "envoy")
        return cmdline(pid)

    def agent_log(self) -> str:
        return self.pod.agent.log()

    # -- the baseline: Envoy alone, dialling istiod with pre-issued files --------------------------

    def _bare_files(self) -> dict[str, Path]:
        # Not ./etc/certs: the agent would take certificates there as mounted ones and skip its CSR.
        return issue_files(self.pki, self.pod.identity, self.pod.root / "bare-certs")

    def _write(self, name: str, config: dict) -> Path:
        path = self.pod.root / name
        path.write_text(json.dumps(config))
        path.chmod(0o644)
        return path

    def bare_config(self) -> Path:
        """A minimal static bootstrap: admin, ADS over TLS to istiod, the two secrets."""
        config = bare_bootstrap(self.pod, self._bare_files(), self._token(), delta=True)
        config["node"]["id"] = self._bare_node_id()
        return self._write("bare-envoy-minimal.json", config)

    def istio_bare_config(self, rendered: dict) -> Path:
        """The agent's own rendered bootstrap (Istio's, with its stats, health and Prometheus listeners)
        turned into one that dials istiod itself: xds-grpc as TLS to istiod with the token as initial
        metadata instead of the agent's pipe, the secrets as static ones from pre-issued files."""
        minimal = bare_bootstrap(self.pod, self._bare_files(), self._token(), delta=True)
        direct = next(c for c in minimal["static_resources"]["clusters"] if c["name"] == "xds-grpc")
        config = json.loads(json.dumps(rendered))
        clusters = config["static_resources"]["clusters"]
        for i, cluster in enumerate(clusters):
            if cluster["name"] == "xds-grpc":
                clusters[i] = {**cluster, "load_assignment": direct["load_assignment"],
                               "transport_socket": direct["transport_socket"]}
        config["dynamic_resources"]["ads_config"]["grpc_services"] = \
            minimal["dynamic_resources"]["ads_config"]["grpc_services"]
        config["static_resources"]["secrets"] = minimal["static_resources"]["secrets"]
        config["node"]["id"] = self._bare_node_id()
        return self._write("bare-envoy-istio.json", config)

    def rendered_bootstrap(self) -> dict:
        return json.loads((self.pod.root / "etc/istio/proxy/envoy-rev.json").read_text())

    def _token(self) -> str:
        return self.pki.token(self.pod.namespace, self.pod.sa)

    def _bare_node_id(self) -> str:
        return f"sidecar~{self.pod.ip}~{BARE_NODE}~nsa.svc.cluster.local"

    def start_bare_envoy(self, argv: list[str]) -> subprocess.Popen:
        for port in (15000, 15001):
            wait_port_free(port)
        log = open(self.hub.work / "bare-envoy.log", "ab")
        proc = subprocess.Popen(self.pod.ns.argv(argv, PROXY_UID), stdout=log, stderr=subprocess.STDOUT,
                                env=BASE_ENV, cwd=str(self.pod.root))
        log.close()
        return proc


def bare_argv(agent_envoy_argv: list[str], config: Path) -> list[str]:
    """The agent's own Envoy command line with the static bootstrap instead of the rendered one."""
    argv = list(agent_envoy_argv)
    argv[argv.index("-c") + 1] = str(config)
    return argv


def _is_envoy(pid: int) -> bool:
    try:
        return cmdline(pid)[0].endswith("envoy")
    except (OSError, IndexError):
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def timeline(log: str, exec_wall: float, until: str = "Envoy proxy is ready") -> list[tuple[float, str]]:
    """The agent's log lines (one run's) as (ms since exec, message), up to the line containing `until`."""
    out = []
    for line in log.splitlines():
        stamp, _, rest = line.partition("\t")
        try:
            at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        if "FLAG: " not in rest:
            out.append((round((at - exec_wall) * 1000, 1), rest.split("\t", 1)[-1][:140]))
        if until in rest:
            break
    return out


def envoy_spawned_after(log: str) -> float | None:
    """Seconds from the agent's start to Envoy's spawn, as the agent logs it."""
    m = re.search(r"Envoy started pid=\d+ .*seconds_since_start=([0-9.]+)", log)
    return float(m.group(1)) if m else None


__all__ = ["MeshBench", "bare_argv", "envoy_spawned_after", "timeline"]
