"""agent.sidecar.in_flight: which stats count what the stopped listeners still serve, from
config_dump answers shaped as Envoy 1.40 writes them (tests/sidecar/test_in_flight_envoy.py checks
the same against a real Envoy), and the count with idle HTTP connections left out."""
from agent.sidecar import in_flight
from agent.sidecar.in_flight import Counts, Plan

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def listener(name, address, port, direction=None, hcm=None, default_hcm=None, stat_prefix=None):
    lis = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": name,
           "address": {"socket_address": {"address": address, "port_value": port}},
           "filter_chains": [{"filters": [{"name": "x", "typed_config": {"@type": HCM, "stat_prefix": hcm}
                                           if hcm else {"@type": TCP, "stat_prefix": "tcp"}}]}]}
    if direction:
        lis["traffic_direction"] = direction
    if default_hcm:
        lis["default_filter_chain"] = {"filters": [{"typed_config": {"@type": HCM, "stat_prefix": default_hcm}}]}
    if stat_prefix:
        lis["stat_prefix"] = stat_prefix
    return lis


STATIC = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.StaticListener",
                       "listener": listener("virtualOutbound", "0.0.0.0", 15001, "OUTBOUND")},
                      {"listener": listener("0.0.0.0_15090", "0.0.0.0", 15090, hcm="stats")},
                      {"listener": listener("0.0.0.0_15021", "0.0.0.0", 15021, hcm="agent")}]}
DYNAMIC = {"configs": [{"name": "virtualInbound", "active_state": {
    "listener": listener("virtualInbound", "0.0.0.0", 15006, "INBOUND", hcm="inbound_0.0.0.0_8080",
                         default_hcm="inbound_passthrough")}},
    {"name": "v6", "active_state": {"listener": listener("v6", "::", 15007, "INBOUND")}},
    {"name": "named", "active_state": {"listener": listener("named", "10.0.0.1", 80, "INBOUND", stat_prefix="mine")}},
    {"name": "warming", "warming_state": {"listener": listener("warming", "0.0.0.0", 1, "INBOUND")}}]}


def configs():
    return in_flight.listeners("static_listeners", STATIC) + in_flight.listeners("dynamic_listeners", DYNAMIC)


def test_masks_name_only_the_fields_read():
    assert in_flight.mask("static_listeners").split(",")[:2] == ["listener.name", "listener.address"]
    assert in_flight.mask("dynamic_listeners") == "active_state.listener"  # Envoy masks no deeper there
    assert in_flight.listeners("dynamic_listeners", {}) == []


def test_inbound_only_plan_is_the_inbound_listeners_and_their_http_managers():
    plan = in_flight.plan(configs(), True, (15021, 15090))
    assert plan.listener_stats == {"listener.0.0.0.0_15006.downstream_cx_active",
                                   "listener.[__]_15007.downstream_cx_active", "listener.mine.downstream_cx_active"}
    assert plan.http_prefixes == {"inbound_0.0.0.0_8080", "inbound_passthrough"}


def test_all_listeners_but_the_agents_own_for_a_router():
    plan = in_flight.plan(configs(), False, (15021, 15090))
    assert "listener.0.0.0.0_15001.downstream_cx_active" in plan.listener_stats
    assert not any("1509" in s or "15021" in s for s in plan.listener_stats)
    assert "stats" not in plan.http_prefixes and "agent" not in plan.http_prefixes


def test_ipv6_addresses_as_envoy_prints_them():
    lis = listener("x", "2001:db8:0:0::10", 15006)
    assert in_flight.listener_stat(lis) == "listener.[2001_db8__10]_15006.downstream_cx_active"
    assert in_flight.listener_stat({"address": {"pipe": {"path": "/x"}}}) is None


def test_stat_prefixes_as_envoy_names_their_stats():
    """Envoy makes `:` `_` in stat names: istiod's inbound manager of an IPv6-only pod."""
    lis = listener("virtualInbound", "::", 15006, "INBOUND", hcm="inbound_::_8080;")
    assert in_flight.http_prefixes(lis) == {"inbound____8080;"}
    assert in_flight.listener_stat({"stat_prefix": "in:v6"}) == "listener.in_v6.downstream_cx_active"


def test_count_leaves_out_idle_http_connections():
    plan = Plan(frozenset({"listener.0.0.0.0_15006.downstream_cx_active"}), frozenset({"in"}))
    stats = {"listener.0.0.0.0_15006.downstream_cx_active": 5,  # 4 HTTP (3 idle, 1 busy) + 1 TCP
             "http.in.downstream_cx_active": 4, "http.in.downstream_rq_active": 1,
             "listener.0.0.0.0_15006.downstream_cx_total": 40, "listener.0.0.0.0_15001.downstream_cx_total": 9}
    assert in_flight.count(stats, plan) == Counts(in_flight=2, accepted=40)
    stats["http.in.downstream_rq_active"] = 7  # HTTP/2: more streams than connections, none idle
    assert in_flight.count(stats, plan).in_flight == 5
    assert in_flight.count({}, plan) == Counts(0, 0)  # never used (or not kept): nothing to wait for
    assert in_flight.count({"listener.0.0.0.0_15006.downstream_cx_active": 0}, plan).in_flight == 0
