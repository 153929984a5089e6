"""Who Envoy runs as when the agent is root (agent.sidecar.proxy_user), with real processes and
files: the credentials and ambient capabilities of a spawned child as /proc shows them, the
parent-death signal kept across the uid change, the stdout pipe handed over, and the reachability
check against real directory modes. Needs root (as the whole suite does)."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from agent.sidecar import proxy_user, reaper
from agent.sidecar.proxy_user import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, ProxyUser
from tests.support.process import proc_status, reaped_code

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changes credentials: needs root")


@pytest.fixture
def shared():
    """A directory uid 1337 can reach (pytest's tmp_path sits under a 0700 root directory)."""
    path = Path(tempfile.mkdtemp(prefix="proxy-user-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_root_agent_means_the_proxy_uid_with_its_network_capabilities():
    user = proxy_user.for_agent()
    assert (user.uid, user.gid) == (1337, 1337)  # no istio-proxy account on this machine
    assert set(user.caps) == {CAP_NET_ADMIN, CAP_NET_BIND_SERVICE}  # root has both
    assert proxy_user.for_agent(euid=1337) is None  # not root: Envoy runs as the agent's own user


def test_child_runs_as_the_proxy_user_with_ambient_capabilities(shared):
    out = shared / "status"
    user = ProxyUser(1337, 1337, (CAP_NET_BIND_SERVICE, CAP_NET_ADMIN))
    proc = reaper.spawn(["sh", "-c", f"cat /proc/self/status > {out}"], user=user)
    assert reaped_code(proc.pid) == 0
    st = proc_status(out)
    assert st["Uid"] == ["1337"] * 4 and st["Gid"] == ["1337"] * 4 and st["Groups"] == []
    expected = f"{(1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_ADMIN):016x}"
    assert st["CapAmb"] == [expected] and st["CapEff"] == [expected] and st["CapPrm"] == [expected]


def test_without_capabilities_the_child_has_none(shared):
    out = shared / "status"
    proc = reaper.spawn(["sh", "-c", f"cat /proc/self/status > {out}"], user=ProxyUser(1337, 1337))
    assert reaped_code(proc.pid) == 0
    st = proc_status(out)
    assert st["Uid"] == ["1337"] * 4 and st["CapEff"] == ["0" * 16] and st["CapAmb"] == ["0" * 16]


def test_the_proxy_user_child_still_dies_with_the_agent():
    """The kernel clears the parent-death signal on a uid change: it is set after, so it holds."""
    script = textwrap.dedent("""
        import time
        from agent.sidecar import reaper
        from agent.sidecar.proxy_user import ProxyUser
        p = reaper.spawn(["sleep", "60"], user=ProxyUser(1337, 1337))
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _status_of(child)["Uid"][0] == "1337"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _status_of(pid):
    return proc_status(pid)


def _alive(pid):
    try:
        return _status_of(pid)["State"][0] != "Z"
    except OSError:
        return False


def test_stdout_pipe_handed_over_so_the_child_can_reopen_dev_stdout():
    """A root-owned pipe refuses uid 1337's open("/dev/stdout") (Envoy's access logs do that);
    once handed over it works, and the agent keeps writing to it."""
    script = textwrap.dedent("""
        import os, sys, time
        from agent.sidecar import proxy_user, reaper
        user = proxy_user.ProxyUser(1337, 1337)
        def run():
            p = reaper.spawn(["sh", "-c", "echo reopened > /dev/stdout || echo refused >&2"], user=user)
            while reaper.reap(p.pid, all_children=False)[0] is None:
                time.sleep(0.01)
        run()
        changed = proxy_user.hand_over_stdio(user)
        run()
        proxy_user.give_back_stdio(changed)
        print("agent still writes", os.fstat(1).st_uid, flush=True)
    """)
    cp = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert "refused" in cp.stderr  # before the handover
    assert cp.stdout.splitlines() == ["reopened", "agent still writes 0"]  # after, and given back


def test_reachable_goes_by_every_directory_above(shared):
    top = shared / "top"
    (top / "inner").mkdir(parents=True)
    target = top / "inner" / "file"
    target.write_text("x")
    for d in (top, top / "inner"):
        d.chmod(0o755)
    target.chmod(0o644)
    assert proxy_user.reachable(str(target), 1337, 1337, os.R_OK) is None
    top.chmod(0o700)
    assert proxy_user.reachable(str(target), 1337, 1337, os.R_OK) == f"{top} is 0700, owner uid 0 gid 0"
    os.chown(top, 1337, 0)
    assert proxy_user.reachable(str(target), 1337, 1337, os.R_OK) is None  # the owner's bits
    target.chmod(0o600)
    assert proxy_user.reachable(str(target), 1337, 1337, os.R_OK) == f"{target} is 0600, owner uid 0 gid 0"
    os.chown(target, 0, 1337)
    target.chmod(0o640)
    assert proxy_user.reachable(str(target), 1337, 1337, os.R_OK) is None  # the group's bits
    assert proxy_user.reachable(str(target), 1337, 1337, os.X_OK) is not None
    assert proxy_user.reachable(str(top / "missing"), 1337, 1337, os.R_OK) == \
        f"{top / 'missing'}: No such file or directory"


def test_reachable_from_under_root_home_is_refused():
    assert proxy_user.reachable("/root/anything", 1337, 1337, os.R_OK).startswith("/root is 07")
