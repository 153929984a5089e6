"""Run the real agent (`pilot-agent proxy sidecar ...` of the installed environment) inside a network
namespace, and check that it left nothing behind.

Every namespace gets its own ports, so the tests use the real defaults (15000, 15020, 15021, 15090)
and run side by side with other suites. Output goes to a log file (Envoy is chatty; a pipe could fill
and block the agent). HTTP checks run curl inside the namespace.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import Netns
from tests.support.process import PILOT_AGENT, REPO, script, wait_until

#: The helper programs of the sidecar suite (tests/sidecar/), from the copy every uid can read.
APP = script("sidecar/app_server.py")
LOADGEN = script("sidecar/loadgen.py")
HOLD_CLIENT = script("sidecar/hold_client.py")
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "HOME": "/tmp"}


def curl(ns: Netns, url: str, method: str = "GET", *, uid: int | None = None, timeout: float = 5,
         source: str | None = None, headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of one request made inside `ns`; status 0 when no HTTP answer came back."""
    argv = ["curl", "-s", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", "-X", method,
            "--max-time", str(timeout)]
    argv += ["--interface", source] if source else []
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    cp = ns.run(argv + [url], uid=uid, check=False, timeout=timeout + 10)
    body, _, code = cp.stdout.rpartition("\n")
    return int(code or 0), body.rstrip("\n")


def stat(ns: Netns, name: str, admin_port: int = 15000) -> int | None:
    code, body = curl(ns, f"http://127.0.0.1:{admin_port}/stats?filter=^{re.escape(name)}$")
    for line in body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return None


@dataclass
class Agent:
    ns: Netns
    proc: subprocess.Popen
    log_path: Path
    config_path: Path
    started: float

    @classmethod
    def start(cls, ns: Netns, tmp: Path, *args: str, env: dict | None = None, uid: int | None = None,
              prefix: tuple[str, ...] = (), standalone: bool = True) -> "Agent":
        config_path = tmp / "proxy"
        config_path.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o755)  # Envoy runs as uid 1337 whoever starts the agent (root: agent.sidecar.proxy_user)
        if uid is not None:
            os.chown(config_path, uid, uid)
        log_path = tmp / "agent.log"
        argv = [*prefix, PILOT_AGENT, "proxy", "sidecar", "--configPath", str(config_path)]
        argv += ["--standalone"] if standalone else []
        argv += list(args)
        full_env = {**BASE_ENV, **(env or {})}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(ns.argv(argv, uid), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                    cwd=str(tmp))
        ns.procs.append(proc)
        return cls(ns, proc, log_path, config_path, time.monotonic())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self, port: int = 15020) -> int:
        return curl(self.ns, f"http://127.0.0.1:{port}/healthz/ready", timeout=2)[0]

    def wait_ready(self, timeout: float = 30) -> float:
        """Seconds from spawn to the first 200 from /healthz/ready."""
        def check():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            return self.ready() == 200
        wait_until(check, timeout, 0.05, "agent ready")
        return time.monotonic() - self.started

    def wait_exit(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running after {timeout}s:\n{self.log()}") from None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def envoy_pids(self) -> list[int]:
        """Envoy processes started with this agent's bootstrap, wherever they are in the process tree."""
        marker = str(self.config_path)
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and cmdline and cmdline[0].endswith(b"envoy") and any(marker.encode() in a for a in cmdline):
                pids.append(int(entry))
        return pids


def netns_pids(ns: Netns) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def live_pids(ns: Netns, keep=()) -> list[int]:
    """Processes in the namespace that are not zombies and not ones the test keeps on purpose."""
    out = []
    for pid in netns_pids(ns):
        if pid in keep:
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def assert_nothing_left(agent: Agent, keep=()) -> None:
    """The "nothing is lost" half of every fault case: the agent is gone, no process of ours is left
    in the namespace (no orphan Envoy), and --configPath holds no bootstrap and no temp file."""
    assert agent.proc.poll() is not None, "the agent is still running"
    assert agent.envoy_pids() == [], "an Envoy outlived the agent"
    left = live_pids(agent.ns, keep=set(keep) | {p.pid for p in agent.ns.procs if p is not agent.proc and p.poll() is None})
    assert left == [], f"processes left in the namespace: {left}"
    files = sorted(os.listdir(agent.config_path)) if agent.config_path.exists() else []
    assert files == [], f"--configPath not clean (stale or half-written bootstrap): {files}"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error: ")]
