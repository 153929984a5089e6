"""Reading our nft tables back (agent.iptables.nft_live) and the real-mode decisions
(agent.iptables.nft_apply) without a kernel: nft's spelling of rules against the script's, the
transaction simulated, the listing parsed, the difference, and which runs apply what. The same
code against real nft: tests/netns/test_nft_readback.py and test_nft_lifecycle.py."""
from __future__ import annotations

import io

import pytest

from agent.iptables import nft_apply, nft_live, nft_rules, nft_script
from agent.iptables.config import IptablesConfig
from agent.iptables.host import HostFacts
from agent.iptables.logger import log
from agent.iptables.runner import Result
from agent.logformat import Level

from ._nft_support import BY_NAME, CASES, expected, facts, final_rules, run

NAT, MANGLE = "istio-proxy-nat", "istio-proxy-mangle"


# ---- one spelling -------------------------------------------------------------------------------

@pytest.mark.parametrize("script, listed", [
    ("meta l4proto tcp tcp dport 15008 counter return", "tcp dport 15008 counter return"),
    ("oifname lo ip saddr 127.0.0.6/32 counter return", 'oifname "lo" ip saddr 127.0.0.6 counter return'),
    ("oifname lo meta l4proto tcp ip6 daddr != ::1/128 tcp dport != { 53, 15008 } skuid 1337 counter jump x",
     'oifname "lo" ip6 daddr != ::1 tcp dport != { 53, 15008 } meta skuid 1337 counter jump x'),
    ("meta l4proto tcp mark 1337 counter ct mark set mark",
     "meta l4proto tcp meta mark 0x00000539 counter ct mark set meta mark"),
    ("tproxy ip to :15006 meta mark set 1337 counter accept",
     "tproxy ip to :15006 meta mark set 0x00000539 counter accept"),
    ("meta l4proto tcp ct state related,established counter jump istio-divert",
     "meta l4proto tcp ct state established,related counter packets 12 bytes 720 jump istio-divert"),
    ("ip daddr 10.1.2.3/8 counter return", "ip daddr 10.0.0.0/8 counter return"),  # host bits masked
    ("ip6 daddr ::127.0.0.53/128 udp dport 53 counter redirect to :15053",
     "ip6 daddr ::7f00:35 udp dport 53 counter redirect to :15053"),
    ("skuid root counter return", "meta skuid 0 counter return"),  # names resolved, as nft does
    ("type nat hook prerouting priority -100", "type nat hook prerouting priority dstnat; policy accept;"),
    ("type route hook output priority -150", "type route hook output priority mangle; policy accept;"),
])
def test_script_and_listing_spellings_agree(script, listed):
    assert nft_live.canon(script) == nft_live.canon(listed)


@pytest.mark.parametrize("one, other", [
    ("tcp dport 15020 counter return", "tcp dport 15021 counter return"),
    ("meta skuid 1337 counter return", "meta skuid != 1337 counter return"),
    ("meta l4proto tcp counter redirect to :15001", "counter redirect to :15001"),  # no tcp match after it
    ("ip daddr 10.0.0.0/8 counter return", "ip daddr 10.0.0.0/16 counter return"),
    ("type filter hook prerouting priority -150", "type filter hook prerouting priority mangle; policy drop;"),
])
def test_different_rules_stay_different(one, other):
    assert nft_live.canon(one) != nft_live.canon(other)


# ---- the transaction, simulated -----------------------------------------------------------------

def _rules(state: nft_live.State, table: str, chain: str) -> list[str]:
    return state[table].chains[chain].rules


def test_inserts_land_before_the_rule_at_their_index_and_delete_then_add_starts_empty():
    script = (f"add table inet {NAT}\nadd chain inet {NAT} c\n"
              f"add rule inet {NAT} c udp dport 1 return\n"
              f"insert rule inet {NAT} c index 0 udp dport 2 return\n"
              f"insert rule inet {NAT} c index 1 udp dport 3 return\n")
    state = nft_live.simulate(script)
    assert _rules(state, NAT, "c") == ["udp dport 2 return", "udp dport 3 return", "udp dport 1 return"]
    again = nft_live.simulate(script + f"add table inet {NAT}\nflush table inet {NAT}\n")
    assert again[NAT].chains["c"].rules == [] and "c" in again[NAT].chains  # flushed; the chain stays
    assert nft_live.simulate(script + nft_script.render_cleanup()) == {}
    assert nft_live.simulate("add table inet other\nadd table ip istio-proxy-nat\n") == {}  # not ours


@pytest.mark.parametrize("name", [c["name"] for c in CASES if c["name"] not in ("cleanup-only", "skip-rule-apply")])
def test_simulated_goldens_agree_with_the_builders_final_order(name):
    """Two models of the same transaction: the script text run here, and nft_script's own order."""
    case = BY_NAME[name]
    cfg = _cfg(case)
    final = final_rules(nft_rules.build(cfg, facts(case)))
    state = nft_live.simulate(expected(case))
    assert {(t, c): tuple(ch.rules) for t, table in state.items() for c, ch in table.chains.items()} == \
        {key: tuple(map(nft_live.canon, texts)) for key, texts in final.items()}


def _cfg(case: dict) -> IptablesConfig:
    from agent import flags
    from agent.iptables import config, host

    parsed = flags.parse(config.FLAGS + flags.LOG_FLAGS, case["args"], case["env"], allow_unknown=False)
    return config.load(parsed, case["env"], user_id=host.user_id, group_id=lambda name: 20000)


# ---- the listing --------------------------------------------------------------------------------

LISTING = """table ip nat {
\tchain OUTPUT {
\t\ttype nat hook output priority -100; policy accept;
\t\tcounter return
\t}
}
table inet istio-proxy-mangle {
\tset blocked {
\t\ttype ipv4_addr
\t\telements = { 10.0.0.1 }
\t}

\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta l4proto tcp counter packets 3 bytes 180 jump istio-inbound
\t}

\tchain istio-inbound {
\t\tmeta l4proto tcp meta mark 0x00000539 counter return
\t}
}
table inet other {
\tchain x {
\t\tcounter
\t}
}
"""


def test_listing_keeps_our_tables_their_chains_and_foreign_objects():
    state = nft_live.parse_listing(LISTING)
    assert list(state) == [MANGLE]
    table = state[MANGLE]
    assert list(table.chains) == ["prerouting", "istio-inbound"]
    assert table.chains["prerouting"].hook == "type filter hook prerouting priority -150 policy accept"
    assert table.chains["prerouting"].rules == ["meta l4proto tcp counter jump istio-inbound"]
    assert table.objects == ["set blocked"]
    expected_state = nft_live.simulate(
        f"add table inet {MANGLE}\n"
        f"add chain inet {MANGLE} prerouting {{ type filter hook prerouting priority -150 ; }}\n"
        f"add chain inet {MANGLE} istio-inbound\n"
        f"add rule inet {MANGLE} prerouting meta l4proto tcp counter jump istio-inbound\n"
        f"add rule inet {MANGLE} istio-inbound meta l4proto tcp mark 1337 counter return\n")
    assert nft_live.diff(expected_state, state) == [f"-set blocked (in table inet {MANGLE})"]


def test_difference_lines_and_the_first_one_in_words():
    want = nft_live.simulate(f"add table inet {NAT}\nadd chain inet {NAT} c\n"
                             f"add rule inet {NAT} c udp dport 1 return\nadd rule inet {NAT} c udp dport 2 return\n")
    have = nft_live.simulate(f"add table inet {NAT}\nadd chain inet {NAT} c\nadd chain inet {NAT} stale\n"
                             f"add rule inet {NAT} c udp dport 2 return\nadd table inet {MANGLE}\n")
    assert nft_live.diff(want, have) == [
        f"+rule inet {NAT} c udp dport 1 return",
        f"-chain inet {NAT} stale",
        f"-table inet {MANGLE}",
    ]
    assert nft_live.first_difference(want, have) == f"missing: rule inet {NAT} c udp dport 1 return"
    assert nft_live.first_difference(want, want) is None and nft_live.diff(want, want) == []


# ---- the real-mode decisions, against a recording runner ------------------------------------------

class FakeNft:
    """Answers the listing with `live` (nft -s list ruleset inet text); records what is applied."""

    def __init__(self, live: str = "", fail: str = "") -> None:
        self.live, self.fail = live, fail
        self.applied: list[str] = []
        self.spawned: list[list[str]] = []

    def listing(self) -> str:
        return self.live

    def apply(self, script: str) -> None:
        if self.fail:
            raise nft_apply.NftError(self.fail)
        self.applied.append(script)

    def run(self, argv: list[str], stdin: str | None = None) -> Result:
        self.spawned.append(argv)
        return Result(0, "", "")


def _listing(script: str) -> str:
    """A listing nft could print for `script` (rules as canon writes them, which parse back alike)."""
    lines = []
    for table, t in nft_live.simulate(script).items():
        lines.append(f"table inet {table} {{")
        for name, chain in t.chains.items():
            lines += [f"\tchain {name} {{", *([f"\t\t{chain.hook};"] if chain.hook else []),
                      *[f"\t\t{r}" for r in chain.rules], "\t}"]
        lines.append("}")
    return "\n".join(lines) + "\n"


SCRIPT = nft_script.render(nft_rules.build(IptablesConfig(proxy_uids=("1337",), proxy_gids=("1337",),
                                                          inbound_ports=("*",), service_cidrs=("*",)), HostFacts()))
OTHER = SCRIPT.replace("redirect to :15001", "redirect to :15002")


def _run(live: str, **flags) -> tuple[int, FakeNft, str]:
    runner, out = FakeNft(live), io.StringIO()
    cfg = IptablesConfig(**flags)
    code = nft_apply.main(cfg, HostFacts(), SCRIPT, nft_script.render_cleanup(), out, runner)
    return code, runner, out.getvalue()


DELETE_NAT = f"add table inet {NAT}\ndelete table inet {NAT}\n"


def test_nothing_live_applies_istios_transaction_alone():
    code, runner, _ = _run("")
    assert code == 0 and runner.applied == [SCRIPT]


def test_a_replacement_deletes_the_live_tables_in_the_same_transaction():
    live = _listing(OTHER) + f"table inet {MANGLE} {{\n}}\n"
    code, runner, _ = _run(live, reconcile=True)
    assert code == 0 and runner.applied == [DELETE_NAT + f"add table inet {MANGLE}\ndelete table inet {MANGLE}\n" + SCRIPT]


def test_in_place_applies_nothing_unless_forced():
    assert _run(_listing(SCRIPT))[1].applied == []
    assert _run(_listing(SCRIPT), reconcile=True)[1].applied == []
    assert len(_run(_listing(SCRIPT), force_apply=True)[1].applied) == 1


@pytest.fixture
def logs():
    saved = log.level, log.as_json, log.stream
    stream = io.StringIO()
    log.configure(Level.INFO, False, stream)
    yield stream
    log.level, log.as_json, log.stream = saved


def test_drift_fails_without_reconcile_and_is_replaced_with_it(logs):
    code, runner, _ = _run(_listing(OTHER))
    assert code == 1 and runner.applied == []
    assert "re-run with --reconcile" in logs.getvalue()
    code, runner, _ = _run(_listing(OTHER), reconcile=True)
    assert code == 0 and runner.applied == [DELETE_NAT + SCRIPT]


def test_verify_prints_the_difference_and_applies_nothing():
    code, runner, out = _run(_listing(OTHER), verify=True)
    assert code == 1 and runner.applied == []
    assert f"+rule inet {NAT} istio-redirect meta l4proto tcp counter redirect to :15001" in out.splitlines()
    assert _run(_listing(SCRIPT), verify=True)[::2] == (0, "")


def test_cleanup_runs_only_when_something_of_ours_is_live():
    assert _run("", cleanup_only=True)[1].applied == []
    assert _run(_listing(OTHER), cleanup_only=True)[1].applied == [DELETE_NAT]


def test_nft_errors_are_one_line():
    stderr = ("/dev/stdin:9:53-56: Error: Group does not exist\n"
              "add rule inet istio-proxy-nat istio-output skgid != java counter return\n"
              "                                                    ^^^^\n"
              "/dev/stdin:12:1-3: Error: syntax error\nxyz\n^^^\n")
    script = "".join(f"line {i}\n" for i in range(1, 9)) + "add rule ... skgid != java counter return\n"
    assert nft_apply._first_error(stderr, script) == \
        "Error: Group does not exist in `add rule ... skgid != java counter return` (and 1 more)"
    assert nft_apply._first_error("netlink: Error: cache initialization failed:\n Operation not permitted\n", "") == \
        "netlink: Error: cache initialization failed: Operation not permitted"
    assert nft_apply._version("nftables v1.0.6 (Lester Gooch #5)\n") == (1, 0, 6)


def test_missing_nft_is_istios_message(tmp_path):
    with pytest.raises(nft_apply.NftError, match="missing in the sidecar container image"):
        nft_apply.find_nft(False, path=str(tmp_path))
    with pytest.raises(nft_apply.NftError, match="missing on the host filesystem"):
        nft_apply.find_nft(True, path=str(tmp_path))


def test_dry_run_never_reaches_the_real_mode(monkeypatch):
    monkeypatch.setattr(nft_apply, "main", lambda *a, **k: pytest.fail("real mode in a dry run"))
    code, out, _ = run(["--native-nftables", "--dry-run", "-u", "1337"])
    assert code == 0 and out.startswith("add table inet istio-proxy-nat\n")
