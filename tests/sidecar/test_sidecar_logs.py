"""Agent logs as the real process writes them: Istio's text lines by default, JSON with --log_as_json,
levels from --log_output_level."""
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.agent import BASE_ENV, Agent
from tests.support.process import PILOT_AGENT

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\t(debug|info|warn|error)\t")


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="sidecar-rt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_and_quit(ns, work, *args):
    agent = Agent.start(ns, work, "--concurrency", "1", *args)
    agent.wait_ready()
    ns.run([PILOT_AGENT, "request", "--debug-port", "15020", "POST", "quitquitquit"], env=BASE_ENV)
    assert agent.wait_exit(10) == 0
    return agent.log().splitlines()  # the agent's lines and Envoy's, interleaved


def test_text_lines_by_default(netns_factory, work):
    lines = _run_and_quit(netns_factory("srl"), work)
    ours = [line for line in lines if TEXT_LINE.match(line)]
    assert any("\tinfo\tEnvoy started pid=" in line for line in ours)
    assert any("\tinfo\tEffective config config={" in line for line in ours)
    assert any(line.endswith('\tinfo\tFLAG: --statusPort="15020"') for line in ours)  # one per flag, as Istio
    # Each under its command-line name and spelled as the command line would (Go durations, bools).
    assert any(line.endswith('\tinfo\tFLAG: --drainDuration="45s"') for line in ours)
    assert any(line.endswith('\tinfo\tFLAG: --envoy-restart-window="10m0s"') for line in ours)
    assert any(line.endswith('\tinfo\tFLAG: --log_as_json="false"') for line in ours)
    assert any("\tinfo\tVersion 0.1.0" in line for line in ours)


def test_json_and_levels(netns_factory, work):
    lines = _run_and_quit(netns_factory("srl"), work, "--log_as_json", "--log_output_level", "default:warn",
                           "--someOldFlag", "x")  # unknown flags are accepted with a warning
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # Envoy's own lines
    ours = [r for r in records if "msg" in r and "caller" not in r]  # Envoy's JSON lines carry "caller"
    assert any(r["msg"] == "unknown flags ignored" and r["level"] == "warn" for r in ours), ours
    assert all(r["level"] in ("warn", "error") for r in ours)  # info filtered out
    assert all(set(r) >= {"time", "level", "scope", "msg"} for r in ours)
