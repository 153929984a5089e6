"""Host facts: IPv6 detection / HostIP (IPv6 is on when the first non-loopback, non-link-local address
is IPv6, or any with --dual-stack), resolv.conf parsing (the DNS servers to capture), netlink dump."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.iptables import host
from agent.iptables.host import HostError, detect_ip, parse_resolv_conf


@pytest.mark.parametrize(
    "addresses, dual, expected",
    [
        (["127.0.0.1", "198.18.0.2", "::1", "fe80::1"], False, (False, "198.18.0.2")),
        (["127.0.0.1", "::1", "2001:db8::2", "fe80::1"], False, (True, "2001:db8::2")),
        (["127.0.0.1", "198.18.0.2", "::1", "2001:db8::2"], False, (False, "198.18.0.2")),
        (["127.0.0.1", "198.18.0.2", "::1", "2001:db8::2"], True, (True, "198.18.0.2")),
        (["198.18.0.2"], True, (False, "198.18.0.2")),
        (["169.254.1.1", "fe80::1", "ff02::1", "224.0.0.5", "198.18.0.3"], False, (False, "198.18.0.3")),
        (["::ffff:127.0.0.1", "::ffff:198.18.0.4"], False, (False, "198.18.0.4")),  # v4-mapped unwrapped
    ],
)
def test_detect_ip(addresses, dual, expected):
    assert detect_ip(addresses, dual) == expected


@pytest.mark.parametrize("addresses", [[], ["127.0.0.1", "::1"], ["fe80::1", "169.254.0.1"]])
def test_no_usable_address_is_an_error(addresses):
    with pytest.raises(HostError, match="no valid local IP address found"):
        detect_ip(addresses, False)


def test_parse_resolv_conf_canonicalises_like_go():
    text = """# comment
; other comment
nameserver 127.0.0.53
nameserver ::127.0.0.53
nameserver 2001:DB8::1
nameserver ::ffff:10.0.0.1
nameserver fe80::1%eth0
nameserver not-an-ip
nameserver
search example.com
options ndots:5
  nameserver   10.0.0.2   # trailing
"""
    assert parse_resolv_conf(text) == (("127.0.0.53", "10.0.0.1", "10.0.0.2"), ("::7f00:35", "2001:db8::1"))


def test_parse_resolv_conf_without_servers():
    assert parse_resolv_conf("search x\n") == ((), ())


def test_unreadable_resolv_conf_is_an_error(tmp_path):
    with pytest.raises(HostError, match="failed to load"):
        host.read_resolv_conf(str(tmp_path / "missing"))


def test_netlink_dump_lists_loopback_and_matches_proc():
    addrs = host.interface_addresses()
    assert "127.0.0.1" in addrs and all(ipaddress.ip_address(a) for a in addrs)
    v4 = [a for a in addrs if ":" not in a]
    assert addrs[: len(v4)] == v4  # Go's order: every IPv4 address first
    assert set(host._proc_addresses()) == {a for a in addrs if ":" in a}


def test_name_lookups():
    assert host.user_id("root") == 0
    assert host.group_id("root") == 0
    assert host.user_id("no-such-user-xyz") is None
    assert host.group_id("no-such-group-xyz") is None
    assert host.user_id("bad\0name") is None


def test_owner_id():
    assert host.owner_id("uid", "root") == 0 and host.owner_id("gid", "root") == 0
    assert host.owner_id("uid", "no-such-user-xyz") is None


def _reference_usable(text: str) -> tuple[bool, str]:
    """The ipaddress-based filter detect_ip used before it worked on packed addresses."""
    addr = ipaddress.ip_address(text)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback or addr.is_link_local:
        return False, str(addr)
    if addr.version == 6:
        return not (addr.packed[0] == 0xFF and addr.packed[1] & 0x0F == 0x02), str(addr)
    return addr not in ipaddress.ip_network("224.0.0.0/24"), str(addr)


EDGES = ["127.255.0.1", "128.0.0.1", "169.254.255.255", "169.255.0.1", "224.0.0.255", "224.0.1.0", "0.0.0.0",
         "::1", "::2", "fe80::1", "febf:ffff::1", "fec0::1", "ff02::1", "ff12::1", "ff05::1", "::ffff:169.254.0.1",
         "::ffff:224.0.0.1", "::ffff:198.18.0.1", "2001:db8::1", "2001:db8:0:0:1:0:0:1", "::"]


@pytest.mark.parametrize("text", EDGES)
def test_packed_filter_matches_ipaddress(text):
    usable, shown = _reference_usable(text)
    packed = host._packed(text)
    assert host._usable(packed) == usable
    assert host._text(packed) == shown


@given(st.ip_addresses())
def test_packed_filter_matches_ipaddress_everywhere(addr):
    text = str(addr)
    usable, shown = _reference_usable(text)
    packed = host._packed(text)
    assert host._usable(packed) == usable
    if not (addr.version == 6 and packed[:12] == bytes(12)):  # ::a.b.c.d prints as glibc does
        assert host._text(packed) == shown
