"""The iptables-restore document, iptables-save parsing, cleanup commands, the -C/-D forms of a
rule, and the `--verify` difference between expected and live state.

Pure: text in, text (or argument lists) out. Executing any of it is agent.iptables.apply's job.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.iptables.rules import BUILTIN, Rule

#: (kind, name) -> numeric id or None; kind is "uid" or "gid". iptables-save prints ids, not names.
OwnerLookup = Callable[[str, str], "int | None"]

#: table -> chain -> rule lines (`-A CHAIN ...`), as Istio's GetStateFromSave builds it
#: (https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/builder/iptables_builder_impl.go).
State = dict[str, dict[str, list[str]]]
SAVE_TABLES = ("filter", "nat", "mangle", "raw")

#: Every chain Istio creates is named ISTIO_<something> (ISTIO_INBOUND, ISTIO_OUTPUT, ISTIO_DROP ...).
#: The underscore is part of the test on purpose: Istio's own residue check and cleanup test
#: `ISTIO_` (https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/capture/helper.go),
#: so a chain named e.g. ISTIOFOO belongs to someone else and is neither reported nor removed.
ISTIO_PREFIX = "ISTIO_"


def is_istio_chain(name: str) -> bool:
    return name.startswith(ISTIO_PREFIX)


def jumps_to_istio(words: Sequence[str]) -> bool:
    """The rule's words (`-A X ... -j ISTIO_Y`, or a Rule's args) jump to one of Istio's chains."""
    return any(a in ("-j", "--jump") and is_istio_chain(b) for a, b in zip(words, words[1:]))


def ours_live(state: State) -> bool:
    """Any Istio chain, or a jump to one: rules from some istio-iptables run are in place."""
    return any(is_istio_chain(chain) or any(jumps_to_istio(line.split()) for line in lines)
               for chains in state.values() for chain, lines in chains.items())


# ---- render -------------------------------------------------------------------------------------

def render(rules: Sequence[Rule]) -> str:
    """One family's restore document, as Istio's BuildV4Restore/BuildV6Restore writes it: per table
    (sorted) `* table`, the -N line of every non-built-in chain, the rules, `COMMIT`."""
    tables: dict[str, list[str]] = {"filter": [], "nat": [], "mangle": []}
    seen: set[tuple[str, str]] = set()
    for rule in rules:
        tables.setdefault(rule.table, [])
        _new_chain(tables, seen, rule.table, rule.chain)
    for rule in rules:
        if rule.target is not None:
            _new_chain(tables, seen, rule.table, rule.target)
    for rule in rules:
        tables[rule.table].append(rule.text())
    out = []
    for name in sorted(tables):
        if tables[name]:
            out += [f"* {name}", *tables[name], "COMMIT"]
    return "".join(line + "\n" for line in out)


def _new_chain(tables: dict[str, list[str]], seen: set[tuple[str, str]], table: str, chain: str) -> None:
    if (table, chain) in seen:
        return
    seen.add((table, chain))
    if chain not in BUILTIN:
        tables[table].append(f"-N {chain}")


# ---- rule forms ---------------------------------------------------------------------------------

def check_args(rule: Rule) -> list[str]:
    """`-t <table> -C <chain> <args>`: the rule with -A/-I replaced by -C, position dropped."""
    return ["-t", rule.table, "-C", rule.chain, *rule.args]


def delete_args(rule: Rule) -> list[str]:
    return ["-t", rule.table, "-D", rule.chain, *rule.args]


def cleanup_commands(rules: Sequence[Rule]) -> list[list[str]]:
    """Istio's cleanup, one command at a time (BuildCleanupV4/V6 in
    https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/builder/iptables_builder_impl.go):
    deletes in reverse (skipping rules inside Istio chains unless they jump to one), then flush and
    delete every non-built-in chain in order of first appearance."""
    reversed_rules = list(reversed(rules))
    commands = [delete_args(r) for r in reversed_rules if not is_istio_chain(r.chain) or jumps_to_istio(r.args)]
    chains: list[tuple[str, str]] = []
    for r in reversed_rules:
        if r.chain not in BUILTIN and (r.table, r.chain) not in chains:
            chains.append((r.table, r.chain))
    for table, chain in chains:
        commands += [["-t", table, "-F", chain], ["-t", table, "-X", chain]]
    return commands


# ---- parse --------------------------------------------------------------------------------------

def document_blocks(text: str) -> dict[str, list[str]]:
    """The one parser of restore/save documents: table -> its lines between `*table` and COMMIT,
    stripped, in order, without comments, blank lines or anything outside a table."""
    blocks: dict[str, list[str]] = {}
    table: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            blocks[table] = []
        elif line == "COMMIT":
            table = None
        elif table is not None:
            blocks[table].append(line)
    return blocks


def join_blocks(blocks: dict[str, list[str]]) -> str:
    """The inverse of document_blocks; tables without lines are left out."""
    out = []
    for table, lines in blocks.items():
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "".join(line + "\n" for line in out)


def parse_save(text: str) -> State:
    """iptables-save (or a restore document) -> table -> chain -> rule lines, as Istio's
    GetStateFromSave: only filter/nat/mangle/raw; `:ISTIO_*` and `-N ISTIO_*` create empty
    chains; every -A/-I line is kept under its chain, built-in chains included."""
    state: State = {}
    for table, lines in document_blocks(text).items():
        if table not in SAVE_TABLES:
            continue
        chains = state.setdefault(table, {})
        for line in lines:
            words = line.split()
            if line.startswith(":") and is_istio_chain(words[0][1:]):
                chains.setdefault(words[0][1:], [])
            elif words[0] in ("-N", "--new") and len(words) > 1 and is_istio_chain(words[1]):
                chains.setdefault(words[1], [])
            elif words[0] in ("-A", "--append", "-I", "--insert") and len(words) > 1:
                chains.setdefault(words[1], []).append(line)
    return {t: c for t, c in state.items() if c}


def expected_state(rules: Sequence[Rule]) -> State:
    """The chains as the kernel holds them after the restore: -I lines land at their position,
    and every line reads `-A <chain> ...` as iptables-save prints it."""
    state: State = {}
    for rule in rules:
        chains = state.setdefault(rule.table, {})
        chain = chains.setdefault(rule.chain, [])
        line = " ".join(("-A", rule.chain, *rule.args))
        if rule.position is None:
            chain.append(line)
        else:
            chain.insert(rule.position - 1, line)
        if rule.target and is_istio_chain(rule.target):
            chains.setdefault(rule.target, [])
    return state


# ---- verify: expected vs live -------------------------------------------------------------------

_GENERIC = {"-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d", "-i": "-i", "--in-interface": "-i",
            "-o": "-o", "--out-interface": "-o", "-p": "-p", "--protocol": "-p"}
_GENERIC_ORDER = ("-s", "-d", "-i", "-o", "-p")
#: Defaults iptables-save prints that Istio's rule text leaves out.
_DEFAULT_TARGET_OPTIONS = {("--nfmask", "0xffffffff"), ("--ctmask", "0xffffffff"), ("--on-ip", "0.0.0.0"),
                           ("--on-ip", "::")}


def _tokens(line: str) -> list[str]:
    import shlex  # --verify only

    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _number(text: str) -> str:
    """Marks print as hex in iptables-save (0x539) and as decimal in Istio's rules (1337)."""
    parts = text.split("/")
    try:
        return "/".join(str(int(p, 0)) for p in parts)
    except ValueError:
        return text


def _address(text: str) -> str:
    import ipaddress  # --verify only

    try:
        return str(ipaddress.ip_network(text, strict=False))  # the kernel masks host bits
    except ValueError:
        return text


def rule_key(line: str, owner_id: OwnerLookup | None = None) -> str:
    """A comparison key that makes Istio's rule text and iptables-save's rendering of it equal:
    generic matches in save order, no implicit `-m tcp`/`-m udp`, decimal marks, masked CIDRs,
    target options sorted and without the defaults save adds. Best effort for foreign rules."""
    words = _tokens(line)
    if len(words) >= 3 and words[0] in ("-I", "--insert") and words[2].isdigit():
        del words[2]
    head, body = ["-A", words[1] if len(words) > 1 else ""], words[2:]
    jump = body.index("-j") if "-j" in body else len(body)
    generic: dict[str, str] = {}
    matches: list[str] = []
    i = 0
    while i < jump:
        neg = body[i] == "!" and i + 1 < jump and body[i + 1] in _GENERIC
        name = body[i + 1] if neg else body[i]
        if name in _GENERIC and i + 1 + neg < jump:
            value = body[i + 1 + neg]
            short = _GENERIC[name]
            generic[short] = ("! " if neg else "") + (_address(value) if short in ("-s", "-d") else value)
            i += 2 + neg
            continue
        if body[i] == "-m" and i + 1 < jump and body[i + 1] in ("tcp", "udp"):
            i += 2
            continue
        word = body[i]
        if owner_id and i and body[i - 1] in ("--uid-owner", "--gid-owner") and not word.isdigit():
            found = owner_id(body[i - 1][2:5], word)
            word = str(found) if found is not None else word
        matches.append(_number(word) if not word.startswith("-") else word)
        i += 1
    target = body[jump:jump + 2]
    options = _target_options(body[jump + 2:])
    parts = head + [f"{k} {generic[k]}" for k in _GENERIC_ORDER if k in generic] + matches + target + options
    return " ".join(parts).replace("--to-port ", "--to-ports ").replace("--set-mark ", "--set-xmark ")


def _target_options(words: list[str]) -> list[str]:
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            pairs.append((words[i], words[i + 1]))
            i += 2
        else:
            pairs.append((words[i], ""))
            i += 1
    out = []
    for name, value in sorted(pairs):
        if (name, value) in _DEFAULT_TARGET_OPTIONS:
            continue
        if name in ("--set-mark", "--set-xmark", "--tproxy-mark") and "/" not in value:
            value += "/0xffffffff"
        out.append(f"{name} {_number(value)}".strip())
    return out


def diff(expected: State, live: State, owner_id: OwnerLookup | None = None) -> list[str]:
    """The difference, in iptables-save form: per table `*table`, then `+` lines for what is
    missing from the kernel and `-` lines for what should not be there, then `COMMIT`.
    Empty when the rules are in place. ISTIO_* chains must match exactly (in order); built-in
    chains must contain the expected rules, and any other rule there that jumps to an ISTIO_ chain
    is reported as stale. Rules of other tools in built-in chains are left alone. `owner_id`
    resolves user/group names in `--uid-owner`/`--gid-owner` (e.g. `-u istio-proxy`), which
    iptables-save prints as numbers."""
    key = (lambda line: rule_key(line, owner_id)) if owner_id else rule_key
    out: list[str] = []
    for table in sorted(set(expected) | set(live)):
        lines = _table_diff(expected.get(table, {}), live.get(table, {}), key)
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return out


def _table_diff(want: dict[str, list[str]], have: dict[str, list[str]], key: Callable[[str], str]) -> list[str]:
    lines: list[str] = []
    for chain in [c for c in want if is_istio_chain(c)] + [c for c in have if is_istio_chain(c) and c not in want]:
        if chain not in have:
            lines.append(f"+:{chain} - [0:0]")
        elif chain not in want:
            lines.append(f"-:{chain} - [0:0]")
        lines += _ordered_diff(want.get(chain, []), have.get(chain, []), key)
    for chain in [c for c in want if not is_istio_chain(c)] + [c for c in have if not is_istio_chain(c) and c not in want]:
        have_keys = {key(l) for l in have.get(chain, [])}
        want_keys = {key(l) for l in want.get(chain, [])}
        lines += [f"+{l}" for l in want.get(chain, []) if key(l) not in have_keys]
        lines += [f"-{l}" for l in have.get(chain, []) if key(l) not in want_keys and jumps_to_istio(l.split())]
    return lines


def _ordered_diff(want: list[str], have: list[str], key: Callable[[str], str]) -> list[str]:
    import difflib  # --verify only

    want_keys, have_keys = [key(l) for l in want], [key(l) for l in have]
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=have_keys, b=want_keys, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            continue
        out += [f"-{l}" for l in have[a0:a1]]
        out += [f"+{l}" for l in want[b0:b1]]
    return out
