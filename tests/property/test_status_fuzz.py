"""Fuzzing the status server's HTTP surface against a live server: its own process, a real socket.

The server runs as the agent runs it (tests/property/status_child.py: real app prober, real metrics
merger, logs to a file). Each generated input is one connection plan (tests/property/http_strategies.py):
requests from nearly right to garbage, pipelined, sent in pieces, cut short, closed or reset. After
each: the process is alive, a fresh readiness probe is answered 200, every line logged since is one of
the agent's lines in the configured format (text, then JSON) with no traceback and no raw control
character, and nothing else was written to stderr. At the end, no connection to the server is left
open past the limits: none piles up.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.property.http_strategies import PLANS, Plan
from tests.property.status_child import LIMITS
from tests.property.strategies import TRIED
from tests.support.process import REPO
from tests.support.status_server import bad_lines

#: Inputs per log format; STATUS_FUZZ_EXAMPLES=3000 explores further.
FUZZ = settings(max_examples=int(os.environ.get("STATUS_FUZZ_EXAMPLES", "300")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
CHILD = Path(__file__).with_name("status_child.py")


class Live:
    """The server's process, its port, and its output so far, checked in order."""

    def __init__(self, as_json: bool, work: Path):
        self.as_json = as_json
        self.log_path, self.err_path = work / "status.log", work / "stderr"
        self.checked = 0
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(CHILD), "json" if as_json else "text", str(self.log_path)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(work))
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the status server did not start:\n{self.err_path.read_text(errors='replace')}")
        self.port = int(line)

    def stop(self) -> int:
        self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def connections(self) -> int:
        """Connections open on the server's port (its side: not listening, not TIME_WAIT)."""
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in Path(table).read_text().splitlines()[1:]:
                local, state, inode = row.split()[1], row.split()[3], row.split()[9]
                count += int(local.rsplit(":", 1)[1], 16) == self.port and state != "0A" and inode != "0"
        return count

    def new_bad_lines(self) -> list[str]:
        """Lines logged since the last call that are not the agent's, whole lines only (one being
        written now is left for the next call), and whatever reached stderr."""
        text = self.log_path.read_text(errors="surrogateescape")
        end = text.rfind("\n") + 1
        chunk, self.checked = text[self.checked:end], max(self.checked, end)
        return bad_lines(chunk, self.as_json) + self.err_path.read_text(errors="replace").splitlines()

    def ready(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = read_all(s, 5.0)
        return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def read_all(s: socket.socket, total: float, idle: float = 0.1) -> bytes:
    """Read until the server closes, `idle` seconds of silence, or `total` seconds."""
    s.settimeout(idle)
    out, deadline = b"", time.monotonic() + total
    while time.monotonic() < deadline:
        try:
            got = s.recv(65536)
        except OSError:  # silence (a timeout), or a reset
            break
        if not got:
            break
        out += got
    return out


def run_plan(port: int, plan: Plan) -> None:
    data = plan.data if plan.keep < 0 else plan.data[:plan.keep]
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        start = 0
        for cut in [c for c in plan.cuts if c < len(data)] + [len(data)]:
            s.sendall(data[start:cut])
            start = cut
            if plan.pause:
                time.sleep(plan.pause)
        if plan.end == "half":
            s.shutdown(socket.SHUT_WR)
        if plan.end in ("read", "half"):
            read_all(s, 2.0)
        elif plan.end == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # the server may close first (a 400, the header timeout): that is its right
    finally:
        s.close()


@pytest.fixture(scope="module", params=[False, True], ids=["text", "json"])
def live(request):
    with tempfile.TemporaryDirectory(prefix="status-fuzz-") as work:
        server = Live(request.param, Path(work))
        try:
            yield server
        finally:
            assert server.stop() == 0


@FUZZ
@given(plan=PLANS)
def test_fuzzed_connections(live, plan):
    TRIED["status server: fuzzed HTTP connections, live (text and JSON logs)"] += 1
    run_plan(live.port, plan)
    assert live.proc.poll() is None, "the status server's process died"
    assert live.ready() == 200
    assert live.new_bad_lines() == []


def test_no_connection_is_left_open(live):
    """After the fuzzing (this runs after it in each module pass): every connection is closed within
    the header timeout and the linger, and what was logged meanwhile is still the agent's lines."""
    deadline = time.monotonic() + LIMITS.header_timeout + LIMITS.body_linger + 5
    while live.connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live.connections() == 0
    assert live.new_bad_lines() == []
    assert live.ready() == 200
