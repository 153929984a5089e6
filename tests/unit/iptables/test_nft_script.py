"""The nft rule model and the transaction writer: inserts, chain declarations, cleanup,
and the closure the kernel insists on (every jump lands on a declared chain)."""
from __future__ import annotations

import itertools

import pytest

from agent.iptables import nft_rules, nft_script
from agent.iptables.host import HostFacts
from agent.iptables.nft_rules import MANGLE, NAT, RAW, Rule, RuleSet

from ._nft_support import final_rules
from ._support import load

CHAIN = (NAT, "istio-output")
A, B, C = "tcp dport 15008 return", "meta l4proto tcp jump x", "meta l4proto tcp redirect to :15001"


def chain_of(*rules: tuple[str, int | None]) -> RuleSet:
    return RuleSet(tuple(Rule(*CHAIN, text, index) for text, index in rules))


# Istio's builder goldens (tools/istio-nftables/pkg/builder/testdata): a chain's final order after a
# mix of appends and inserts (the texts here are ours; only the order matters).
@pytest.mark.parametrize("rules, final", [
    ([(A, None)], [A]),
    ([(A, None), (B, None), (C, None)], [A, B, C]),  # append-multi
    ([(A, None), (B, 0)], [B, A]),  # insert-single
    ([(A, None), (B, 0), (C, 1)], [B, C, A]),  # insert-multi
    ([(A, None), (B, 0), (C, None)], [B, A, C]),  # append-insert-multi, multi-rules-v4-v6
    ([(A, 0)], [A]),  # an insert into an empty chain is an append: nft refuses it
    ([(A, None), (B, 1)], [A, B]),  # an index with no rule there is an append too
])
def test_final_order(rules, final):
    assert final_rules(chain_of(*rules)) == {CHAIN: tuple(final)}


def test_inserts_are_written_with_their_index_only_when_nft_accepts_them():
    ops = nft_script.operations(chain_of((A, 0), (B, 0), (C, 2), (A, 1)))
    assert [op.index for op in ops] == [None, 0, None, 1]
    assert ops[1].text() == f"insert rule inet istio-proxy-nat istio-output index 0 {B}"
    assert ops[2].text() == f"add rule inet istio-proxy-nat istio-output {C}"


def build(argv, env=None, **facts) -> RuleSet:
    return nft_rules.build(load(argv, env), HostFacts(**facts))


def test_kube_virt_inserts_land_in_iptables_order():
    """-k eth1,eth2 -i '*': the redirects before the returns, each pair last-first."""
    final = final_rules(build(["-k", "eth1,eth2", "-i", "*"]))[NAT, "prerouting"]
    assert final == ("iifname eth2 counter jump istio-redirect", "iifname eth1 counter jump istio-redirect",
                     "iifname eth2 counter return", "iifname eth1 counter return")


def test_tproxy_ipv6_inserts():
    """Istio's indexes 0, 1, 1, 2: the ::6 return ends before mark != 1338, which ends before 127.0.0.6."""
    final = final_rules(build(["-m", "TPROXY", "-b", "*"], enable_ipv6=True))[MANGLE, "istio-inbound"]
    assert [t.split(" counter")[0] for t in final] == [
        "meta l4proto tcp mark 1337", "iifname lo meta l4proto tcp ip6 saddr ::6/128",
        "iifname lo meta l4proto tcp mark != 1338", "iifname lo meta l4proto tcp ip saddr 127.0.0.6/32",
        "meta l4proto tcp ct state related,established", "meta l4proto tcp"]


def test_cleanup_is_the_same_six_lines_whatever_the_flags():
    want = "".join(f"add table inet {t}\ndelete table inet {t}\n" for t in (NAT, MANGLE, RAW))
    assert nft_script.render_cleanup() == want
    cfg = load(["-m", "TPROXY", "-b", "*", "--cleanup-only"])
    assert nft_script.transaction(cfg, nft_rules.build(cfg, HostFacts())) == want


def test_a_table_without_rules_is_not_written_and_chains_follow_their_rules():
    assert "istio-proxy-mangle" not in nft_script.render(build([]))
    script = nft_script.render(build(["-b", ""]))
    assert script.startswith("add table inet istio-proxy-nat\nflush table inet istio-proxy-nat\n")
    assert "prerouting" not in script and "istio-proxy-raw" not in script
    assert [c.name for c in nft_script.declared(build(["-b", ""]))] == [
        "output", "istio-inbound", "istio-redirect", "istio-in-redirect", "istio-output"]


def test_a_rule_in_an_unknown_chain_is_refused():
    with pytest.raises(ValueError, match="undeclared"):
        nft_script.render(RuleSet((Rule(NAT, "nope", "counter return"),)))


def jump_target(rule: Rule) -> str | None:
    """The chain a rule jumps to, if it ends in `jump <chain>`."""
    words = rule.text.split()
    return words[-1] if len(words) >= 2 and words[-2] == "jump" else None


def test_jump_target():
    assert jump_target(Rule(NAT, "output", "counter jump istio-output")) == "istio-output"
    assert jump_target(Rule(NAT, "output", "counter return")) is None


# -- every jump lands on a declared chain: nft rejects the whole script otherwise ------------------

FLAGS = [[], ["-b", "*"], ["-b", "80,443", "-m", "TPROXY"], ["-b", "*", "-m", "TPROXY", "-d", "15020"],
         ["-m", "TPROXY"], ["-i", "*", "-k", "eth1"], ["-i", "10.0.0.0/8,2001:db8::/32", "-k", "eth1"],
         ["-u", ",", "-g", ","], ["--drop-invalid", "-c", "eth2"], ["-i", "127.0.0.1/32"]]
DNS = [[], ["--redirect-dns"], ["--redirect-dns", "--capture-all-dns"]]
HOSTS = [dict(), dict(enable_ipv6=True), dict(dns_v4=("198.18.0.53",)), dict(dns_v6=("2001:db8::53",)),
         dict(enable_ipv6=True, dns_v6=("2001:db8::53",)), dict(dns_v4=("198.18.0.53",), dns_v6=("2001:db8::53",))]


def unresolved_jumps(ruleset: RuleSet) -> set[tuple[str, str]]:
    declared = {(c.table, c.name) for c in nft_script.declared(ruleset)}
    return {(r.table, jump_target(r)) for r in ruleset.rules if jump_target(r)} - declared


@pytest.mark.parametrize("flags, dns, host", list(itertools.product(FLAGS, DNS, HOSTS)))
def test_every_jump_lands_on_a_declared_chain(flags, dns, host):
    assert unresolved_jumps(build(flags + dns, **host)) == set()


def test_ipv6_only_resolvers_on_an_ipv4_pod():
    """Istio's bug: it writes the nat jump to istio-output-dns and the raw jump to istio-inbound for
    these resolvers, but no rule in either chain, so nft rejects the whole script. Here the IPv6
    servers do not count on an IPv4 pod, as in the iptables mode: no capture, no dangling jump;
    the proxy's DNS-aware returns and conntrack zones are still written, as with iptables."""
    ruleset = build(["--redirect-dns"], dns_v6=("2001:db8::53",))
    texts = [(r.table, r.chain, r.text) for r in ruleset.rules]
    assert (NAT, "istio-output", "counter jump istio-output-dns") not in texts
    assert (RAW, "prerouting", "counter jump istio-inbound") not in texts
    assert (RAW, "output", "counter jump istio-output-dns") in texts
    assert any("tcp dport != { 53, 15008 }" in t for _, _, t in texts)
    assert not any("2001:db8::53" in t for _, _, t in texts)
    # with IPv6 on, the same resolvers are captured
    on = nft_script.render(build(["--redirect-dns"], enable_ipv6=True, dns_v6=("2001:db8::53",)))
    assert "add rule inet istio-proxy-nat istio-output counter jump istio-output-dns\n" in on
    assert "ip6 daddr 2001:db8::53/128 udp dport 53 counter redirect to :15053\n" in on
