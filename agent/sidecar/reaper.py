"""The Envoy child process and child reaping. Standard library only: it runs before the heavy imports.

Envoy is started in its own session (setsid: a terminal's Ctrl-C or a signal to the agent's process
group does not reach it; the agent decides when Envoy stops) with the parent-death signal set to
SIGKILL (prctl PR_SET_PDEATHSIG), so an agent killed with SIGKILL takes Envoy with it instead of
leaving an orphan serving stale config. stdout/stderr are inherited: Envoy's logs go to the
container log like the agent's.

When the agent is PID 1 (the container's entrypoint), every orphan in the container is re-parented to
it, and zombies pile up unless it waits for them (the kernel's reparenting rule; gunicorn's arbiter
and tini do the same). `reap()` collects them with waitpid(-1, WNOHANG) and, when the exited child is
Envoy, keeps its status for the supervisor instead of discarding it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Callable, Sequence

PR_SET_PDEATHSIG = 1

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc (not Linux)
    _libc = None


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """preexec_fn for Envoy: die with the agent. Runs in the child between fork and exec."""

    def setup() -> None:
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The agent may have died between fork and prctl: then nobody would send the signal.
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


class EnvoyProcess:
    """One running Envoy. Its exit status is collected by `reap()`, never by Popen.wait()."""

    def __init__(self, popen: subprocess.Popen, started: float) -> None:
        self.popen = popen
        self.started = started  # time.monotonic()

    def __repr__(self) -> str:
        return f"EnvoyProcess(pid={self.pid}, started={self.started})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def forget(self, exit_code: int) -> None:
        """Tell Popen the child is gone (we reaped it), so it does not warn or wait later."""
        self.popen.returncode = exit_code


def spawn(argv: Sequence[str], env: dict[str, str] | None = None) -> EnvoyProcess:
    """Start Envoy. Raises OSError (e.g. FileNotFoundError) if it cannot be executed."""
    popen = subprocess.Popen(list(argv), env=env, start_new_session=True,
                             preexec_fn=_child_setup(os.getpid()), close_fds=True)
    return EnvoyProcess(popen, time.monotonic())


def reap(envoy_pid: int | None, all_children: bool) -> tuple[int | None, list[tuple[int, int]]]:
    """Collect exited children without blocking.

    Returns (Envoy's exit code, or None while it runs; [(pid, exit code) of other reaped children]).
    Exit codes are os.waitstatus_to_exitcode() values: negative = killed by that signal.
    With `all_children` (PID 1) every exited child is collected with waitpid(-1); Envoy's status is
    kept and returned, not lost. Otherwise only Envoy is checked (orphans are not ours to reap).
    """
    envoy_code: int | None = None
    others: list[tuple[int, int]] = []
    if envoy_pid is None and not all_children:
        return None, others
    while True:
        try:
            pid, status = os.waitpid(-1 if all_children else envoy_pid, os.WNOHANG)
        except ChildProcessError:
            if envoy_pid is not None and envoy_code is None and not all_children:
                envoy_code = -1  # someone else reaped it: report an unknown exit rather than hang
            break
        if pid == 0:
            break
        code = os.waitstatus_to_exitcode(status)
        if pid == envoy_pid:
            envoy_code = code
            if not all_children:
                break
        else:
            others.append((pid, code))
    return envoy_code, others
