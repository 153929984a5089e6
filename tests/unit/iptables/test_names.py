"""Interface and owner names (agent.iptables.names) through the real command, in-process: a name
the rules cannot carry is one `Error:` line naming the setting and the value, exit 255, before the
host is read; names the backend reads back as themselves are kept (the real tools' verdicts are in
tests/netns/test_names_nft.py and tests/netns/test_lifecycle.py)."""
from __future__ import annotations

import pytest

from agent.iptables import host
from agent.iptables.names import NFT_KEYWORDS, NFT_OWNER_KEYWORDS, interface_problem, owner_problem

from ._nft_support import Host, run

NFT = ["--native-nftables"]
C, K = "-c/--istio-exclude-interfaces", "-k/--kube-virt-interfaces"
U, G = "-u/--proxy-uid", "-g/--proxy-gid"
GROUPS, EXCLUDE = "ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"

# (mode flags, argv, env, setting named, value shown)
BAD = [
    # both backends: what no Linux interface can be called, what iptables-restore reads as a quote
    ([], ["-c", 'e"th;0'], {}, C, 'e"th;0'),
    ([], ["-k", "eth0,a b"], {}, K, "eth0,a b"),
    ([], ["-c", "eth\n0"], {}, C, "eth\\n0"),
    ([], ["-c", "sixteen-bytes-xx"], {}, C, "sixteen-bytes-xx"),
    ([], ["-c", "éééééééé"], {}, C, "éééééééé"),  # 8 letters, 16 bytes
    ([], ["-c", "à"], {}, C, "à"),  # UTF-8 c3 a0: the kernel's isspace() takes 0xa0
    ([], ["-k", "a:b"], {}, K, "a:b"),
    ([], ["-k", ".."], {}, K, ".."),
    ([], ["-c", "a\x01b"], {}, C, "a\\x01b"),
    ([], ["-u", 'ro"ot'], {}, U, 'ro"ot'),
    ([], ["-u", "1337", "-g", "x y"], {}, G, "x y"),
    ([], ["-g", "4294967295"], {}, G, "4294967295"),
    ([], [], {GROUPS: 'java,a"b'}, GROUPS, 'java,a"b'),
    ([], [], {EXCLUDE: "a b"}, EXCLUDE, "a b"),
    ([], [], {EXCLUDE: "4294967295"}, EXCLUDE, "4294967295"),
    ([], [], {GROUPS: "x\u2028y"}, GROUPS, "x\\u2028y"),
    # nft only: not one word of its lexer, a keyword where the name goes, a number it rewrites
    (NFT, ["-c", 'e"th;0'], {}, C, 'e"th;0'),
    (NFT, ["-c", "eth0#"], {}, C, "eth0#"),
    (NFT, ["-c", "a;b"], {}, C, "a;b"),
    (NFT, ["-k", "eth+"], {}, K, "eth+"),
    (NFT, ["-k", "eth*"], {}, K, "eth*"),
    (NFT, ["-k", "1eth"], {}, K, "1eth"),
    (NFT, ["-c", "counter"], {}, C, "counter"),
    (NFT, ["-k", "eth0,jump"], {}, K, "eth0,jump"),
    (NFT, ["-c", "007"], {}, C, "007"),
    (NFT, ["-u", "return"], {}, U, "return"),
    (NFT, ["-u", "1337", "-g", "protocol"], {}, G, "protocol"),
    (NFT, [], {GROUPS: "java,counter"}, GROUPS, "java,counter"),
    (NFT, [], {EXCLUDE: "length"}, EXCLUDE, "length"),
    (NFT, [], {EXCLUDE: "a;b"}, EXCLUDE, "a;b"),
]


@pytest.mark.parametrize("mode, argv, env, setting, shown", BAD, ids=[f"{m and 'nft'} {a} {e}" for m, a, e, *_ in BAD])
@pytest.mark.parametrize("dry", [True, False])
def test_bad_name_is_one_line_exit_255_before_the_host_is_read(mode, argv, env, setting, shown, dry):
    host = Host()
    rc, out, err = run([*mode, *(["-n"] if dry else []), *argv], env, host)
    assert rc == 255, err
    assert out == "" and err.count("\n") == 1 and err.startswith(f'Error: invalid value "{shown}" for {setting}: '), err
    assert host.calls == []


@pytest.mark.parametrize("name", ["eth0#", "a;b", "e'th", "1eth", "eth+", "+", "é", "-j", "!", "a\\b", "007",
                                  "counter", "fifteen-bytes-x"])
def test_iptables_keeps_names_iptables_restore_reads_as_themselves(name):
    """Kernel-valid names without '"' are one word to iptables-restore; `eth+` is its wildcard."""
    rc, out, _ = run(["-n", "-c", name, "-u", "1337"], {GROUPS: name})
    assert rc == 0
    assert f"-A OUTPUT -o {name} -j RETURN\n" in out and f"! --gid-owner {name} -j RETURN\n" in out


@pytest.mark.parametrize("name", ["eth0.100", "veth_a-b", ".x", "_", "ip", "vlan", "name", "zone", "123", "0",
                                  "fifteen-bytes-x"])
def test_nft_keeps_its_words_and_plain_numbers(name):
    rc, out, _ = run([*NFT, "-n", "-c", name, "-k", name, "-u", "1337"], {GROUPS: name})
    assert rc == 0
    assert f"oifname {name} counter return\n" in out and f"skgid != {name} counter return\n" in out


def test_the_owner_only_keywords_are_names_for_interfaces():
    """`length` and `protocol` are keywords after skuid/skgid (nft's meta scope), names after iifname."""
    assert NFT_OWNER_KEYWORDS - NFT_KEYWORDS == {"length", "protocol"}
    rc, out, _ = run([*NFT, "-n", "-c", "length"])
    assert rc == 0 and "iifname length counter return\n" in out


def test_a_bad_minus_u_is_reported_once():
    """-g takes the -u value when empty: one bad value, one line."""
    rc, _, err = run([*NFT, "-n", "-u", "counter"])
    assert rc == 255 and err.count("\n") == 1 and "-u/--proxy-uid" in err


def test_names_are_checked_before_they_are_looked_up(monkeypatch):
    looked_up = []
    monkeypatch.setattr(host, "user_id", looked_up.append)
    rc, _, _ = run(["-n", "-u", 'a"b'])
    assert rc == 255 and looked_up == []


@pytest.mark.parametrize("name, nft, why", [
    ("eth0", False, None), ("eth0", True, None), ("a" * 15, True, None),
    ("a" * 16, False, "longer than 15 bytes"), ("ééééééé", False, None), ("ééééééé", True, "use letters"),
    ("a/b", False, "refuses '/'"), ("a\tb", True, "refuses white space"), ("\xa0", False, "byte 0xa0"),
    (".", True, "refuses '.' and '..'"), ("eth+", False, None), ("eth+", True, "use letters"),
    ("10", True, None), ("010", True, "the number 10"), ("counter", True, "keyword"), ("counter", False, None),
    ('a"', False, "reads '\"' as a quote"), ("\udcff", False, "non-printable"),
])
def test_interface_problem(name, nft, why):
    got = interface_problem(name, nft=nft)
    assert (got is None) if why is None else (got is not None and why in got), got


@pytest.mark.parametrize("name, nft, why", [
    ("1337", True, None), ("007", True, None), ("4294967294", False, None), ("4294967295", True, "out of range"),
    ("istio-proxy", True, None), ("a/b", True, None), ("a b", False, "white space"), ('a"b', False, "quote"),
    ("a#b", False, None), ("a#b", True, "use letters"), ("length", True, "keyword"), ("length", False, None),
    ("٨", True, "use letters"), ("٨", False, None),
])
def test_owner_problem(name, nft, why):
    got = owner_problem(name, nft=nft)
    assert (got is None) if why is None else (got is not None and why in got), got
