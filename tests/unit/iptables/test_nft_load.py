"""The scripts the builder writes are ones the real nft takes: each golden case's transaction loads
in a fresh namespace, loads again without changing the rule set (a re-run), and the cleanup
transaction leaves nothing; and the IPv6-only-resolver case, which Istio's script fails on, loads. Needs root and Debian's nftables (scripts/install.sh)."""
from __future__ import annotations

import pytest

from agent.iptables import nft_rules, nft_script
from agent.iptables.host import HostFacts

from ._nft_support import BY_NAME, NAMES, facts
from ._support import GROUPS, load

pytestmark = pytest.mark.netns


def nft(ns, script: str, check: bool = True):
    return ns.run(["nft", "-f", "-"], input=script, check=check)


def listing(ns) -> str:
    return ns.run(["nft", "--stateless", "list", "ruleset"]).stdout


def with_groups(ns, names: list[str]) -> None:
    """Group names in the rules are resolved by nft when it loads them (ip netns exec bind-mounts
    this file over /etc/group)."""
    base = open("/etc/group").read()
    known = {line.split(":")[0] for line in base.splitlines()}
    extra = "".join(f"{g}:x:{GROUPS[g]}:\n" for g in names if g not in known)
    (ns.etc_dir / "group").write_text(base + extra)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "skip-rule-apply"])
def test_golden_case_loads_reloads_and_cleans_up(name, netns_factory):
    ns = netns_factory("nl")
    with_groups(ns, ["java", "ftp"])
    case = BY_NAME[name]
    cfg = load(case["args"], case["env"])
    script = nft_script.transaction(cfg, nft_rules.build(cfg, facts(case)))
    nft(ns, script)
    first = listing(ns)
    nft(ns, script)
    assert listing(ns) == first
    nft(ns, nft_script.render_cleanup())
    assert listing(ns) == ""


def test_ipv6_only_resolvers_on_an_ipv4_pod_load(netns_factory):
    ns = netns_factory("nl")
    ruleset = nft_rules.build(load(["--redirect-dns"]), HostFacts(dns_v6=("2001:db8::53",)))
    script = nft_script.render(ruleset)
    nft(ns, script)
    assert "ct zone set 1" in listing(ns)
    # Istio's script for this host also jumps from nat istio-output to istio-output-dns (and from
    # raw prerouting to raw istio-inbound), chains it never declares: the first is enough to fail it
    istio = script.replace("add rule inet istio-proxy-nat istio-output ip daddr 127.0.0.1/32",
                           "add rule inet istio-proxy-nat istio-output counter jump istio-output-dns\n"
                           "add rule inet istio-proxy-nat istio-output ip daddr 127.0.0.1/32")
    nft(ns, nft_script.render_cleanup())
    failed = nft(ns, istio, check=False)
    assert failed.returncode != 0 and "No such file or directory" in failed.stderr
    assert listing(ns) == ""  # one transaction: nothing of it applied
