"""What the drain counts before it stops Envoy (agent.sidecar.in_flight), against a real Envoy in a
network namespace: the inbound listeners' stats found from config_dump (static and from a control
plane, an IPv4 and an IPv6 address, a listener's own stat prefix), an idle keep-alive connection left out, a request still
running, raw TCP connections and nothing of the outbound listener counted; once the inbound
listeners are closed new connections are refused while the accepted ones run on."""
import json
import shutil
import tempfile
from pathlib import Path

from agent.sidecar.config import wheel_envoy_path
from tests.support.agent import BASE_ENV
from tests.support.process import PY, REPO


def test_counts_what_the_inbound_listeners_still_serve(netns_factory):
    ns = netns_factory("sif")
    work = Path(tempfile.mkdtemp(prefix="in-flight-"))
    try:
        cp = ns.run([PY, str(REPO / "tests/sidecar/in_flight_client.py"), wheel_envoy_path(), str(work)],
                    env=BASE_ENV, check=False, timeout=60)
        assert cp.returncode == 0, cp.stderr[-3000:]
        got = json.loads(cp.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert got["listeners"] == ["listener.127.0.0.1_19006.downstream_cx_active",
                                "listener.127.0.0.1_19009.downstream_cx_active",  # the control plane's
                                "listener.[__1]_19007.downstream_cx_active", "listener.named.downstream_cx_active"]
    assert got["http"] == ["inbound_http"] and got["router_listeners"] == 5
    # the slow request, the three held TCP connections; not the idle keep-alive one, not the outbound one
    assert got["before_close"] == 4
    assert got["inbound_refused"] and got["outbound_open"]
    assert got["after_close"] == 4  # closing the listeners cut nothing
    assert got["slow_answered"] and got["after_slow"] == 3
    assert got["after_all"] == 0
