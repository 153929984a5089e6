"""Processes for the tests: the agent and interpreter of the installed environment, ports, waiting,
and helper scripts a uid other than root can read.

The agent under test is the one installed next to the running interpreter (the console scripts of
`pip install -e .[envoy,test]`), not a path written into the tests, so the suite tests whichever
environment runs it.

Helper scripts that run as another uid (the listener as 1337, the app as 1000) cannot be read from
a checkout under /root (mode 700, where root clones by default). `script()` hands out a copy in a
world-readable temporary directory instead; the session fixture in tests/conftest.py removes it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
#: The interpreter running the tests; a venv from Debian's /usr/bin/python3 is executable by uid 1337.
PY = sys.executable
#: Where this environment's console scripts are installed (`<venv>/bin`).
BIN = Path(sysconfig.get_path("scripts"))
PILOT_AGENT = str(BIN / "pilot-agent")
ISTIO_IPTABLES = str(BIN / "istio-iptables")

_copy_dir: Path | None = None


def script(relpath: str) -> str:
    """The path of tests/<relpath> in a directory every uid can read (copied on first use)."""
    global _copy_dir
    if _copy_dir is None:
        _copy_dir = Path(tempfile.mkdtemp(prefix="agent-test-helpers-"))
        _copy_dir.chmod(0o755)
    src, dst = TESTS / relpath, _copy_dir / relpath
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        for parent in dst.relative_to(_copy_dir).parents:
            (_copy_dir / parent).chmod(0o755)
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if os.access(src, os.X_OK) else 0o644)
    return str(dst)


def remove_script_copies() -> None:
    global _copy_dir
    if _copy_dir is not None:
        shutil.rmtree(_copy_dir, ignore_errors=True)
        _copy_dir = None


def free_port() -> int:
    """A port nobody listens on on 127.0.0.1 (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(predicate: Callable[[], T], timeout: float = 5, interval: float = 0.05) -> T:
    """Call `predicate` until it returns something true or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1,
               what: str = "condition") -> T:
    """The first true value of `predicate`, or TimeoutError naming `what`. An OSError from the
    predicate (a server not listening yet, a log file not written yet) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s (last: {last!r})")


def proc_status(pid: int | Path) -> dict[str, list[str]]:
    """The fields of /proc/<pid>/status (or of a copy of one, given its path): name -> its words."""
    path = pid if isinstance(pid, Path) else Path(f"/proc/{pid}/status")
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def reaped_code(pid: int, timeout: float = 10.0) -> int | None:
    """The exit code of our child `pid`, reaped with agent.sidecar.reaper; None if it has not exited."""
    from agent.sidecar import reaper

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, _ = reaper.reap(pid, all_children=False)
        if code is not None:
            return code
        time.sleep(0.02)
    return None


def kill_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session=True), as kubelet kills
    a whole container, then reap `proc` and close its pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
