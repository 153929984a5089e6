"""The iptables-restore document (spec §3), iptables-save parsing (§5.3), cleanup commands (§5.5),
the -C/-D forms of a rule, and the `--verify` difference between expected and live state.

Pure: text in, text (or argument lists) out. Executing any of it is agent.iptables.apply's job.
"""
from __future__ import annotations

from agent.iptables.rules import BUILTIN, Rule

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Callable, Sequence

    #: (kind, name) -> numeric id or None; kind is "uid" or "gid". iptables-save prints ids, not names.
    OwnerLookup = Callable[[str, str], "int | None"]

#: table -> chain -> rule lines (`-A CHAIN ...`), the shape of §5.3's state maps.
State = dict[str, dict[str, list[str]]]
SAVE_TABLES = ("filter", "nat", "mangle", "raw")


# ---- render -------------------------------------------------------------------------------------

def render(rules: Sequence[Rule]) -> str:
    """One family's restore document: `* table`, the -N lines, the rules, `COMMIT` (§3)."""
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


def _jumps_to_istio(rule: Rule) -> bool:
    return any(a == "-j" and b.startswith("ISTIO_") for a, b in zip(rule.args, rule.args[1:]))


def cleanup_commands(rules: Sequence[Rule]) -> list[list[str]]:
    """§5.5: deletes in reverse (skipping rules inside ISTIO_ chains unless they jump to one),
    then flush and delete every non-built-in chain in order of first appearance."""
    reversed_rules = list(reversed(rules))
    commands = [delete_args(r) for r in reversed_rules if not r.chain.startswith("ISTIO_") or _jumps_to_istio(r)]
    chains: list[tuple[str, str]] = []
    for r in reversed_rules:
        if r.chain not in BUILTIN and (r.table, r.chain) not in chains:
            chains.append((r.table, r.chain))
    for table, chain in chains:
        commands += [["-t", table, "-F", chain], ["-t", table, "-X", chain]]
    return commands


# ---- parse --------------------------------------------------------------------------------------

def parse_save(text: str) -> State:
    """iptables-save (or a restore document) -> table -> chain -> rule lines, as Istio's §5.3:
    only filter/nat/mangle/raw; `:ISTIO*` and `-N ISTIO*` create empty chains; every -A/-I line is
    kept under its chain, built-in chains included."""
    state: State = {}
    table: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            name = line[1:].strip()
            table = name if name in SAVE_TABLES else None
            continue
        if table is None:
            continue
        chains = state.setdefault(table, {})
        words = line.split()
        if line.startswith(":ISTIO"):
            chains.setdefault(words[0][1:], [])
        elif words[0] in ("-N", "--new") and len(words) > 1 and words[1].startswith("ISTIO"):
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
        if rule.target and rule.target not in BUILTIN and rule.target.startswith("ISTIO"):
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
    import shlex  # --verify only: imported when needed (start-up cost)

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
    import ipaddress  # --verify only: imported when needed (start-up cost)

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
    for chain in [c for c in want if c.startswith("ISTIO")] + [c for c in have if c.startswith("ISTIO") and c not in want]:
        if chain not in have:
            lines.append(f"+:{chain} - [0:0]")
        elif chain not in want:
            lines.append(f"-:{chain} - [0:0]")
        lines += _ordered_diff(want.get(chain, []), have.get(chain, []), key)
    for chain in [c for c in want if not c.startswith("ISTIO")] + [c for c in have if not c.startswith("ISTIO") and c not in want]:
        have_keys = {key(l) for l in have.get(chain, [])}
        want_keys = {key(l) for l in want.get(chain, [])}
        lines += [f"+{l}" for l in want.get(chain, []) if key(l) not in have_keys]
        lines += [f"-{l}" for l in have.get(chain, []) if key(l) not in want_keys and _mentions_istio(l)]
    return lines


def _mentions_istio(line: str) -> bool:
    words = line.split()
    return any(a == "-j" and b.startswith("ISTIO") for a, b in zip(words, words[1:]))


def _ordered_diff(want: list[str], have: list[str], key: Callable[[str], str]) -> list[str]:
    import difflib  # --verify only: imported when needed (start-up cost)

    want_keys, have_keys = [key(l) for l in want], [key(l) for l in have]
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=have_keys, b=want_keys, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            continue
        out += [f"-{l}" for l in have[a0:a1]]
        out += [f"+{l}" for l in want[b0:b1]]
    return out
