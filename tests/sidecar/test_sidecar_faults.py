"""Faults: Envoy SIGKILLed (restarted within the budget, agent exits past it; budget 0 = Istio),
the agent SIGKILLed (Envoy dies with it), the agent as PID 1 reaping an orphan."""
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.agent import BASE_ENV, Agent, curl
from tests.support.process import wait_until


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="sidecar-rt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _kill_envoy(agent: Agent) -> int:
    (pid,) = agent.envoy_pids()
    os.kill(pid, signal.SIGKILL)
    return pid


def test_envoy_sigkill_restarts_within_budget_then_exits(netns_factory, work):
    ns = netns_factory("srf")
    agent = Agent.start(ns, work, "--concurrency", "1",
                        env={"ENVOY_RESTART_BUDGET": "1", "ENVOY_RESTART_BACKOFF": "500ms"})
    agent.wait_ready()
    first = _kill_envoy(agent)
    wait_until(lambda: "Envoy exited unexpectedly" in agent.log(), 10, what="exit noticed")
    assert agent.ready() == 503  # during the backoff
    wait_until(lambda: agent.ready() == 200, 30, 0.1, "ready again after the restart")
    (second,) = agent.envoy_pids()
    assert second != first
    log = agent.log()
    assert "signal=SIGKILL" in log and "out of memory" in log and "Envoy restarted" in log
    assert "istio_agent_envoy_restarts_total 1.0" in curl(ns, "http://127.0.0.1:15020/stats/prometheus")[1]

    _kill_envoy(agent)  # budget (1 in 10 minutes) spent: the agent gives up
    assert agent.wait_exit(15) == 1
    assert "Envoy restart budget exhausted" in agent.log()
    assert agent.envoy_pids() == []


def test_budget_zero_is_istio_behaviour(netns_factory, work):
    ns = netns_factory("srf")
    agent = Agent.start(ns, work, "--concurrency", "1", "--envoy-restart-budget", "0")
    agent.wait_ready()
    _kill_envoy(agent)
    assert agent.wait_exit(15) == 0
    assert "Envoy restarts disabled" in agent.log()


def test_agent_sigkill_takes_envoy_along(netns_factory, work):
    ns = netns_factory("srf")
    agent = Agent.start(ns, work, "--concurrency", "1")
    agent.wait_ready()
    (envoy,) = agent.envoy_pids()
    agent.signal(signal.SIGKILL)
    agent.wait_exit(5)
    wait_until(lambda: agent.envoy_pids() == [], 5, 0.05, "Envoy gone with the agent")


def _child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_agent_as_pid1_reaps_orphans(netns_factory, work):
    ns = netns_factory("srf")
    agent = Agent.start(ns, work, "--concurrency", "1", prefix=("unshare", "--pid", "--fork", "--mount-proc"),
                        env={"TERMINATION_DRAIN_DURATION_SECONDS": "1"})
    agent.wait_ready()
    (pid1,) = wait_until(lambda: _child_pids(agent.proc.pid), 5, what="agent under unshare")
    assert "NSpid:\t%d\t1" % pid1 in Path(f"/proc/{pid1}/status").read_text()  # PID 1 in its namespace
    # An orphan: sh starts `sleep` in the background and exits, so sleep is re-parented to PID 1.
    subprocess.run(["nsenter", "-t", str(pid1), "-p", "sh", "-c", "sleep 0.3 & echo $!"], check=True,
                   capture_output=True, text=True, env=BASE_ENV, timeout=10)
    wait_until(lambda: "reaped orphan process" in agent.log(), 10, 0.05, "orphan reaped")
    zombies = [p for p in _child_pids(pid1) if _state(p) == "Z"]
    assert zombies == []
    assert agent.ready() == 200  # Envoy's status was not stolen by the reaper
    os.kill(pid1, signal.SIGTERM)
    assert agent.wait_exit(20) == 0  # unshare passes on the agent's exit code
    assert "Envoy exited code=0" in agent.log()


def test_sigterm_during_startup_still_shuts_down_cleanly(netns_factory, work):
    ns = netns_factory("srf")
    agent = Agent.start(ns, work, "--concurrency", "1", env={"TERMINATION_DRAIN_DURATION_SECONDS": "1"})
    wait_until(lambda: "Envoy started" in agent.log(), 10, 0.01, "Envoy spawned")
    agent.signal(signal.SIGTERM)  # most likely before the supervisor's loop runs
    assert agent.wait_exit(20) == 0, agent.log()
    assert agent.envoy_pids() == []
    assert not (agent.config_path / "envoy-rev.json").exists()
