"""Fault matrix, agent side: the agent SIGKILLed (then started again on the same configPath),
SIGTERM twice, SIGTERM at each phase of start-up."""
from __future__ import annotations

import signal

import pytest

from tests.support.agent import Agent, assert_nothing_left
from tests.support.process import wait_until


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_agent_sigkill_takes_envoy_and_a_restart_starts_clean(ns, work):
    """SIGKILL cannot be handled: Envoy must die with the agent (PR_SET_PDEATHSIG), and the bootstrap
    left behind must not matter - the next agent on the same configPath replaces it and runs.
    (The first half alone: tests/sidecar/test_sidecar_faults.py::test_agent_sigkill_takes_envoy_along.)"""
    first = Agent.start(ns, work, "--concurrency", "1", env={"TERMINATION_DRAIN_DURATION_SECONDS": "0"})
    first.wait_ready()
    (envoy,) = first.envoy_pids()
    bootstrap = first.config_path / "envoy-rev.json"
    stale = bootstrap.stat().st_mtime_ns
    first.signal(signal.SIGKILL)
    assert first.wait_exit(5) == -signal.SIGKILL
    # Wait on Envoy's pid itself: while a killed process exits, its cmdline already reads empty
    # (so envoy_pids() no longer lists it) although it is still running its exit path.
    wait_until(lambda: _gone_or_zombie(envoy), 5, 0.05, "Envoy gone with the agent")
    assert first.envoy_pids() == []

    second = Agent.start(ns, work, "--concurrency", "1", env={"TERMINATION_DRAIN_DURATION_SECONDS": "0"})
    second.wait_ready()
    assert bootstrap.stat().st_mtime_ns != stale  # rewritten, not reused
    second.signal(signal.SIGTERM)
    assert second.wait_exit(15) == 0
    assert_nothing_left(second)


def test_sigterm_twice_stops_at_once(ns, work):
    """The first SIGTERM starts a 30 s drain; the second one stops Envoy now: exit 0 long before
    the drain window would end (wait_exit gives it 10 s of the 30), with the log saying so."""
    agent = Agent.start(ns, work, "--concurrency", "1", env={"TERMINATION_DRAIN_DURATION_SECONDS": "30"})
    agent.wait_ready()
    agent.signal(signal.SIGTERM)
    wait_until(lambda: "draining Envoy" in agent.log(), 5, 0.02, "drain started")
    assert agent.ready() == 503
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(10) == 0
    log = agent.log()
    assert "second signal: stopping Envoy now" in log and "Agent has successfully terminated" in log
    assert_nothing_left(agent)


PHASES = {
    # As soon as the process exists: the interpreter is still importing, nothing written yet.
    "exec": lambda agent: True,
    # The bootstrap is on disk: Envoy is being (or has just been) spawned, the status server is not up.
    "bootstrap": lambda agent: (agent.config_path / "envoy-rev.json").exists(),
    # Envoy started and logged; the status server and supervisor are still being built.
    "envoy_started": lambda agent: "Envoy started" in agent.log(),
    # The status server is listening; readiness may not have succeeded yet.
    "status_server": lambda agent: "status server listening" in agent.log(),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigterm_during_startup(ns, work, phase):
    """Whatever the phase, a SIGTERM ends the agent promptly with nothing left behind. Before any
    side effect the default action may simply end the process (exit -15: nothing to clean up);
    after the bootstrap is written the agent must handle the signal (exit 0, drained, cleaned up)."""
    agent = Agent.start(ns, work, "--concurrency", "1", env={"TERMINATION_DRAIN_DURATION_SECONDS": "1"})
    wait_until(lambda: PHASES[phase](agent) or agent.proc.poll() is not None, 30, 0.001, f"phase {phase}")
    agent.signal(signal.SIGTERM)
    code = agent.wait_exit(20)
    log = agent.log()
    assert "Traceback" not in log, log
    if phase == "exec" and code == -signal.SIGTERM:
        assert "Envoy started" not in log  # ended before anything was started or written
    else:
        assert code == 0, log
        assert "Agent has successfully terminated" in log
    assert_nothing_left(agent)
