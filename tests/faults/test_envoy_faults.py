"""Fault matrix, Envoy side: Envoy killed or crashing, Envoy failing to start (bad bootstrap through
ISTIO_BOOTSTRAP_OVERRIDE, a broken customConfigFile), a listener port already taken.

What the user sees is asserted (exit code, the log line, readiness) and that nothing is lost
(conftest.assert_nothing_left: no orphan Envoy, no stale bootstrap).
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from tests.support.agent import BASE_ENV, Agent, assert_nothing_left, error_lines, live_pids
from tests.support.process import PILOT_AGENT, wait_until

FAST_EXIT = {"TERMINATION_DRAIN_DURATION_SECONDS": "0"}


def _envoy(agent: Agent) -> int:
    (pid,) = wait_until(agent.envoy_pids, 10, 0.05, "one Envoy")
    return pid


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_envoy_dies_with_restarts_off_the_agent_exits_as_istio(ns, work, sig):
    """Budget 0 is Istio's behaviour: the agent follows Envoy out (exit 0) and says why."""
    agent = Agent.start(ns, work, "--concurrency", "1", "--envoy-restart-budget", "0", env=FAST_EXIT)
    agent.wait_ready()
    os.kill(_envoy(agent), sig)
    assert agent.wait_exit(15) == 0
    log = agent.log()
    assert f"Envoy exited unexpectedly signal={sig.name}" in log
    assert "Envoy restarts disabled (budget 0)" in log
    assert "Traceback" not in log
    assert_nothing_left(agent)


def test_envoy_segfault_is_restarted_within_the_budget_then_the_agent_gives_up(ns, work):
    """SIGSEGV (the SIGKILL twin is tests/sidecar/test_sidecar_faults.py::
    test_envoy_sigkill_restarts_within_budget_then_exits): not ready during the backoff, ready
    again with a new Envoy, exit 1 once the budget is spent; nothing left behind."""
    agent = Agent.start(ns, work, "--concurrency", "1", env={
        **FAST_EXIT, "ENVOY_RESTART_BUDGET": "1", "ENVOY_RESTART_BACKOFF": "1s"})
    agent.wait_ready()
    first = _envoy(agent)
    os.kill(first, signal.SIGSEGV)
    wait_until(lambda: "Envoy exited unexpectedly signal=SIGSEGV" in agent.log(), 10, what="crash noticed")
    assert agent.ready() == 503
    wait_until(lambda: agent.ready() == 200, 30, 0.1, "ready after the restart")
    second = _envoy(agent)
    assert second != first
    os.kill(second, signal.SIGSEGV)
    assert agent.wait_exit(15) == 1
    assert "Envoy restart budget exhausted" in agent.log()
    assert_nothing_left(agent)


def test_bad_bootstrap_override_envoy_refuses_it_agent_exits_1(ns, work):
    """A bootstrap Envoy rejects (negative connect_timeout) via ISTIO_BOOTSTRAP_OVERRIDE: never
    ready, a few quick restarts, then exit 1 naming the budget; the bootstrap is removed."""
    override = work / "override.json"
    override.write_text(json.dumps({"static_resources": {"clusters": [{"name": "bad", "connect_timeout": "-1s"}]}}))
    agent = Agent.start(ns, work, "--concurrency", "1", env={
        **FAST_EXIT, "ISTIO_BOOTSTRAP_OVERRIDE": str(override), "ENVOY_RESTART_BACKOFF": "50ms"})
    code = agent.wait_exit(30)
    log = agent.log()
    assert code == 1
    assert "Envoy exited unexpectedly code=1" in log and "Envoy restart budget exhausted" in log
    assert "Readiness succeeded" not in log and "Traceback" not in log
    assert_nothing_left(agent)
    assert override.exists()  # the user's file is never touched


def test_broken_custom_config_file_envoy_exits_agent_follows_and_keeps_the_file(ns, work):
    """customConfigFile that Envoy cannot load (a listener without an address), restarts off: the
    agent exits (0, as Istio) with Envoy's code in the log, and the user's file is left alone."""
    custom = work / "custom.yaml"
    text = ("admin: {address: {socket_address: {address: 127.0.0.1, port_value: 15000}}}\n"
            "static_resources: {listeners: [{name: broken}]}\n")
    custom.write_text(text)
    agent = Agent.start(ns, work, "--customConfigFile", str(custom), "--envoy-restart-budget", "0", env=FAST_EXIT)
    assert agent.wait_exit(30) == 0
    log = agent.log()
    assert "Envoy exited unexpectedly code=1" in log and "Readiness succeeded" not in log
    assert custom.read_text() == text
    assert_nothing_left(agent)


def test_listener_port_taken_fails_before_envoy_starts(ns, work):
    """Port 15006 (Envoy's inbound listener) already bound by someone else: one line, exit 255,
    no Envoy, no bootstrap. (Taken status and admin ports: tests/sidecar/test_sidecar_bad_input.py::
    test_port_in_use.)"""
    holder = ns.spawn(["python3", "-c", "import socket,sys,time; s=socket.socket(); "
                       "s.bind(('0.0.0.0',15006)); s.listen(); print('ready',flush=True); time.sleep(300)"],
                      wait_ready=True)
    config_path = work / "proxy"
    cp = ns.run([PILOT_AGENT, "proxy", "sidecar", "--standalone", "--configPath", str(config_path)],
                check=False, env=BASE_ENV, timeout=30)
    assert cp.returncode == 255
    lines = error_lines(cp.stderr)
    assert len(cp.stderr.strip().splitlines()) == 1 and len(lines) == 1, cp.stderr
    assert "15006" in lines[0] and "not available" in lines[0]
    assert "Envoy started" not in cp.stdout
    assert not config_path.exists() or os.listdir(config_path) == []
    assert [p for p in live_pids(ns) if p != holder.pid] == []


def test_port_taken_while_envoy_restarts_envoy_cannot_bind_agent_gives_up(ns, work):
    """Envoy crashes; during the restart backoff another process takes the admin port. The new
    Envoy cannot bind it (a failure only Envoy itself can report): the agent retries within its
    budget, then exits 1; readiness is 503 meanwhile; nothing is left."""
    agent = Agent.start(ns, work, "--concurrency", "1", env={
        **FAST_EXIT, "ENVOY_RESTART_BUDGET": "2", "ENVOY_RESTART_BACKOFF": "1s"})
    agent.wait_ready()
    os.kill(_envoy(agent), signal.SIGKILL)
    wait_until(lambda: "Envoy exited unexpectedly" in agent.log(), 10, 0.02, "crash noticed")
    squatter = ns.spawn(["python3", "-c", "import socket,time; s=socket.socket(); "
                         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',15000)); "
                         "s.listen(); print('ready',flush=True); time.sleep(300)"], wait_ready=True)
    assert agent.ready() == 503
    assert agent.wait_exit(30) == 1
    log = agent.log()
    assert "Envoy restart budget exhausted" in log and "Traceback" not in log
    assert log.count("Envoy exited unexpectedly") >= 2  # the crash, then the restart that could not bind
    assert_nothing_left(agent, keep={squatter.pid})
