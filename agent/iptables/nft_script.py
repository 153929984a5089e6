"""The `nft -f -` transaction of `--native-nftables`: the rule set of agent.iptables.nft_rules as
the text Istio hands to nft, byte for byte (knftables' rendering of the transaction Istio builds in
https://github.com/istio/istio/blob/master/tools/istio-nftables/pkg/capture/run.go).

Public API (pure, no I/O):

* `render(ruleset) -> str`: the whole transaction. For each of our tables that has rules, in the
  order nat, mangle, raw: `add table`, `flush table`, one `add chain` per chain that has a rule (in
  the fixed order of nft_rules.CHAINS), then every rule as `add rule ...` or
  `insert rule ... index N ...`. A table without rules is not written, so a live copy of it is left
  alone, as Istio does (a real run deletes the live ones first: agent.iptables.nft_apply).
* `render_cleanup() -> str`: the `--cleanup-only` transaction, whatever the flags: `add` + `delete`
  for each table.
* `transaction(cfg, ruleset) -> str`: what a run with these flags hands to nft (the cleanup script
  under `--cleanup-only`, else `render`).
* `operations(ruleset) -> list[Op]`: the rule commands in transaction order, each rule with the
  index it is written with (None: appended).
* `declared(ruleset) -> tuple[Chain, ...]`: the chains the transaction declares.

How inserts are written (Istio's rule, since nft refuses an insert into an empty chain or at an
index with no rule): a rule with an index is written as an append when its chain has no rule yet in
this transaction, or the index is not below the number of rules written to it so far; otherwise as
`insert rule ... index N`, which nft places before the rule now at N.
"""
from __future__ import annotations

from agent.iptables.config import IptablesConfig
from agent.iptables.nft_rules import CHAINS, FAMILY, TABLES, Chain, Rule, RuleSet
from agent.iptables.record import Record


class Op(Record):
    """One rule as the transaction writes it: appended (`index` None) or inserted at `index`."""

    rule: Rule
    index: int | None

    def text(self) -> str:
        r = self.rule
        where = f"{FAMILY} {r.table} {r.chain}"
        if self.index is None:
            return f"add rule {where} {r.text}"
        return f"insert rule {where} index {self.index} {r.text}"


def operations(ruleset: RuleSet) -> list[Op]:
    """Every rule, table by table in transaction order, with the index it is written with."""
    ops = []
    for table in TABLES:
        written: dict[str, int] = {}
        for rule in ruleset.table(table):
            count = written.get(rule.chain, 0)
            index = rule.index if rule.index is not None and rule.index < count else None
            ops.append(Op(rule, index))
            written[rule.chain] = count + 1
    return ops


def declared(ruleset: RuleSet) -> tuple[Chain, ...]:
    """The chains that have a rule, in declaration order. A rule in a chain Istio never declares
    would make nft fail, so it is a programming error here."""
    used = {(r.table, r.chain) for r in ruleset.rules}
    unknown = used - {(c.table, c.name) for c in CHAINS}
    if unknown:
        raise ValueError(f"rules in undeclared chains: {sorted(unknown)}")
    return tuple(c for c in CHAINS if (c.table, c.name) in used)


def _chain_line(chain: Chain) -> str:
    spec = f" {{ {chain.hook} ; }}" if chain.hook else ""
    return f"add chain {FAMILY} {chain.table} {chain.name}{spec}"


def render(ruleset: RuleSet) -> str:
    lines: list[str] = []
    chains, ops = declared(ruleset), operations(ruleset)
    for table in TABLES:
        if not any(c.table == table for c in chains):
            continue
        lines += [f"add table {FAMILY} {table}", f"flush table {FAMILY} {table}"]
        lines += [_chain_line(c) for c in chains if c.table == table]
        lines += [op.text() for op in ops if op.rule.table == table]
    return "".join(line + "\n" for line in lines)


def _delete(table: str) -> list[str]:
    # `add` first: `delete` of a table that does not exist fails the whole transaction
    return [f"add table {FAMILY} {table}", f"delete table {FAMILY} {table}"]


def render_cleanup() -> str:
    return "".join(line + "\n" for table in TABLES for line in _delete(table))


def transaction(cfg: IptablesConfig, ruleset: RuleSet) -> str:
    return render_cleanup() if cfg.cleanup_only else render(ruleset)
