"""The bootstrap's own HTTP listeners (15090, the mTLS metrics listeners, 15021) route one path each,
exactly, after normalising it, and answer 404 to everything else, in every configuration the
golden cases cover. tests/sidecar/test_admin_exposure.py sends the attacks to a real Envoy."""
import pytest

from agent.sidecar import bootstrap
from tests.unit.sidecar.test_bootstrap_sidecar import CASES, make_config, standalone_reference

HARDENING = {"normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "REJECT_REQUEST"}
NOT_FOUND = {"match": {"prefix": "/"}, "direct_response": {"status": 404}}


def local_hcms(data: dict) -> dict[int, dict]:
    """port -> the HTTP connection manager of each static listener that has one."""
    out = {}
    for listener in data["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] == "envoy.filters.network.http_connection_manager":
                    out[listener["address"]["socket_address"]["port_value"]] = f["typed_config"]
    return out


def routed(hcm: dict) -> dict[str, str]:
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    *forward, last = vhost["routes"]
    assert last == NOT_FOUND
    assert all(set(r) == {"match", "route"} and set(r["match"]) == {"path"} for r in forward), forward
    return {r["match"]["path"]: r["route"]["cluster"] for r in forward}


@pytest.mark.parametrize("name", sorted(CASES) + ["standalone_reference"])
def test_every_local_listener_routes_exact_normalised_paths(name):
    data = standalone_reference() if name == "standalone_reference" else bootstrap.build_bootstrap(make_config(name))
    hcms = local_hcms(data)
    assert {15090, 15021} <= set(hcms)
    for port, hcm in hcms.items():
        assert {k: hcm.get(k) for k in HARDENING} == HARDENING, port
    assert routed(hcms[15090]) == {"/stats/prometheus": "prometheus_stats"}
    assert routed(hcms[15021]) == {"/healthz/ready": "agent"}


def test_secure_metrics_listeners_too():
    hcms = local_hcms(bootstrap.build_bootstrap(make_config("telemetry")))
    assert routed(hcms[15091]) == {"/stats/prometheus": "prometheus_stats"}
    assert routed(hcms[15092]) == {"/stats/prometheus": "agent", "/metrics": "agent"}
    for port in (15091, 15092):
        assert {k: hcms[port].get(k) for k in HARDENING} == HARDENING
