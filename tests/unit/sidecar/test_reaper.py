"""Envoy's process wrapper with real processes: own session, parent-death signal, reaping."""
import os
import subprocess
import sys
import textwrap
import time

from agent.sidecar import reaper
from tests.support.process import reaped_code


def _wait_gone(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of ours still answers kill(0); it is gone for our purpose once reaped
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_spawn_new_session_and_reap_status():
    proc = reaper.spawn([sys.executable, "-c", "import os,sys; sys.exit(3 if os.getsid(0)==os.getpid() else 4)"])
    deadline = time.monotonic() + 10
    code = None
    while code is None and time.monotonic() < deadline:
        code, _ = reaper.reap(proc.pid, all_children=False)
        time.sleep(0.02)
    assert code == 3  # it led its own session


def test_reap_all_keeps_envoys_status_and_collects_others():
    other = subprocess.Popen(["true"])
    envoy = reaper.spawn(["sh", "-c", "exit 7"])
    time.sleep(0.5)
    code, others = reaper.reap(envoy.pid, all_children=True)
    assert code == 7
    assert (other.pid, 0) in others
    other.returncode = 0


def test_signal_status_is_negative():
    envoy = reaper.spawn(["sleep", "30"])
    envoy.signal(9)
    time.sleep(0.3)
    assert reaper.reap(envoy.pid, all_children=False)[0] == -9


def test_child_dies_with_its_parent():
    """The agent killed with SIGKILL: PR_SET_PDEATHSIG takes 'Envoy' (here sleep) with it."""
    script = textwrap.dedent("""
        import sys, time
        from agent.sidecar import reaper
        p = reaper.spawn(["sleep", "60"])
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # alive
    parent.kill()
    parent.wait()
    assert _wait_gone(child)



def test_exec_failure_is_raised_in_the_parent():
    import pytest

    with pytest.raises(FileNotFoundError):
        reaper.spawn(["/nonexistent/envoy", "-c", "x"])
    with pytest.raises(FileNotFoundError):
        reaper.spawn(["no-such-envoy-on-the-path"])


def test_child_gets_stdio_only_and_default_sigpipe(tmp_path):
    """As Popen(close_fds=True, restore_signals=True): other descriptors closed, SIGPIPE not ignored."""
    extra = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(extra, True)  # even an inheritable descriptor is closed
    out = tmp_path / "child"
    try:
        proc = reaper.spawn(["sh", "-c", f"ls /proc/self/fd > {out}.fd; cat /proc/self/status > {out}.status"])
        assert reaped_code(proc.pid) == 0
    finally:
        os.close(extra)
    assert str(extra) not in (tmp_path / "child.fd").read_text().split()
    ignored = int((tmp_path / "child.status").read_text().split("SigIgn:")[1].split()[0], 16)
    assert not ignored & (1 << (13 - 1))  # SIGPIPE (Python ignores it; Envoy gets the default)
