"""Host facts istio-iptables works out at run time (Istio: pkg/capture's HostIP/EnableIPv6 detection
and resolv.conf), and the name lookups it needs.

The adapter half reads the current network namespace and files, spawning no process: interface
addresses come from one rtnetlink RTM_GETADDR dump (the same call Go's net.InterfaceAddrs makes,
so the order matches Istio's: all IPv4 addresses, then all IPv6 ones), resolv.conf is read
directly, and user/group names go through pwd/grp. The pure half (`detect_ip`, `parse_resolv_conf`)
turns those raw facts into `HostFacts`, so tests can build any host without a namespace.
"""
from __future__ import annotations

import socket
import struct

from agent.iptables.record import Record

RESOLV_CONF = "/etc/resolv.conf"


class HostError(Exception):
    """A host fact Istio cannot do without (exit 1): no usable address, unreadable resolv.conf."""


class HostFacts(Record):
    enable_ipv6: bool = False
    host_ip: str = "198.18.0.2"
    dns_v4: tuple[str, ...] = ()
    dns_v6: tuple[str, ...] = ()


# ---- pure ---------------------------------------------------------------------------------------

# detect_ip works on packed addresses (inet_pton) rather than the ipaddress module: it runs on
# every start, and importing ipaddress (with functools and collections) costs more than the rest of
# host facts. The checks are the prefixes Go's IsLoopback/IsLinkLocal*/IsLinkLocalMulticast test.
# (HostIP is printed by inet_ntop: the same text as Go's except for deprecated IPv4-compatible
# addresses, ::a.b.c.d, which no pod has.)
_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96
_LOOPBACK6 = bytes(15) + b"\x01"  # ::1


def _packed(text: str) -> bytes:
    """4 bytes for IPv4 (IPv4-mapped IPv6 included, as Go's To4), else 16. ValueError if bad."""
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        raise ValueError(f"invalid IP address {text!r}") from None
    return packed[12:] if packed[:12] == _V4_MAPPED else packed


def _usable(packed: bytes) -> bool:
    """Not loopback, link-local unicast, or link-local multicast (Istio skips those)."""
    if len(packed) == 4:  # 127/8, 169.254/16, 224.0.0/24
        return packed[0] != 127 and packed[:2] != b"\xa9\xfe" and packed[:3] != b"\xe0\x00\x00"
    link_local = packed[0] == 0xFE and packed[1] & 0xC0 == 0x80  # fe80::/10
    link_local_multicast = packed[0] == 0xFF and packed[1] & 0x0F == 0x02  # ff02::/16 with any flags
    return packed != _LOOPBACK6 and not link_local and not link_local_multicast


def _text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def detect_ip(addresses: list[str], dual_stack: bool) -> tuple[bool, str]:
    """(EnableIPv6, HostIP) from the interface addresses, in dump order, as Istio: the first usable
    address is HostIP; IPv6 is on when it is IPv6, or (dual stack) when any usable one is."""
    usable = [packed for packed in map(_packed, addresses) if _usable(packed)]
    if not usable:
        raise HostError("no valid local IP address found")
    if not dual_stack:
        return len(usable[0]) == 16, _text(usable[0])
    return any(len(p) == 16 for p in usable), _text(usable[0])


def parse_resolv_conf(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Nameservers split into IPv4 and IPv6, re-printed canonically like Go (`::127.0.0.53` -> `::7f00:35`)."""
    import ipaddress  # only with DNS capture: Go's canonical IPv6 text, which inet_ntop does not match

    v4: list[str] = []
    v6: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver" or "%" in fields[1]:
            continue
        try:
            addr = ipaddress.ip_address(fields[1])
        except ValueError:
            continue  # Istio skips entries that do not parse
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # Go's To4() treats ::ffff:a.b.c.d as IPv4
        (v4 if addr.version == 4 else v6).append(str(addr))
    return tuple(v4), tuple(v6)


# ---- adapter ------------------------------------------------------------------------------------

_RTM_GETADDR, _RTM_NEWADDR, _NLMSG_DONE, _NLMSG_ERROR = 22, 20, 3, 2
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


def _netlink_addresses() -> list[str]:
    """One RTM_GETADDR dump of the current netns, as Go's net.InterfaceAddrs does."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        body = struct.pack("BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(struct.pack("=IHHII", 16 + len(body), _RTM_GETADDR, _NLM_F_REQUEST_DUMP, 1, 0) + body)
        out: list[str] = []
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, _, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    raise OSError("netlink RTM_GETADDR failed")
                if kind == _RTM_NEWADDR:
                    out.extend(_parse_ifaddr(data[offset + 16: offset + length]))
                offset += (length + 3) & ~3
                if length == 0:
                    return out
    finally:
        sock.close()


def _parse_ifaddr(msg: bytes) -> list[str]:
    family = msg[0]
    attrs: dict[int, bytes] = {}
    pos = 8  # struct ifaddrmsg
    while pos + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, pos)
        if alen < 4:
            break
        attrs[atype] = msg[pos + 4: pos + alen]
        pos += (alen + 3) & ~3
    # Go prefers IFA_LOCAL for IPv4 (point-to-point peers put the peer in IFA_ADDRESS).
    raw = attrs.get(_IFA_LOCAL) if family == socket.AF_INET else None
    raw = raw or attrs.get(_IFA_ADDRESS)
    if raw is None:
        return []
    fam = socket.AF_INET if family == socket.AF_INET else socket.AF_INET6
    return [socket.inet_ntop(fam, raw)]


def interface_addresses() -> list[str]:
    try:
        return _netlink_addresses()
    except OSError:
        return _proc_addresses()


def usable_addresses() -> list[str]:
    """The namespace's addresses without loopback and link-local ones, IPv4-mapped unwrapped, no
    duplicates: the pod's own IPs (also the sidecar's interface addresses, which pilot-agent puts
    in the proxy's metadata as INSTANCE_IPS)."""
    out: list[str] = []
    for packed in map(_packed, interface_addresses()):
        if _usable(packed) and _text(packed) not in out:
            out.append(_text(packed))
    return out


def _proc_addresses() -> list[str]:
    """Fallback without netlink: IPv6 from /proc/net/if_inet6 only (IPv4 needs netlink or ioctl)."""
    out = []
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                out.append(_text(bytes.fromhex(line.split()[0])))
    except OSError:
        pass
    return out


def read_resolv_conf(path: str = RESOLV_CONF) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        with open(path) as f:
            return parse_resolv_conf(f.read())
    except OSError as e:
        raise HostError(f"failed to load {path}: {e}") from None


def gather(*, dual_stack: bool, need_dns: bool) -> HostFacts:
    """Read the facts of the current netns. Raises HostError (exit 1) like Istio."""
    enable_ipv6, host_ip = detect_ip(interface_addresses(), dual_stack)
    dns_v4, dns_v6 = read_resolv_conf() if need_dns else ((), ())
    return HostFacts(enable_ipv6, host_ip, dns_v4, dns_v6)


def user_id(name: str) -> int | None:
    import pwd  # only for a user name (Istio's injector passes -u 1337)

    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def group_id(name: str) -> int | None:
    import grp  # only for a group name

    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def owner_id(kind: str, name: str) -> int | None:
    """For restore.diff: ("uid"|"gid", name) -> id, as iptables-save prints owners."""
    return user_id(name) if kind == "uid" else group_id(name)


__all__ = ["HostFacts", "HostError", "detect_ip", "parse_resolv_conf", "gather", "user_id", "group_id", "owner_id",
           "interface_addresses", "read_resolv_conf"]
