"""The Envoy child process and child reaping. Standard library only.

Envoy is started in its own session (setsid: a terminal's Ctrl-C or a signal to the agent's process
group does not reach it; the agent decides when Envoy stops) with the parent-death signal set to
SIGKILL (prctl PR_SET_PDEATHSIG), so an agent killed with SIGKILL takes Envoy with it instead of
leaving an orphan serving stale config. stdout/stderr are inherited: Envoy's logs go to the
container log like the agent's. When the agent runs as root, Envoy is started as the proxy user
(agent.sidecar.proxy_user: the pod's capture rules exempt only that uid).

When the agent is PID 1 (the container's entrypoint), every orphan in the container is re-parented to
it, and zombies pile up unless it waits for them (the kernel's reparenting rule; gunicorn's arbiter
and tini do the same). `reap()` collects them with waitpid(-1, WNOHANG) and, when the exited child is
Envoy, keeps its status for the supervisor instead of discarding it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time

from collections.abc import Sequence

from agent.sidecar.proxy_user import ProxyUser

PR_SET_PDEATHSIG = 1

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc (not Linux)
    _libc = None


class EnvoyProcess:
    """One running Envoy. Its exit status is collected by `reap()` and recorded with `forget()`."""

    def __init__(self, pid: int, started: float) -> None:
        self.pid = pid
        self.started = started  # time.monotonic()
        self.returncode: int | None = None  # set once reaped (negative: killed by that signal)

    def __repr__(self) -> str:
        return f"EnvoyProcess(pid={self.pid}, started={self.started}, returncode={self.returncode})"

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def forget(self, exit_code: int) -> None:
        """Record that the child is gone (we reaped it)."""
        self.returncode = exit_code


class EnvoyHandle:
    """The one owner of Envoy's process: spawns it, respawns it, and knows which process is current.

    As a context manager it kills, on exit, an Envoy still running (whatever happened, no Envoy
    outlives the agent; a drained Envoy has already exited by then).
    """

    def __init__(self, argv: Sequence[str], user: ProxyUser | None = None) -> None:
        self.argv = list(argv)
        self.user = user  # None: Envoy runs as the agent's own user
        self.process: EnvoyProcess | None = None

    def __enter__(self) -> EnvoyHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.kill()

    def spawn(self) -> EnvoyProcess:
        """Start Envoy (again). OSError if it cannot be executed."""
        self.process = spawn(self.argv, user=self.user)
        return self.process

    @property
    def pid(self) -> int | None:
        """The running Envoy's pid; None when none runs (not started, exited, or reaped)."""
        proc = self.process
        return proc.pid if proc is not None and proc.returncode is None else None

    def exited(self, code: int) -> None:
        """The supervisor reaped Envoy with this exit code."""
        if self.process is not None:
            self.process.forget(code)

    def signal(self, signum: int) -> None:
        if self.pid is not None:
            self.process.signal(signum)

    def kill(self) -> None:
        """SIGKILL a still-running Envoy and reap it."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.process.forget(-signal.SIGKILL)


def spawn(argv: Sequence[str], env: dict[str, str] | None = None, user: ProxyUser | None = None) -> EnvoyProcess:
    """Start Envoy. Raises OSError (e.g. FileNotFoundError) if it cannot be executed.

    fork + exec by hand rather than subprocess.Popen(preexec_fn=...): the child must call prctl
    between fork and exec, which os.posix_spawn cannot, and subprocess (with threading, selectors)
    is a few milliseconds of imports on the path to Envoy's spawn. What Popen did for us is done
    here: a new session, `user`'s credentials (set before the parent-death signal, which the kernel
    clears on a credential change), inherited stdio only (every other descriptor is closed), SIGPIPE and
    SIGXFSZ back to default (Python ignores them), PATH lookup when argv[0] has no '/', and an exec
    failure raised in the parent as OSError, reported through a close-on-exec pipe.
    """
    argv = list(argv)
    parent = os.getpid()
    err_r, err_w = os.pipe()  # both close-on-exec: EOF on err_r means the exec succeeded
    pid = os.fork()
    if pid == 0:  # the child: no return from here, whatever happens
        code = 0
        try:
            os.close(err_r)
            os.setsid()
            if user is not None:
                user.become()
            if _libc is not None:
                _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the agent died before prctl: nobody would send the signal
                os._exit(1)
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())  # the agent blocks SIGTERM during its start-up
            os.closerange(3, err_w)
            os.closerange(err_w + 1, os.sysconf("SC_OPEN_MAX"))
            if env is None:
                os.execvp(argv[0], argv)
            else:
                os.execvpe(argv[0], argv, env)
        except OSError as e:
            code = e.errno or 1
        except BaseException:
            code = 1
        finally:
            try:
                os.write(err_w, str(code).encode())
            finally:
                os._exit(127)
    os.close(err_w)
    try:
        report = b""
        while chunk := os.read(err_r, 64):
            report += chunk
    finally:
        os.close(err_r)
    if report:
        os.waitpid(pid, 0)
        errno = int(report)
        raise OSError(errno, os.strerror(errno), argv[0])
    return EnvoyProcess(pid, time.monotonic())


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
