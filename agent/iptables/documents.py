"""The restore documents the orchestrator (agent.iptables.apply) feeds iptables-restore besides
the rules themselves: the `-C` check of a rule list, the swap that replaces our live rules in one
transaction, the traffic guardrails, the rollback snapshot; and the structural drift check.

Pure: parsed state and rules in, document text out.
"""
from __future__ import annotations

from collections.abc import Sequence

from agent.iptables import restore
from agent.iptables.rules import Rule

TABLE_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
GUARDRAILS = tuple((chain, proto) for chain in ("INPUT", "FORWARD", "OUTPUT") for proto in ("tcp", "udp"))


def by_table(rules: Sequence[Rule]) -> dict[str, list[Rule]]:
    out: dict[str, list[Rule]] = {}
    for rule in rules:
        out.setdefault(rule.table, []).append(rule)
    return out


def check_document(rules: Sequence[Rule]) -> tuple[str, dict[int, Rule]]:
    """`-C` lines for the rules, grouped by table; and which rule sits on which line."""
    lines: list[str] = []
    where: dict[int, Rule] = {}
    for table, group in by_table(rules).items():
        lines.append(f"*{table}")
        for rule in group:
            lines.append(" ".join(("-C", rule.chain, *rule.args)))
            where[len(lines)] = rule
        lines.append("COMMIT")
    return "".join(line + "\n" for line in lines), where


def snapshot_document(before: str, tables: Sequence[str]) -> str:
    """A full (not --noflush) restore that puts `tables` back as they were in `before`; a table
    that did not exist comes back empty with ACCEPT policies."""
    saved = restore.document_blocks(before)
    blocks = {}
    for table in tables:
        empty = [f":{chain} ACCEPT [0:0]" for chain in TABLE_CHAINS.get(table, ())]
        blocks[table] = saved.get(table) or empty
    return restore.join_blocks(blocks)


def committed_tables(doc: str, failed_line: int | None) -> list[str]:
    """iptables-restore commits table by table: the tables whose COMMIT came before the failing
    line are in the kernel. Unknown line: every table but a lone one may be."""
    tables, current = [], None
    lines = doc.splitlines()
    for number, line in enumerate(lines, 1):
        if line.startswith("*"):
            current = line[1:].strip()
        elif line.strip() == "COMMIT" and current:
            if failed_line is not None and number >= failed_line:
                break
            tables.append(current)
    if failed_line is None:
        return tables if len(tables) > 1 else []
    return tables


def istio_shape(table: str, chain: str, words: Sequence[str]) -> bool:
    """Rules Istio puts in built-in chains that do not jump to an ISTIO_ chain, told apart by
    shape only (Istio's text and iptables-save's both match): the -c/-k interface RETURNs
    (`-i X -j RETURN` in PREROUTING, `-o X -j RETURN` in OUTPUT) and the TPROXY mark/connmark
    plumbing in mangle (agent.iptables.rules builds both). A reconcile removes them whatever flags
    installed them, so switching flags leaves nothing of the old set behind."""
    words = list(words)
    if table not in ("nat", "mangle") or chain not in ("PREROUTING", "OUTPUT") or "-j" not in words:
        return False
    if len(words) == 4 and words[0] in ("-i", "-o") and words[2:] == ["-j", "RETURN"]:
        return (words[0] == "-i") == (chain == "PREROUTING")
    target = words[words.index("-j") + 1] if words.index("-j") + 1 < len(words) else ""
    return table == "mangle" and (target in ("CONNMARK", "MARK") or
                                  (target == "RETURN" and "lo" in words and "--mark" in words))


def ours_in_builtin(table: str, chain: str, args: Sequence[str]) -> bool:
    """A rule of ours in a built-in chain (`args`: the rule without `-A <chain>`): a jump to an
    Istio chain, or one of the shapes above."""
    return not restore.is_istio_chain(chain) and (restore.jumps_to_istio(args) or istio_shape(table, chain, args))


def swap_document(live: restore.State, rules: Sequence[Rule], present: Sequence[Rule]) -> str:
    """One transaction that replaces our live rules with `rules`: delete our rules from built-in
    chains, flush our chains, delete the ones these flags do not create, add the new rules.
    `present` are the other non-jump rules of built-in chains these flags add that are live."""
    new = restore.document_blocks(restore.render(rules))
    blocks: dict[str, list[str]] = {}
    touched = [t for t, chains in live.items() if restore.ours_live({t: chains}) or
               any(ours_in_builtin(t, c, line.split()[2:]) for c, ls in chains.items() for line in ls)]
    for table in dict.fromkeys([*touched, *new]):
        chains = live.get(table, {})
        mine = [c for c in chains if restore.is_istio_chain(c)]
        lines = ["-D" + line[2:] for c, ls in chains.items() for line in ls if ours_in_builtin(table, c, line.split()[2:])]
        lines += [" ".join(("-D", r.chain, *r.args)) for r in present if r.table == table]
        lines += [f"-F {c}" for c in mine]
        created = {line.split()[1] for line in new.get(table, []) if line.startswith("-N ")}
        lines += [f"-X {c}" for c in mine if c not in created]
        lines += [line for line in new.get(table, []) if not (line.startswith("-N ") and line.split()[1] in mine)]
        blocks[table] = lines
    return restore.join_blocks(blocks)


GUARDRAIL_LINES = frozenset(f"-A {chain} -p {proto} -j DROP" for chain, proto in GUARDRAILS)


def guardrail_document(add: bool, live: restore.State) -> str:
    """Istio's guardrails (BuildGuardrails in
    https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/builder/iptables_builder_impl.go):
    DROP tcp/udp in filter INPUT/FORWARD/OUTPUT while a reconcile swaps the rules. Adding first
    removes stale ones found in `live` (iptables-save prints them exactly as GUARDRAIL_LINES), then
    inserts; removing deletes the six we inserted."""
    if not add:
        return restore.join_blocks({"filter": [f"-D {chain} -p {proto} -j DROP" for chain, proto in GUARDRAILS]})
    stale = [line for lines in live.get("filter", {}).values() for line in lines if line in GUARDRAIL_LINES]
    lines = ["-D" + line[2:] for line in stale]
    lines += [f"-I {chain} 1 -p {proto} -j DROP" for chain, proto in GUARDRAILS]
    return restore.join_blocks({"filter": lines})


def drift_reason(want: restore.State, live: restore.State) -> str | None:
    """Istio's structural drift checks (VerifyIptablesState in
    https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/capture/helper.go): every
    expected chain exists, each Istio chain has as many rules as expected, no Istio chain these
    flags do not create. The first difference, in words (the `-C` check comes after)."""
    for table, chains in want.items():
        for chain, lines in chains.items():
            have = live.get(table, {}).get(chain)
            if have is None:
                return f"chain {chain} is missing from table {table}"
            if restore.is_istio_chain(chain) and len(have) != len(lines):
                return f"{table} {chain} has {len(have)} rules where these flags give {len(lines)}"
    for table, chains in live.items():
        for chain in chains:
            if restore.is_istio_chain(chain) and chain not in want.get(table, {}):
                return f"{table} {chain} exists but these flags do not create it"
    return None
