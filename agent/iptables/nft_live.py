"""What our nftables tables hold, read back, and compared with what a script would make of them.

Istio's nft mode never reads the kernel back (every run rewrites its tables blindly); we do, so that
a re-run with the same flags is a no-op, a different rule set is reported as drift, and `--verify`
can print the difference. Both sides become the same model, `State`: per table, its chains (base
chain hook line and rules, in order), plus any other object (set, map, ...) found in it.

* `simulate(script)` runs the text of one `nft -f -` transaction (the `add table` / `flush table` /
  `delete table` / `add chain` / `add rule` / `insert rule ... index N` lines our renderer writes)
  against an empty ruleset, as the kernel would.
* `parse_listing(text)` reads `nft -s list ruleset inet`.

nft does not print a rule as it was written (`meta l4proto tcp tcp dport 15008` is listed as
`tcp dport 15008`, `skuid 1337` as `meta skuid 1337`, `mark 1337` as `meta mark 0x00000539`,
`ip daddr 127.0.0.1/32` as `ip daddr 127.0.0.1`, `iifname eth0` as `iifname "eth0"`, the priority
`-100` of a prerouting nat chain as `dstnat`, user and group names as their ids, ...). So every
rule and hook line, on both sides, goes through `canon`, which writes any of those spellings the
same way; the readback test loads every conformance golden and checks the two sides agree.
"""
from __future__ import annotations

import ipaddress
import re

from agent.iptables import host
from agent.iptables.nft_rules import FAMILY, TABLES
#: nft's names for the standard priorities (the `inet` family), as `list` prints them.
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_TOKEN = re.compile(r'"[^"]*"|\{[^}]*\}|[^\s;]+')
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_ADDRESS_KEYS = {"saddr", "daddr"}
_OWNER_KEYS = {"skuid": "uid", "skgid": "gid"}


class Chain:
    """One chain: `hook` is the canonical base-chain line ("" for a regular chain)."""

    __slots__ = ("hook", "rules")

    def __init__(self, hook: str = "") -> None:
        self.hook = hook
        self.rules: list[str] = []

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and (self.hook, self.rules) == (other.hook, other.rules)

    def __repr__(self) -> str:
        return f"Chain({self.hook!r}, {self.rules!r})"


class Table:
    """One table: its chains in declaration order, and other objects (`set foo`) found in it."""

    __slots__ = ("chains", "objects")

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}
        self.objects: list[str] = []

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Table) and (self.chains, sorted(self.objects)) == (other.chains, sorted(other.objects))

    def __repr__(self) -> str:
        return f"Table({self.chains!r}, {self.objects!r})"


#: table name -> Table, only for our tables.
State = dict[str, Table]


# ---- the canonical spelling ---------------------------------------------------------------------

def _address(text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _owner(kind: str, text: str) -> str:
    if text.isdigit():
        return text
    found = host.owner_id(kind, text)
    return str(found) if found is not None else text


def _set(text: str) -> str:
    items = [i.strip() for i in text.strip("{} ").split(",") if i.strip()]
    return "{" + ",".join(sorted(items, key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i))) + "}"


def _value(key: str, value: str) -> str:
    """One match or statement value, given the word before it."""
    if value.startswith("{"):
        return _set(value)
    if key in _ADDRESS_KEYS:
        return _address(value)
    if key in _OWNER_KEYS:
        return _owner(_OWNER_KEYS[key], value)
    if key == "state":
        return ",".join(sorted(value.split(",")))
    return value


def canon(text: str) -> str:
    """A rule (or a chain's `type ... hook ... priority ...` line) in one spelling whatever nft
    version or writer produced it; two rules the kernel holds the same way come out equal."""
    words = [w[1:-1] if w.startswith('"') else w for w in _TOKEN.findall(text)]
    if words[:1] == ["type"]:
        return _hook(words)
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "counter":  # `counter packets N bytes M` when listed with counters
            out.append(w)
            i += 5 if words[i + 1:i + 2] == ["packets"] else 1
            continue
        if w == "meta" and words[i + 1:i + 3] in (["l4proto", "tcp"], ["l4proto", "udp"]) and \
                words[i + 2] in words[i + 3:]:
            i += 3  # implied by the tcp/udp header match later in the rule; nft drops it too
            continue
        if w in ("mark", "skuid", "skgid") and (not out or out[-1] not in ("meta", "ct")):
            out.append("meta")  # `mark 1337` and `meta mark 1337` are the same match
        if _HEX.fullmatch(w):
            w = str(int(w, 16))
        elif out and (key := out[-1] if out[-1] != "!=" else (out[-2] if len(out) > 1 else "")):
            w = _value(key, w)
        out.append(w)
        i += 1
    return " ".join(out)


def _hook(words: list[str]) -> str:
    """`type nat hook prerouting priority dstnat policy accept` from either spelling."""
    fields = {"policy": "accept"}
    for key, value in zip(words[::2], words[1::2]):
        fields[key] = value
    prio = fields.get("priority", "0")
    fields["priority"] = str(PRIORITIES.get(prio, prio))
    return " ".join(f"{k} {fields[k]}" for k in ("type", "hook", "priority", "policy") if k in fields)


# ---- the two readers ----------------------------------------------------------------------------

_SCRIPT_LINE = re.compile(r"(add|flush|delete) (table|chain|rule) (\S+) (\S+)(?: (\S+))?(?: (.*))?$")
_INSERT_LINE = re.compile(r"insert rule (\S+) (\S+) (\S+) index (\d+) (.*)$")


def simulate(script: str) -> State:
    """The state our tables are in after `script` ran on a ruleset without them."""
    state: State = {}
    for line in script.splitlines():
        if not line.strip():
            continue
        if m := _INSERT_LINE.match(line):
            family, table, chain, index, text = m.groups()
            if family == FAMILY and table in TABLES:
                rules = state[table].chains[chain].rules
                rules.insert(int(index), canon(text))
            continue
        m = _SCRIPT_LINE.match(line)
        if not m:
            raise ValueError(f"not a line of our nft scripts: {line!r}")
        verb, kind, family, table, chain, rest = m.groups()
        if family != FAMILY or table not in TABLES:
            continue
        _apply(state, verb, kind, table, chain, rest or "")
    return state


def _apply(state: State, verb: str, kind: str, table: str, chain: str | None, rest: str) -> None:
    if kind == "table":
        if verb == "add":
            state.setdefault(table, Table())
        elif verb == "delete":
            state.pop(table, None)
        else:
            for c in state[table].chains.values():
                c.rules.clear()
    elif kind == "chain":
        hook = canon(rest.strip("{} ;")) if rest.startswith("{") else ""
        state[table].chains.setdefault(chain, Chain(hook))
    else:
        state[table].chains[chain].rules.append(canon(rest))


def parse_listing(text: str) -> State:
    """Our tables in `nft [-s] list ruleset [inet]` output; other tables are skipped."""
    state: State = {}
    table: Table | None = None
    chain: Chain | None = None
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "}":
            depth -= 1
            chain = chain if depth >= 2 else None
            table = table if depth >= 1 else None
            continue
        opens = line.endswith("{")
        words = line.rstrip("{ ").split()
        if depth == 0 and opens:
            ours = len(words) == 3 and words[:2] == ["table", FAMILY] and words[2] in TABLES
            table = state.setdefault(words[2], Table()) if ours else None
        elif depth == 1 and table is not None:
            if opens and words[0] == "chain":
                chain = table.chains.setdefault(words[1], Chain())
            else:  # a set, map, flowtable..., or a table flag: none of ours has any
                table.objects.append(" ".join(words[:2]) if opens else line)
        elif depth == 2 and chain is not None and not opens:
            if words[0] == "type" and not chain.rules and not chain.hook:
                chain.hook = canon(line)
            else:
                chain.rules.append(canon(line))
        depth += opens
    return state


# ---- the difference -----------------------------------------------------------------------------

def diff(expected: State, live: State) -> list[str]:
    """`+` what these flags need and is not live, `-` what is live and should not be, one line
    each, in nft's words: `+rule inet <table> <chain> <rule>`, `-chain ...`, `+table ...`.
    Empty when our tables hold exactly the expected rules, in order."""
    out: list[str] = []
    for name in [t for t in TABLES if t in expected or t in live]:
        want, have = expected.get(name), live.get(name)
        where = f"{FAMILY} {name}"
        if want is None or have is None:
            sign, table = ("-", have) if want is None else ("+", want)
            out.append(f"{sign}table {where}")
            out += [f"{sign}{line}" for line in _lines(where, table)]
            continue
        out += [f"-{o} (in table {where})" for o in have.objects]
        for chain in [*want.chains, *[c for c in have.chains if c not in want.chains]]:
            out += _chain_diff(where, chain, want.chains.get(chain), have.chains.get(chain))
    return out


def _lines(where: str, table: Table) -> list[str]:
    out = [f"{o} (in table {where})" for o in table.objects]
    for name, chain in table.chains.items():
        out.append(_chain_line(where, name, chain))
        out += [f"rule {where} {name} {r}" for r in chain.rules]
    return out


def _chain_line(where: str, name: str, chain: Chain) -> str:
    return f"chain {where} {name}" + (f" {{ {chain.hook} ; }}" if chain.hook else "")


def _chain_diff(where: str, name: str, want: Chain | None, have: Chain | None) -> list[str]:
    if want is None or have is None or want.hook != have.hook:
        out = [f"-{_chain_line(where, name, have)}"] if have is not None else []
        out += [f"+{_chain_line(where, name, want)}"] if want is not None else []
        out += [f"-rule {where} {name} {r}" for r in (have.rules if have else [])]
        return out + [f"+rule {where} {name} {r}" for r in (want.rules if want else [])]
    import difflib  # only when our tables are live

    out = []
    matcher = difflib.SequenceMatcher(a=have.rules, b=want.rules, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op != "equal":
            out += [f"-rule {where} {name} {r}" for r in have.rules[a0:a1]]
            out += [f"+rule {where} {name} {r}" for r in want.rules[b0:b1]]
    return out


def first_difference(expected: State, live: State) -> str | None:
    """The first line of `diff`, said in words (None: in place)."""
    lines = diff(expected, live)
    if not lines:
        return None
    sign, text = lines[0][0], lines[0][1:]
    return f"{'missing' if sign == '+' else 'not expected'}: {text}"
