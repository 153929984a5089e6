"""Variants of the capture rules, each in its own fresh pod, proven with real traffic:
TPROXY (with its policy routing), IPv6 (v6-only and dual-stack), -b lists, -i/-x CIDRs,
-o/-q ports and DNS capture. Every test runs for both backends (iptables, native nftables) with
the same expectations, except where Istio's nft mode behaves differently on purpose (said there)."""
from __future__ import annotations


from tests.netns.backends import has_capture, init, state
from tests.support.netns import APP_UID, POD4, POD6, PROXY_UID, REMOTE4, REMOTE6, Pod

BASE = ["-p", "15001", "-z", "15006", "-u", "1337"]
SECOND_REMOTE4 = "198.18.0.21"


def start(pod_factory, backend: str, args: list[str], *, transparent: bool = False, **pod_kw) -> Pod:
    pod = pod_factory(**pod_kw)
    if pod.ipv4:
        pod.remote.run(["ip", "addr", "add", f"{SECOND_REMOTE4}/24", "dev", "eth0"])
    pod.remote.spawn_listener(tcp="9090,9091,8080", udp="53", tag="remote", uid=None)
    pod.spawn_listener(tcp="15001,15006,15053", udp="15053", tag="proxy", uid=PROXY_UID, transparent=transparent)
    pod.spawn_listener(tcp="8080,8081,8082,15090", tag="app", uid=APP_UID)
    res = init(pod, backend, *args)
    assert res.returncode == 0, res.stderr
    return pod


def conntrack_zone(pod: Pod, peer: str) -> str:
    """The conntrack zone of the pod's UDP flow from `peer` (`addr:port`) to port 53."""
    port = peer.rsplit(":", 1)[1]
    entries = pod.run(["cat", "/proc/net/nf_conntrack"]).stdout.splitlines()
    entry = next(e for e in entries if f" sport={port} dport=53 " in e)
    return entry.split(" zone=", 1)[1].split()[0] if " zone=" in entry else "0"


def landed(reply: dict) -> tuple:
    return reply.get("tag"), reply.get("listener"), reply.get("orig")


# ---- TPROXY -------------------------------------------------------------------------------------

TPROXY_ARGS = BASE + ["-m", "TPROXY", "-i", "*", "-x", "", "-b", "*", "-d", "15090", "--dual-stack"]


def test_tproxy_inbound_outbound_and_policy_routing(pod_factory, backend):
    pod = start(pod_factory, backend, TPROXY_ARGS, transparent=True, ipv6=True)
    remote = pod.remote.client(uid=None)
    assert landed(remote.tcp(POD4, 8080))[:3] == ("proxy", 15006, f"{POD4}:8080")
    assert landed(remote.tcp(POD6, 8080))[:3] == ("proxy", 15006, f"[{POD6}]:8080")
    assert landed(remote.tcp(POD4, 15090))[:2] == ("app", 15090)
    assert landed(pod.client(uid=APP_UID).tcp(REMOTE4, 9090)) == ("proxy", 15001, f"{REMOTE4}:9090")
    assert landed(pod.client(uid=PROXY_UID).tcp(REMOTE4, 9090))[:2] == ("remote", 9090)
    assert landed(pod.client(uid=APP_UID).tcp(POD4, 8080))[:2] == ("app", 8080)  # its own pod IP
    assert landed(pod.client(uid=PROXY_UID).tcp(POD4, 8080)) == ("proxy", 15006, f"{POD4}:8080")
    assert landed(pod.client(uid=APP_UID).tcp("127.0.0.1", 8080))[:2] == ("app", 8080)
    for family in ("-4", "-6"):
        rules = pod.run(["ip", family, "rule", "show"]).stdout
        assert rules.count("fwmark 0x539 lookup 133") == 1, rules
        assert "local default dev lo" in pod.run(["ip", family, "route", "show", "table", "133"]).stdout
    assert "inet6 ::6/128" in pod.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    # a re-run adds no second `ip rule` (Istio's blind add would)
    before = state(pod)
    assert init(pod, backend, *TPROXY_ARGS).returncode == 0
    assert pod.run(["ip", "-4", "rule", "show"]).stdout.count("fwmark 0x539 lookup 133") == 1
    assert state(pod) == before


def test_tproxy_without_a_transparent_listener(pod_factory, backend):
    """Inbound TCP that arrives before the proxy listens on -z: iptables' TPROXY target drops it;
    Istio's nft `tproxy` statement falls through, so it reaches the app unproxied."""
    pod = pod_factory()
    pod.spawn_listener(tcp="8080", tag="app", uid=APP_UID)
    assert init(pod, backend, *TPROXY_ARGS).returncode == 0
    reply = pod.remote.client(uid=None).tcp(POD4, 8080, timeout=1)
    if backend == "iptables":
        assert "error" in reply, reply
    else:
        assert landed(reply)[:2] == ("app", 8080), reply


# ---- IPv6 ---------------------------------------------------------------------------------------

INIT_ARGS = BASE + ["-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15020"]


def test_ipv6_only_pod_is_captured_both_ways(pod_factory, backend):
    pod = start(pod_factory, backend, INIT_ARGS, ipv4=False, ipv6=True)
    assert has_capture(pod, backend, v6=True)
    assert landed(pod.remote.client(uid=None).tcp(POD6, 8080)) == ("proxy", 15006, f"[{POD6}]:8080")
    assert landed(pod.client(uid=APP_UID).tcp(REMOTE6, 9090)) == ("proxy", 15001, f"[{REMOTE6}]:9090")
    assert landed(pod.client(uid=PROXY_UID).tcp(REMOTE6, 9090))[:2] == ("remote", 9090)
    assert landed(pod.client(uid=APP_UID).tcp("::1", 8080))[:2] == ("app", 8080)
    assert landed(pod.remote.client(uid=None).tcp(POD6, 15090))[:2] == ("app", 15090)
    assert "inet6 ::6/128" in pod.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    assert landed(pod.client(uid=PROXY_UID, source="::6").tcp(POD6, 8080))[:2] == ("app", 8080)


def test_dual_stack_pod_is_captured_in_both_families(pod_factory, backend):
    pod = start(pod_factory, backend, INIT_ARGS + ["--dual-stack"], ipv6=True)
    assert landed(pod.remote.client(uid=None).tcp(POD4, 8080)) == ("proxy", 15006, f"{POD4}:8080")
    assert landed(pod.remote.client(uid=None).tcp(POD6, 8080)) == ("proxy", 15006, f"[{POD6}]:8080")
    assert landed(pod.client(uid=APP_UID).tcp(REMOTE6, 9090)) == ("proxy", 15001, f"[{REMOTE6}]:9090")
    assert landed(pod.client(uid=APP_UID).tcp(REMOTE4, 9090)) == ("proxy", 15001, f"{REMOTE4}:9090")


def test_ipv6_is_off_when_the_first_address_is_ipv4(pod_factory, backend):
    pod = start(pod_factory, backend, INIT_ARGS, ipv6=True)  # no --dual-stack: IPv4 comes first
    assert not has_capture(pod, backend, v6=True)  # no IPv6 rule is written
    inbound6 = landed(pod.remote.client(uid=None).tcp(POD6, 8080))
    if backend == "iptables":
        assert inbound6[:2] == ("app", 8080)
    else:
        # Istio's nft mode writes one `inet` table: the rules without an `ip` match (the jump to
        # istio-inbound, the redirect to 15006) see IPv6 packets too, so IPv6 is captured anyway
        assert inbound6 == ("proxy", 15006, f"[{POD6}]:8080")


# ---- inbound port lists, CIDRs, outbound ports -----------------------------------------------------

def test_inbound_port_list_captures_only_listed_ports_and_ignores_d(pod_factory, backend):
    pod = start(pod_factory, backend, BASE + ["-i", "*", "-b", "8080,8081", "-d", "8080"])
    remote = pod.remote.client(uid=None)
    assert landed(remote.tcp(POD4, 8080)) == ("proxy", 15006, f"{POD4}:8080")  # -d is ignored with a -b list
    assert landed(remote.tcp(POD4, 8081)) == ("proxy", 15006, f"{POD4}:8081")
    assert landed(remote.tcp(POD4, 8082))[:2] == ("app", 8082)


def test_no_inbound_ports_means_no_inbound_capture(pod_factory, backend):
    pod = start(pod_factory, backend, BASE + ["-i", "*", "-b", ""])
    assert landed(pod.remote.client(uid=None).tcp(POD4, 8080))[:2] == ("app", 8080)
    assert landed(pod.client(uid=APP_UID).tcp(REMOTE4, 9090))[:2] == ("proxy", 15001)


def test_service_cidr_include_and_exclude(pod_factory, backend):
    pod = start(pod_factory, backend, BASE + ["-i", "198.18.0.0/24", "-x", f"{REMOTE4}/32", "-b", "*"])
    app = pod.client(uid=APP_UID)
    assert landed(app.tcp(REMOTE4, 9090))[:2] == ("remote", 9090)  # excluded
    assert landed(app.tcp(SECOND_REMOTE4, 9090)) == ("proxy", 15001, f"{SECOND_REMOTE4}:9090")


def test_service_cidr_outside_the_include_list_is_not_captured(pod_factory, backend):
    pod = start(pod_factory, backend, BASE + ["-i", f"{SECOND_REMOTE4}/32", "-b", "*"])
    app = pod.client(uid=APP_UID)
    assert landed(app.tcp(REMOTE4, 9090))[:2] == ("remote", 9090)
    assert landed(app.tcp(SECOND_REMOTE4, 9090))[:2] == ("proxy", 15001)


def test_outbound_port_exclusion(pod_factory, backend):
    pod = start(pod_factory, backend, BASE + ["-i", "*", "-b", "*", "-o", "9090"])
    app = pod.client(uid=APP_UID)
    assert landed(app.tcp(REMOTE4, 9090))[:2] == ("remote", 9090)
    assert landed(app.tcp(REMOTE4, 9091)) == ("proxy", 15001, f"{REMOTE4}:9091")


def test_outbound_port_inclusion_without_cidrs(pod_factory, backend):
    pod = start(pod_factory, backend, BASE + ["-i", "", "-b", "*", "-q", "9091"])
    app = pod.client(uid=APP_UID)
    assert landed(app.tcp(REMOTE4, 9090))[:2] == ("remote", 9090)
    assert landed(app.tcp(REMOTE4, 9091)) == ("proxy", 15001, f"{REMOTE4}:9091")


def test_uid_and_gid_exclusions(pod_factory, backend):
    """-u and -g each exempt their traffic: the client runs as uid N with gid N."""
    pod = start(pod_factory, backend, BASE[:-2] + ["-u", "1337,1400", "-g", "1500", "-i", "*", "-b", "*"])
    assert landed(pod.client(uid=APP_UID).tcp(REMOTE4, 9090)) == ("proxy", 15001, f"{REMOTE4}:9090")
    for uid in (PROXY_UID, 1400, 1500):
        assert landed(pod.client(uid=uid).tcp(REMOTE4, 9090))[:2] == ("remote", 9090), uid


# ---- DNS ----------------------------------------------------------------------------------------

def test_dns_to_the_resolv_conf_server_lands_on_15053(pod_factory, backend):
    pod = start(pod_factory, backend, INIT_ARGS + ["--redirect-dns"])  # resolv.conf: nameserver 198.18.0.20
    app = pod.client(uid=APP_UID)
    udp = app.udp(REMOTE4, 53)
    assert (udp.get("tag"), udp.get("listener"), udp.get("got")) == ("proxy", 15053, "query"), udp
    assert landed(app.tcp(REMOTE4, 53))[:2] == ("proxy", 15053)
    # the agent's own upstream queries (uid 1337) go out
    upstream = pod.client(uid=PROXY_UID).udp(REMOTE4, 53)
    assert upstream.get("tag") == "remote"
    # conntrack zones keep the two apart: app <-> agent in zone 2, agent <-> upstream in zone 1
    assert conntrack_zone(pod, udp["peer"]) == "2" and conntrack_zone(pod, upstream["peer"]) == "1"
    # another server is not captured without --capture-all-dns
    assert pod.client(uid=APP_UID).udp(SECOND_REMOTE4, 53).get("tag") == "remote"


def test_capture_all_dns_captures_any_server(pod_factory, backend):
    pod = start(pod_factory, backend, INIT_ARGS + ["--redirect-dns", "--capture-all-dns"])
    assert pod.client(uid=APP_UID).udp(SECOND_REMOTE4, 53).get("listener") == 15053
