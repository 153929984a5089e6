"""Host facts istio-iptables works out at run time (spec §1.5), and the name lookups it needs.

The adapter half reads the current network namespace and files, spawning no process: interface
addresses come from one rtnetlink RTM_GETADDR dump (the same call Go's net.InterfaceAddrs makes,
so the order matches Istio's: all IPv4 addresses, then all IPv6 ones), resolv.conf is read
directly, and user/group names go through pwd/grp. The pure half (`detect_ip`, `parse_resolv_conf`)
turns those raw facts into `HostFacts`, so tests can build any host without a namespace.
"""
from __future__ import annotations

import grp
import ipaddress
import pwd
import struct

# The C module under `socket`: the netlink dump needs nothing of socket.py's wrappers, and
# socket.py imports enum and selectors (milliseconds of start-up in every pod's init container).
import _socket

from agent.iptables.config import Record

RESOLV_CONF = "/etc/resolv.conf"


class HostError(Exception):
    """A host fact Istio cannot do without (exit 1): no usable address, unreadable resolv.conf."""


class HostFacts(Record):
    enable_ipv6: bool = False
    host_ip: str = "198.18.0.2"
    dns_v4: tuple[str, ...] = ()
    dns_v6: tuple[str, ...] = ()


# ---- pure ---------------------------------------------------------------------------------------

def _usable(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if addr.is_loopback or addr.is_link_local:
        return False
    if addr.version == 6:
        return not (addr.packed[0] == 0xFF and addr.packed[1] & 0x0F == 0x02)  # Go's IsLinkLocalMulticast
    return addr not in ipaddress.ip_network("224.0.0.0/24")


def detect_ip(addresses: list[str], dual_stack: bool) -> tuple[bool, str]:
    """(EnableIPv6, HostIP) from the interface addresses, in dump order (§1.5 step 4)."""
    usable = []
    for text in addresses:
        addr = ipaddress.ip_address(text)
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if _usable(addr):
            usable.append(addr)
    if not usable:
        raise HostError("no valid local IP address found")
    if not dual_stack:
        return usable[0].version == 6, str(usable[0])
    return any(a.version == 6 for a in usable), str(usable[0])


def parse_resolv_conf(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Nameservers split into IPv4 and IPv6, re-printed canonically like Go (`::127.0.0.53` -> `::7f00:35`)."""
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
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        body = struct.pack("BBBBI", _socket.AF_UNSPEC, 0, 0, 0, 0)
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
    raw = attrs.get(_IFA_LOCAL) if family == _socket.AF_INET else None
    raw = raw or attrs.get(_IFA_ADDRESS)
    if raw is None:
        return []
    fam = _socket.AF_INET if family == _socket.AF_INET else _socket.AF_INET6
    return [_socket.inet_ntop(fam, raw)]


def interface_addresses() -> list[str]:
    try:
        return _netlink_addresses()
    except OSError:
        return _proc_addresses()


def _proc_addresses() -> list[str]:
    """Fallback without netlink: IPv6 from /proc/net/if_inet6 only (IPv4 needs netlink or ioctl)."""
    out = []
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr = line.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
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
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def owner_id(kind: str, name: str) -> int | None:
    """For restore.diff: ("uid"|"gid", name) -> id, as iptables-save prints owners."""
    return user_id(name) if kind == "uid" else group_id(name)


__all__ = ["HostFacts", "HostError", "detect_ip", "parse_resolv_conf", "gather", "user_id", "group_id", "owner_id",
           "interface_addresses", "read_resolv_conf"]
