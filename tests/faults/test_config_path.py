"""Fault matrix: --configPath read-only, or on a full filesystem.

Each case runs in a private mount namespace (`unshare -m`) inside the test's network namespace, on
a tiny tmpfs: read-only (mounted ro, with and without the directory already there) or full (filled
with a filler file until ENOSPC, so the bootstrap write fails part way). The listing of the tmpfs is
taken inside the same mount namespace right after the agent exits. The directories are 0755: the
agent runs as root here, so Envoy would run as uid 1337, and a 0700 root directory is refused before
any write (tests/sidecar/test_sidecar_root.py).
"""
from __future__ import annotations

import pytest

from tests.support.agent import BASE_ENV, live_pids
from tests.support.process import PILOT_AGENT

SETUPS = {
    "read-only": "mount -t tmpfs -o size=1m,mode=755 none $D && mount -o remount,ro $D",
    "read-only-existing-dir": "mount -t tmpfs -o size=1m,mode=755 none $D && mkdir -m 755 $D/proxy && "
                              "mount -o remount,ro $D",
    "full": "mount -t tmpfs -o size=16k,mode=755 none $D && mkdir -m 755 $D/proxy && "
            "(dd if=/dev/zero of=$D/filler bs=1k count=64 2>/dev/null || true)",
}
WANT = {"read-only": "Read-only file system", "read-only-existing-dir": "Read-only file system",
        "full": "No space left on device"}


@pytest.mark.parametrize("case", list(SETUPS))
def test_config_path_unwritable(ns, work, case):
    mnt = work / "mnt"
    mnt.mkdir()
    script = (f"set -e; D={mnt}; {SETUPS[case]}; set +e; "
              f"{PILOT_AGENT} proxy sidecar --standalone --configPath $D/proxy >$D/../out 2>$D/../err; "
              "echo rc=$?; echo left:; ls -A $D/proxy 2>/dev/null; echo end")
    cp = ns.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=False, env=BASE_ENV, timeout=60)
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout.splitlines()
    rc = int(out[0].removeprefix("rc="))
    left = out[out.index("left:") + 1:out.index("end")]
    err = (work / "err").read_text()
    stdout = (work / "out").read_text()
    assert rc == 255, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: --configPath"), err
    assert WANT[case] in err
    assert left == [], f"half-written bootstrap left in configPath: {left}"
    assert "Envoy started" not in stdout
    assert live_pids(ns) == []
