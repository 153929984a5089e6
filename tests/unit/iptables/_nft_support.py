"""The nft golden cases (nft_golden/cases.json) as command lines, host facts and expected scripts."""
from __future__ import annotations

import json
from pathlib import Path

from agent.iptables import nft_script
from agent.iptables.host import HostFacts, parse_resolv_conf
from agent.iptables.nft_rules import RuleSet

from ._support import Host, run  # noqa: F401 (re-exported for the nft tests)

GOLDEN = Path(__file__).parent / "nft_golden"
CASES: list[dict] = json.loads((GOLDEN / "cases.json").read_text())
NAMES = [c["name"] for c in CASES]
BY_NAME = {c["name"]: c for c in CASES}


def facts(case: dict) -> HostFacts:
    """The host facts the case's namespace gives: the servers as a command reading resolv.conf
    sees them (canonical text: `::127.0.0.53` -> `::7f00:35`)."""
    host = case["host"]
    servers = host.get("dns_servers_v4", []) + host.get("dns_servers_v6", [])
    v4, v6 = parse_resolv_conf("".join(f"nameserver {s}\n" for s in servers))
    ipv6 = host.get("enable_ipv6", False)
    return HostFacts(enable_ipv6=ipv6, host_ip="2001:db8::2" if ipv6 else "198.18.0.2", dns_v4=v4, dns_v6=v6)


def expected(case: dict) -> str:
    """The golden, with the resolvers in the canonical text a real command prints."""
    text = (GOLDEN / f"{case['name']}.golden").read_text()
    for server in case["host"].get("dns_servers_v6", []):
        canonical = parse_resolv_conf(f"nameserver {server}\n")[1][0]
        text = text.replace(f" {server}/", f" {canonical}/")
    return text


def script(case: dict) -> tuple[int, str, str]:
    """The case's dry run: `--native-nftables --dry-run <args>` on its host."""
    return run(["--native-nftables", "--dry-run", *case["args"]], case["env"], Host(facts(case)))


def final_rules(ruleset: RuleSet) -> dict[tuple[str, str], tuple[str, ...]]:
    """A second model of the transaction, from nft_script's operations rather than its text: each
    declared chain's rules in the order they end up (an insert lands before the rule at its index),
    in the script's spelling. agent.iptables.nft_live.simulate, which runs the text, must agree."""
    chains: dict[tuple[str, str], list[str]] = {(c.table, c.name): [] for c in nft_script.declared(ruleset)}
    for op in nft_script.operations(ruleset):
        texts = chains[op.rule.table, op.rule.chain]
        if op.index is None:
            texts.append(op.rule.text)
        else:
            texts.insert(op.index, op.rule.text)
    return {key: tuple(texts) for key, texts in chains.items()}
