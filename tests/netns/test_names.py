"""The name rules of agent.iptables.names against the real tools, in scratch namespaces: nft
rejects, where our rules put a name, exactly the keywords we refuse; the names we accept come back
from the kernel as themselves with both backends; the ones we refuse would not."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.iptables import nft_rules, nft_script
from agent.iptables.config import IptablesConfig
from agent.iptables.host import HostFacts
from agent.iptables.names import NFT_KEYWORDS, NFT_OWNER_KEYWORDS, interface_problem, owner_problem
from tests.netns.backends import nft_ruleset
from tests.support.netns import Netns, Pod

FACTS = HostFacts(enable_ipv6=True, host_ip="2001:db8::2", dns_v4=("198.18.0.53",), dns_v6=("2001:db8::53",))
BASE = dict(proxy_uids=("1337",), proxy_gids=("1337",), inbound_ports=("*",), redirect_dns=True,
            service_cidrs=("198.18.0.0/15", "2001:db8::/32"))
ODD = ["eth0#", "a;b", "e'th", "a&b", "a@b", "eth+", "eth*", "1eth", "007", "é"]
PLAIN = ["eth0", "eth0.100", "veth_a-b", ".x", "_", "123", "0", "fifteen-bytes-x"]


def lexer_tokens() -> set[str]:
    """The keyword tokens of the installed nft (bison's token names in libnftables): a new nft's
    new keywords show up here, and must then be in names.NFT_KEYWORDS or read as names."""
    libs = sorted(Path("/usr/lib").glob("*/libnftables.so.1*")) + sorted(Path("/usr/lib").glob("libnftables.so.1*"))
    assert libs, "libnftables not found"
    return {m.decode() for m in re.findall(rb'(?<=\x00)"([a-z][a-z0-9_-]*)"(?=\x00)', libs[0].read_bytes())}


def candidates() -> list[str]:
    return sorted((lexer_tokens() | NFT_OWNER_KEYWORDS | set(PLAIN)) - {"string", "number", "junk"})


def with_names(ns: Netns, names: list[str]) -> dict[str, int]:
    """Give the namespace a user and a group per name (ip netns exec binds /etc/netns/<ns>/*), so
    nft resolves them: every rejection left is nft's reading of the script. Returns name -> id."""
    ids = {name: 40000 + i for i, name in enumerate(names)}
    passwd = Path("/etc/passwd").read_text() + "".join(f"{n}:x:{i}:{i}::/:/bin/false\n" for n, i in ids.items())
    group = Path("/etc/group").read_text() + "".join(f"{n}:x:{i}:\n" for n, i in ids.items())
    (ns.etc_dir / "passwd").write_text(passwd)
    (ns.etc_dir / "group").write_text(group)
    return ids


def interface_configs(names: tuple[str, ...]) -> list[IptablesConfig]:
    """Every place our nft rules put an -c/-k name (TPROXY writes -c in mangle too)."""
    return [IptablesConfig(**BASE, tproxy=True, exclude_interfaces=names, kube_virt_interfaces=names)]


def owner_configs(names: tuple[str, ...]) -> list[IptablesConfig]:
    """Every place for -u/-g names and owner groups: with and without DNS capture (the uid rules'
    port sets differ), the include list, and the exclude list's rules."""
    owners = {**BASE, "proxy_uids": names, "proxy_gids": names}
    return [IptablesConfig(**owners, tproxy=True, owner_groups_include=names),
            IptablesConfig(**{**owners, "redirect_dns": False}, owner_groups_exclude=names)]


def nft_errors(ns: Netns, configs: list[IptablesConfig], *, check: bool = True,
               facts: HostFacts = FACTS) -> list[str]:
    """nft's errors for each config's transaction, one `nft -f` each as the product runs it (one
    script after another would not do: nft 1.0.6 keeps its counter keywords, `bytes`, `name` and
    `packets`, after TPROXY's `counter meta mark set ct mark` rule for the rest of a script, and a
    second transaction's names would meet them)."""
    errors = []
    for cfg in configs:
        script = nft_script.render(nft_rules.build(cfg, facts))
        res = ns.run(["nft", *(["-c"] if check else []), "-f", "-"], input=script, check=False)
        errors += [line for line in res.stderr.splitlines() if "Error:" in line]
    return errors


def test_nft_rejects_exactly_the_keywords_we_refuse(netns_factory):
    ns = netns_factory("kw")
    words = [w for w in candidates() if re.fullmatch(r"[a-z_.][a-z0-9_.-]*", w)]
    with_names(ns, words)

    def verdict(word: str) -> tuple[str, bool, bool]:
        iface = len(word) <= 15 and bool(nft_errors(ns, interface_configs((word,))))
        return word, iface, bool(nft_errors(ns, owner_configs((word,))))

    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(verdict, words))
    assert len(words) > 300  # the installed nft's whole keyword list was read
    wrong = [(w, "interface", nft) for w, nft, _ in verdicts
             if len(w) <= 15 and nft != (interface_problem(w, nft=True) is not None)]
    wrong += [(w, "owner", nft) for w, _, nft in verdicts if nft != (owner_problem(w, nft=True) is not None)]
    assert wrong == [], f"(word, place, nft rejects it): update names.NFT_KEYWORDS for this nft: {wrong}"
    assert {w for w, iface, _ in verdicts if iface} == NFT_KEYWORDS


def test_names_we_accept_are_what_nft_applies(netns_factory):
    """Applied for real (nothing but -c here), each accepted name is listed back as itself:
    interfaces as `iifname "<name>"`, owners as the uid/gid the name resolves to."""
    ns = netns_factory("kw")
    words = [w for w in candidates() if interface_problem(w, nft=True) is None and owner_problem(w, nft=True) is None]
    ids = with_names(ns, words)
    for chunk in (tuple(words[i:i + 32]) for i in range(0, len(words), 32)):
        assert nft_errors(ns, interface_configs(chunk), check=False) == []
        listing = nft_ruleset(ns)
        assert all(f'iifname "{w}" ' in listing and f'oifname "{w}" ' in listing for w in chunk), chunk
        assert nft_errors(ns, owner_configs(chunk)[:1], check=False) == []
        listing = nft_ruleset(ns)
        assert all(f"meta skuid {ids[w]} " in listing and f"meta skgid != {ids[w]} " in listing for w in chunk)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("dns", [False, True])
def test_the_counter_scope_tproxy_leaves_open_reaches_no_name(netns_factory, dns, v6):
    """The one rule of ours after which nft 1.0.6 reads `bytes`, `name` and `packets` as keywords
    for the rest of the script comes after every name in the TPROXY transaction (or a later
    `counter` closes it): as names they are fine."""
    ns = netns_factory("kw")
    leaked = ("bytes", "name", "packets")
    with_names(ns, list(leaked))
    facts = HostFacts(enable_ipv6=v6, host_ip="2001:db8::2" if v6 else "198.18.0.2", dns_v4=("198.18.0.53",),
                      dns_v6=("2001:db8::53",))
    cfgs = [IptablesConfig(**{**BASE, "redirect_dns": dns, "proxy_uids": (w,), "proxy_gids": (w,)}, tproxy=True,
                           exclude_interfaces=(w,), kube_virt_interfaces=(w,), **groups)
            for w in leaked for groups in ({"owner_groups_include": (w,)}, {"owner_groups_exclude": (w,)})]
    assert "counter meta mark set ct mark" in nft_script.render(nft_rules.build(cfgs[0], facts))
    assert nft_errors(ns, cfgs, facts=facts) == []
    assert not any(interface_problem(w, nft=True) or owner_problem(w, nft=True) for w in leaked)


@pytest.mark.parametrize("name, listed", [("eth0#", 'iifname "eth0"'), ("007", 'iifname "7"'), ("a&b", 'iifname "`"')])
def test_names_we_refuse_nft_would_misread(netns_factory, name, listed):
    """Accepted by nft without an error, but as another rule: a comment (`eth0` with no verdict),
    a number, an expression. That is why only nft's plain words are taken."""
    ns = netns_factory("kw")
    script = f"add table inet t\nadd chain inet t c\nadd rule inet t c iifname {name} counter return\n"
    ns.run(["nft", "-f", "-"], input=script)
    listing = nft_ruleset(ns)
    assert re.search(rf"\t\t{re.escape(listed)}[ \n]", listing) and f'"{name}"' not in listing, listing
    assert interface_problem(name, nft=True) is not None


def test_iptables_applies_the_odd_names_we_accept_as_themselves(pod_factory):
    """Kernel-valid names other than '"' are one word to iptables-restore: applied, listed as
    given, and --verify reads them back as in place."""
    pod: Pod = pod_factory()
    names = [n for n in ODD + ["-j", "!", "a\\b", "+x", "counter"] if interface_problem(n, nft=False) is None]
    assert len(names) == len(ODD) + 5
    args = ["-p", "15001", "-z", "15006", "-u", "1337", "-i", "*", "-b", "*", "-c", ",".join(names)]
    assert (res := pod.istio_iptables(*args)).returncode == 0, res.stderr
    saved = pod.save()
    assert all(f"-A OUTPUT -o {n} -j RETURN\n" in saved for n in names), saved
    assert (res := pod.istio_iptables(*args, "--verify")).returncode == 0, res.stdout + res.stderr


def test_iptables_restore_misreads_a_quote(netns_factory):
    """Why '"' is refused: iptables-restore takes it as a quote running to the end of the line, and
    applies a rule with no target for an interface named `ab -j RETURN`."""
    ns = netns_factory("kw")
    ns.run(["iptables-restore"], input='*filter\n:X - [0:0]\n-A X -i a"b -j RETURN\nCOMMIT\n')
    assert "-A X -i ab -j RETURN" in ns.run(["iptables", "-S", "X"]).stdout
    assert interface_problem('a"b', nft=False) is not None
