"""The real agent's status server against a misbehaving caller (tests/sidecar/status_abuse.py):
malformed requests, callers that hang up early and 150 connections sending their head a byte at a
time. Readiness keeps answering, the slow connections are closed at the header timeout (10 s), and
the agent's log stays one JSON line per record with no traceback."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from agent.sidecar.http_server import Limits
from tests.support.agent import BASE_ENV, Agent
from tests.support.process import PILOT_AGENT, PY, script

ABUSE = script("sidecar/status_abuse.py")
SLACK = 5.0


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="sidecar-status-"))
    path.chmod(0o755)  # the agent runs as root and Envoy as uid 1337: --configPath must be reachable
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_misbehaving_callers(netns_factory, work):
    ns = netns_factory("sth")
    agent = Agent.start(ns, work, "--concurrency", "1", "--log_as_json")
    agent.wait_ready()
    timeout = Limits().header_timeout
    out = ns.run([PY, ABUSE, "127.0.0.1", "15020", "150", str(timeout + SLACK)], timeout=120).stdout
    result = json.loads(out)
    ns.run([PILOT_AGENT, "request", "--debug-port", "15020", "POST", "quitquitquit"], env=BASE_ENV)
    assert agent.wait_exit(10) == 0
    log = agent.log()

    assert all(400 <= status < 500 for status in result["malformed"]), result["malformed"]
    assert result["ready"] == [200] * len(result["ready"])
    still_open = [t for t in result["closed_after"] if t is None]
    assert still_open == [], f"{len(still_open)} of 150 slow connections kept past {timeout + SLACK}s"
    assert "Traceback" not in log
    records = []
    for line in log.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    ours = [r for r in records if "msg" in r and "caller" not in r]  # Envoy's JSON lines carry "caller"
    assert not [r for r in ours if r.get("scope") == "aiohttp"]  # callers' errors are debug lines
    assert [r["msg"] for r in ours].count("status server: connection limit reached, "
                                         "closing the oldest idle connections") == 1
