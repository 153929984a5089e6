"""Interface and owner names as the rules carry them: what a Linux interface name can be, and what
iptables-restore and nft read back as the same name. One check for both backends; where they
differ, the difference is the tools', said below.

Istio copies -c/-k interface names, -u/-g user and group names and the ISTIO_OUTBOUND_OWNER_GROUPS
(_EXCLUDE) names unquoted into the rule text (an iptables-restore line, or an nft script). A name
the tool reads as something else fails the whole apply with a multi-line error (exit 1), or worse
becomes a different rule: with `-c 'a"b'` iptables-restore applies a rule with no target for an
interface named `ab -j RETURN`, with `-c 'eth0#'` nft one matching `eth0` with no verdict. Such
names are refused here, before anything runs.

Interface names, both backends: the kernel's rule (dev_valid_name in net/core/dev.c,
https://github.com/torvalds/linux/blob/master/net/core/dev.c): 1-15 bytes, not `.` or `..`, no
`/`, `:` or white space, white space being the kernel's isspace() on each byte, which includes
0xa0 (so `à`, UTF-8 `c3 a0`, is refused by the kernel and here). Beyond the kernel, control
characters are refused: no CNI makes such a name and they would garble logs and rule listings.
Then per backend:

* iptables: iptables-restore (1.8.9) reads `"` as a quote and nothing else specially inside a
  line, so `"` is refused and every other kernel-valid name is kept, as Istio keeps it; a trailing
  `+` is iptables' wildcard (`eth+` is every interface whose name starts with `eth`, `+` alone is
  every interface), which Istio passes through and so do we.
* nft: only a word of nft's lexer (a letter, `_` or `.`, then letters, digits, `_ . - /`) that is
  not one of its keywords where the name stands, or a decimal number without a leading zero
  (nft reads `007` as the number 7 and matches interface `7`). So no `+` wildcard (an nft syntax
  error; nft's own wildcard `eth*` is refused too, as the kernel allows `*` in a name), no other
  punctuation, no non-ASCII letters.

Owner names (-u/-g names, owner groups): numbers must be below 4294967295 ((uid_t)-1, which no
socket has and iptables refuses); names go through the same tool rules (no white space or `"`
for iptables; an nft word and no keyword for nft). Whether a name exists is the caller's matter:
-u/-g are looked up at parse time, owner groups are resolved by iptables or nft when applied, as
in Istio (so `java` in Istio's goldens prints in a dry run on a host without that group).
"""
from __future__ import annotations

IFNAMSIZ = 16  # the kernel's buffer, with the terminating NUL: names are at most 15 bytes
MAX_OWNER_ID = 2**32 - 2
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")  # lib/ctype.c's _S class
_KERNEL_FORBIDDEN = frozenset(b"/:") | _KERNEL_SPACE
_NFT_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.")

#: The words nft 1.0.6 (Debian 12's, the image's) rejects where our rules put an interface or
#: owner name, found by writing each of its lexer's keywords into every such place of our nft
#: transaction and running the real nft (tests/netns/test_names.py does it again, against the nft
#: installed). Its other keywords (`ip`, `vlan`, `name`, `zone`, ...) are keywords only after
#: some other word, and read as names where ours go. (One of our TPROXY rules, `counter meta mark
#: set ct mark`, makes nft read `bytes`, `name` and `packets` as keywords on the next line; no
#: name of ours is read while that holds, in any of our transactions, which the same tests check.)
NFT_KEYWORDS = frozenset("""
    accept add ah all and auto-merge bridge cgroup chain comment comp constant continue counter cpu
    create ct day dccp define delete describe device devices drop dst dup dynamic element elements
    eq esp exists expires export exthdr fib flags flow flowtable flush frag fwd gc-interval ge get
    goto gt handle hbh hook hour ibriport ibrname icmp icmpv6 igmp iif iifgroup iifname iiftype
    import include index inet insert interval ipsec jhash jump le limit list log lshift lt map mark
    masquerade meta meter mh missing monitor ne netdev nftrace not notrack numgen obriport obrname
    offload oif oifgroup oifname oiftype or osf pkttype policy position priority queue quota random
    redefine redirect reject rename replace return rshift rt rt0 rt2 rtclassid rule ruleset sctp
    secmark set size skgid skuid socket srh symhash synproxy table tcp th time timeout tproxy type
    typeof udp udplite undefine update vmap xor xt
""".split())
#: Rejected after `skuid`/`skgid` (where the meta scope is open), read as names after `iifname`.
NFT_OWNER_KEYWORDS = NFT_KEYWORDS | {"length", "protocol"}

_NFT = " (--native-nftables)"


def interface_problem(name: str, *, nft: bool) -> str | None:
    """Why `name` cannot be an -c/-k interface name for this backend; None when it can."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= IFNAMSIZ:
        return f"{name!r} is not an interface name: longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return f"{name!r} is not an interface name: the kernel refuses '.' and '..'"
    if (byte := next((b for b in raw if b in _KERNEL_FORBIDDEN), None)) is not None:
        what = {0x2F: "'/'", 0x3A: "':'", 0xA0: "byte 0xa0 (white space to it, and in the UTF-8 of some letters)"}
        return f"{name!r} is not an interface name: the kernel refuses {what.get(byte, 'white space')}"
    if not name.isprintable():
        return f"{name!r} is not an interface name: it holds a non-printable character"
    if nft:
        if not (name.isascii() and name.isdigit()):
            return _nft_word_problem(name, NFT_KEYWORDS)
        if name != str(int(name)):
            return f"{name!r} cannot be written into an nft rule{_NFT}: nft reads it as the number {int(name)}"
        return None
    if '"' in name:
        return f"{name!r} cannot be written into an iptables rule: iptables-restore reads '\"' as a quote"
    return None


def owner_problem(name: str, *, nft: bool) -> str | None:
    """Why `name` cannot be a uid/gid (number or name) in the rules; None when it can. Whether a
    name exists is not checked here."""
    if name.isascii() and name.isdigit():
        return None if int(name) <= MAX_OWNER_ID else f"{name} is out of range 0-{MAX_OWNER_ID}"
    if nft:
        return _nft_word_problem(name, NFT_OWNER_KEYWORDS)
    if not name.isprintable() or any(c.isspace() for c in name):
        return f"{name!r} cannot be written into an iptables rule: white space or a control character"
    if '"' in name:
        return f"{name!r} cannot be written into an iptables rule: iptables-restore reads '\"' as a quote"
    return None


def _nft_word(name: str) -> bool:
    """One string to nft's lexer, unquoted: a letter, '_' or '.', then letters, digits, '_', '.',
    '-' and '/' (scanner.l's `string`)."""
    return name[:1] in _NFT_FIRST and name.isascii() and all(c.isalnum() or c in "_./-" for c in name)


def _nft_word_problem(name: str, keywords: frozenset[str]) -> str | None:
    if not _nft_word(name):
        return (f"{name!r} cannot be written into an nft rule{_NFT}: use letters, digits, '_', '.' "
                "and '-', starting with a letter, '_' or '.'")
    if name in keywords:
        return f"{name!r} cannot be written into an nft rule{_NFT}: nft reads it as its keyword"
    return None
