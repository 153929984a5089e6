"""Fixtures and checks shared by the fault matrix (issue 5).

Every test gets its own network namespace (so the real default ports are used and nothing collides
with other suites) and its own work directory; both are removed whatever happens. `assert_nothing_left`
is the "nothing is lost" half of every case: the agent is gone, no process of ours is left in the
namespace (no orphan Envoy), and --configPath holds no bootstrap and no temp file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.netns.harness import Netns
from tests.sidecar._agent import Agent


@pytest.fixture
def ns():
    made = Netns.create("pf")
    yield made
    made.close()


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="faults-"))
    path.chmod(0o755)  # agents running as uid 1337 must reach their configPath
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    assert agent.proc.poll() is not None, "the agent is still running"
    assert agent.envoy_pids() == [], "an Envoy outlived the agent"
    left = live_pids(agent.ns, keep=set(keep) | {p.pid for p in agent.ns.procs if p is not agent.proc and p.poll() is None})
    assert left == [], f"processes left in the namespace: {left}"
    files = sorted(os.listdir(agent.config_path)) if agent.config_path.exists() else []
    assert files == [], f"--configPath not clean (stale or half-written bootstrap): {files}"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error: ")]
