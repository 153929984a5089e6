"""Agent logs as the real process writes them: Istio's text lines by default, JSON with --log_as_json,
levels from --log_output_level."""
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.netns.harness import PILOT_AGENT
from tests.sidecar._agent import BASE_ENV, Agent

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
    assert not any("FLAG: --" in line for line in ours)  # debug only


def test_json_with_debug_level(netns_factory, work):
    lines = _run_and_quit(netns_factory("srl"), work, "--log_as_json", "--log_output_level", "default:debug")
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # Envoy's own lines
    msgs = [r["msg"] for r in records if "msg" in r]
    assert "Envoy started" in msgs and "Agent has successfully terminated" in msgs
    assert any(m.startswith('FLAG: --statusPort="15020"') for m in msgs)
    started = next(r for r in records if r.get("msg") == "Envoy started")
    assert started["level"] == "info" and started["scope"] == "default" and isinstance(started["pid"], int)
