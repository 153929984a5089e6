"""Properties of the builder/renderer/parser over generated valid settings (fast: 60 examples each)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.iptables import restore, rules
from agent.iptables.host import HostFacts

from ._support import load

PORT = st.integers(1, 65535).map(str)
PORTS = st.lists(PORT, max_size=3).map(",".join)
CIDR4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: f"{t[0] >> 24}.{(t[0] >> 16) & 255}.{(t[0] >> 8) & 255}.{t[0] & 255}/{t[1]}")
CIDR6 = st.sampled_from(["2001:db8::/32", "2001:db8:1::/48", "::1/128", "fd00::/8"])
CIDRS = st.lists(st.one_of(CIDR4, CIDR6), max_size=3).map(",".join)
NICS = st.lists(st.sampled_from(["eth1", "eth2", "veth+"]), max_size=2, unique=True).map(",".join)
IDS = st.lists(st.sampled_from(["0", "1337", "3", "istio-proxy"]), min_size=1, max_size=2).map(",".join)

ARGV = st.fixed_dictionaries({
    "-m": st.sampled_from(["", "REDIRECT", "TPROXY"]),
    "-b": st.one_of(st.just("*"), PORTS), "-d": PORTS, "-q": PORTS, "-o": PORTS,
    "-i": st.one_of(st.just("*"), CIDRS), "-x": CIDRS, "-c": NICS, "-k": NICS, "-u": IDS,
}).map(lambda d: [x for k, v in d.items() for x in (k, v)])
SWITCHES = st.lists(st.sampled_from(["--redirect-dns", "--capture-all-dns", "--drop-invalid"]), unique=True)
FACTS = st.builds(HostFacts, enable_ipv6=st.booleans(),
                  dns_v4=st.sampled_from([(), ("198.18.0.20",)]), dns_v6=st.sampled_from([(), ("2001:db8::20",)]))
SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(argv=ARGV, switches=SWITCHES, facts=FACTS)
def test_render_parse_round_trip_and_self_diff(argv, switches, facts):
    rs = rules.build(load(argv + switches), facts)
    assert bool(rs.v6) == facts.enable_ipv6
    for family in (4, 6):
        fam = rs.family(family)
        parsed = restore.parse_save(restore.render(fam))
        for r in fam:
            assert " ".join(r.command) in parsed[r.table][r.chain]
        assert sum(len(lines) for chains in parsed.values() for lines in chains.values()) == len(fam)
        expected = restore.expected_state(fam)
        assert restore.diff(expected, expected) == []


@SETTINGS
@given(argv=ARGV, switches=SWITCHES, facts=FACTS)
def test_cleanup_undoes_every_rule(argv, switches, facts):
    rs = rules.build(load(argv + switches), facts)
    for family in (4, 6):
        fam = rs.family(family)
        cmds = restore.cleanup_commands(fam)
        deleted = {(c[1], c[3], tuple(c[4:])) for c in cmds if c[2] == "-D"}
        flushed = {(c[1], c[3]) for c in cmds if c[2] == "-F"}
        assert flushed == {(c[1], c[3]) for c in cmds if c[2] == "-X"}
        for r in fam:
            assert (r.table, r.chain) in flushed or (r.table, r.chain, r.args) in deleted
        # every rule that leads into one of our chains is removed before the chain is deleted
        for r in fam:
            if r.target and r.target.startswith("ISTIO_"):
                assert (r.table, r.chain, r.args) in deleted


@SETTINGS
@given(argv=ARGV, switches=SWITCHES, facts=FACTS)
def test_rule_text_has_no_empty_or_spaced_argument(argv, switches, facts):
    rs = rules.build(load(argv + switches), facts)
    for r in rs.v4 + rs.v6:
        assert all(a and not any(c.isspace() for c in a) for a in r.command)
    for family, fam in ((4, rs.v4), (6, rs.v6)):
        for r in fam:
            addresses = [b for a, b in zip(r.args, r.args[1:]) if a in ("-s", "-d")]
            assert all((":" in a) == (family == 6) for a in addresses), r.text()
