"""Fault matrix, control plane: down when the agent starts, then up; then gone after ready.

The agent runs the 2020 control-plane command line (`--discoveryAddress 127.0.0.1:15010
--controlPlaneAuthPolicy NONE`) against the test ADS server (`python -m tests.support.ads`), inside
the test's own namespace.
"""
from __future__ import annotations

import signal
import subprocess
import time

from tests.support.agent import APP, BASE_ENV, Agent, assert_nothing_left, curl
from tests.support.process import PY, REPO, wait_until

ARGS = ["--discoveryAddress", "127.0.0.1:15010", "--controlPlaneAuthPolicy", "NONE", "--concurrency", "1"]
ENV = {"POD_NAME": "app-0", "POD_NAMESPACE": "default", "INSTANCE_IP": "127.0.0.1",
       "TERMINATION_DRAIN_DURATION_SECONDS": "0", "ISTIO_DELTA_XDS": "false"}  # the test ADS server: SotW only


def _control_plane(ns) -> subprocess.Popen:
    ads = subprocess.Popen(ns.argv([PY, "-m", "tests.support.ads", "--port", "15010", "--backend-port", "8080",
                                    "--listener-port", "10000"]),
                           cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=BASE_ENV)
    ns.procs.append(ads)
    assert ads.stdout.readline().strip() == "ready"
    ads.stdin.write("release\n")
    ads.stdin.flush()
    assert ads.stdout.readline().strip() == "released"
    return ads


def test_control_plane_down_at_start_then_up_then_gone(ns, work):
    app = ns.spawn([PY, APP, "--http", "8080"], wait_ready=True)
    agent = Agent.start(ns, work, *ARGS, env=ENV, standalone=False)
    # Down at start: the agent and Envoy keep running, not ready, and the log says why.
    wait_until(lambda: "status server listening" in agent.log(), 30, what="status server up")
    time.sleep(1.5)
    assert agent.proc.poll() is None
    assert agent.ready() == 503
    assert "Envoy proxy is NOT ready: control plane unreachable: failed to connect to upstream 127.0.0.1:15010" \
        in agent.log()
    assert len(agent.envoy_pids()) == 1

    # Up: ready without any restart of the agent or Envoy (Envoy's own xDS retry backoff).
    envoy = agent.envoy_pids()
    ads = _control_plane(ns)
    wait_until(lambda: agent.ready() == 200, 30, 0.1, "ready once the control plane serves")
    assert agent.envoy_pids() == envoy
    assert curl(ns, "http://127.0.0.1:10000/ok") == (200, "app peer=127.0.0.1")

    # Gone after ready: Envoy keeps the config it has; readiness and traffic are unaffected.
    ads.kill()
    ads.wait(5)
    time.sleep(2.0)
    assert agent.ready() == 200
    assert curl(ns, "http://127.0.0.1:10000/ok") == (200, "app peer=127.0.0.1")
    assert agent.proc.poll() is None and agent.envoy_pids() == envoy

    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(15) == 0
    assert_nothing_left(agent, keep={app.pid})
