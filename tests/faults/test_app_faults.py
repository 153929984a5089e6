"""Fault matrix, application side: probe targets down or slow, metrics endpoints down, failing,
serving garbage, too big or hanging. One agent serves the module (start-up is the expensive part).

What kubelet and Prometheus see is asserted, and that the agent itself is unaffected: its own
readiness stays 200 while an app probe or scrape hangs. No timing assertions (TEAM.md): where
"bounded" matters, the client's own timeout is shorter than the hang it would otherwise wait for,
so waiting on the app shows up as no answer (status 0), not as a slow number.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.agent import Agent, assert_nothing_left, curl
from tests.support.netns import Netns
from tests.support.process import PY, script

JUNK = script("faults/junk_app.py")
PROBERS = {
    "/app-health/down/livez": {"httpGet": {"path": "/ok", "port": 8099}, "timeoutSeconds": 1},
    "/app-health/tcpdown/livez": {"tcpSocket": {"port": 8098}, "timeoutSeconds": 1},
    "/app-health/slow/readyz": {"httpGet": {"path": "/hang", "port": 8090}, "timeoutSeconds": 1},
    "/app-health/slower/readyz": {"httpGet": {"path": "/hang", "port": 8090}, "timeoutSeconds": 4},
    "/app-health/failing/readyz": {"httpGet": {"path": "/bad-status", "port": 8090}, "timeoutSeconds": 1},
    "/app-health/fine/livez": {"httpGet": {"path": "/ok", "port": 8090}, "timeoutSeconds": 1},
}
TARGETS = [{"port": "8099", "path": "/metrics"},  # nobody listening
           {"port": "8090", "path": "/bad-status"},  # 503
           {"port": "8090", "path": "/garbage"},  # 200, binary junk, no final newline
           {"port": "8090", "path": "/huge"},  # 200, over the 10 MiB cap
           {"port": "8090", "path": "/hang"}]  # never answers


@pytest.fixture(scope="module")
def env():
    ns = Netns.create("pfa")
    work = Path(tempfile.mkdtemp(prefix="faults-app-"))
    try:
        ns.spawn([PY, JUNK, "--http", "8090"], wait_ready=True)
        agent = Agent.start(ns, work, "--concurrency", "1", env={
            "INSTANCE_IP": "127.0.0.1", "TERMINATION_DRAIN_DURATION_SECONDS": "0",
            "ISTIO_KUBE_APP_PROBERS": json.dumps(PROBERS),
            "ISTIO_PROMETHEUS_ANNOTATIONS": json.dumps({"scrape": "true", "targets": TARGETS})})
        agent.wait_ready()
        yield ns, agent
    finally:
        ns.close()
        shutil.rmtree(work, ignore_errors=True)


def _timed(ns, url, **kw) -> tuple[int, str, float]:
    start = time.monotonic()
    code, body = curl(ns, url, **kw)
    return code, body, time.monotonic() - start


def _fetch(ns, url: str, headers: dict, timeout: float = 15) -> tuple[int, bytes, float]:
    """(status, raw body, seconds): bytes, because a garbage-serving app makes the body non-UTF-8."""
    argv = ["curl", "-s", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", "--max-time", str(timeout)]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    start = time.monotonic()
    cp = subprocess.run(ns.argv(argv + [url]), capture_output=True, timeout=timeout + 10)
    body, _, code = cp.stdout.rpartition(b"\n")
    return int(code or 0), body, time.monotonic() - start


@pytest.mark.parametrize("path, want", [
    ("/app-health/down/livez", 500),  # connection refused -> kubelet sees a failure
    ("/app-health/tcpdown/livez", 500),
    ("/app-health/slow/readyz", 500),  # timeoutSeconds 1 -> failure, not a hang
    ("/app-health/failing/readyz", 503),  # the app's own status is passed through
    ("/app-health/fine/livez", 200),
])
def test_probe_target_down_slow_or_failing(env, path, want):
    ns, agent = env
    # The app hangs 60 s; an answer within curl's 10 s means the probe's timeoutSeconds (1 s) held.
    code, _, _ = _timed(ns, f"http://127.0.0.1:15020{path}", timeout=10)
    assert code == want


def test_a_hanging_probe_does_not_block_the_agent(env):
    """While a probe waits 4 s on the app, the agent's own readiness answers within curl's 2 s."""
    ns, agent = env
    hanging = threading.Thread(target=curl, args=(ns, "http://127.0.0.1:15020/app-health/slower/readyz"),
                               kwargs={"timeout": 15})
    hanging.start()
    time.sleep(0.3)
    code, _, _ = _timed(ns, "http://127.0.0.1:15020/healthz/ready", timeout=2)
    hanging.join()
    assert code == 200


def test_metrics_merge_survives_every_broken_app_target(env):
    """Down, 503, garbage, over the cap, hanging - all at once: the merged answer is still 200 within
    the scrape timeout, carries the agent's and Envoy's series intact, and counts the failures."""
    ns, agent = env
    ready_during = []

    def probe_while_scraping():
        time.sleep(0.5)
        ready_during.append(_timed(ns, "http://127.0.0.1:15020/healthz/ready", timeout=1.5))
    side = threading.Thread(target=probe_while_scraping)
    side.start()
    # /hang holds 60 s: an answer within curl's 15 s means the scrape timeout (3 s) cut it.
    code, body, _ = _fetch(ns, "http://127.0.0.1:15020/stats/prometheus", {"X-Prometheus-Scrape-Timeout-Seconds": "3"})
    side.join()
    assert code == 200
    assert b"istio_agent_scrapes_total" in body and b"envoy_server_live" in body
    assert b"app_junk_total" in body  # garbage is passed through as Istio does (on its own line)...
    after_junk = body.split(b"app_junk_total 1 2 3 ???", 1)[1]
    assert after_junk.startswith(b"\n")  # ...and never glued to the next source's first line
    assert ready_during and ready_during[0][0] == 200  # answered within 1.5 s while the scrape waited 3 s
    _, again, _ = _fetch(ns, "http://127.0.0.1:15020/stats/prometheus", {"X-Prometheus-Scrape-Timeout-Seconds": "2"})
    failures = [line for line in again.decode(errors="replace").splitlines() if line.startswith('istio_agent_scrape_failures_total{type="application"}')]
    assert failures and float(failures[0].split()[-1]) >= 4  # down, 503, over the cap, hanging
    assert agent.proc.poll() is None


def test_the_agent_ends_cleanly_after_all_that(env):
    ns, agent = env
    assert agent.ready() == 200
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(15) == 0
    assert_nothing_left(agent, keep={p.pid for p in ns.procs if p is not agent.proc})
