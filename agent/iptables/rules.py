"""The rule builder: config + host facts -> the IPv4 and IPv6 rule lists.

Pure. The order of every rule is Istio's (IptablesConfigurator.Run in
https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/capture/run.go), which the
conformance goldens check line by line; the step numbers in the comments count the stages of that
function in order (0: DNS on or off, 1: excluded interfaces ... 17: TPROXY mark plumbing).
Istio's quirks are kept where the goldens show them, each marked "quirk" below.
"""
from __future__ import annotations

from agent.iptables.config import IptablesConfig
from agent.iptables.record import Record

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the facts are plain data; the adapter module that reads them is not needed here
    from agent.iptables.host import HostFacts

BUILTIN = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "RETURN", "DROP"})
DNS_PORT, AGENT_DNS_PORT, OUTBOUND_MARK = "53", "15053", "1338"
LOCAL6, PASSTHROUGH4, PASSTHROUGH6 = "::1/128", "127.0.0.6/32", "::6/128"


class Rule(Record):
    """One rule: `-A <chain> <args>`, or `-I <chain> <position> <args>` when `position` is set."""

    table: str
    chain: str
    args: tuple[str, ...]
    position: int | None = None

    @property
    def command(self) -> tuple[str, ...]:
        """The rule as restore/iptables arguments (without `-t <table>`)."""
        if self.position is None:
            return ("-A", self.chain, *self.args)
        return ("-I", self.chain, str(self.position), *self.args)

    @property
    def target(self) -> str | None:
        """The jump target when the rule ends in `-j <target>` (the restore document's -N rule)."""
        return self.args[-1] if len(self.args) >= 2 and self.args[-2] == "-j" else None

    def text(self) -> str:
        return " ".join(self.command)


class RuleSet(Record):
    v4: tuple[Rule, ...]
    v6: tuple[Rule, ...]  # empty when IPv6 is off
    ipv6: bool

    def family(self, family: int) -> tuple[Rule, ...]:
        return self.v4 if family == 4 else self.v6


class _Lists:
    """The five ways Istio's rule builder adds a rule: IPv4 only, IPv6 only, both, or both with a
    family-specific address (pkg/builder/iptables_builder_impl.go)."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.v4: list[Rule] = []
        self.v6: list[Rule] = []

    def add4(self, table: str, chain: str, *args: str, pos: int | None = None) -> None:
        self.v4.append(Rule(table, chain, args, pos))

    def add6(self, table: str, chain: str, *args: str, pos: int | None = None) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, args, pos))

    def both(self, table: str, chain: str, *args: str, pos: int | None = None) -> None:
        self.add4(table, chain, *args, pos=pos)
        self.add6(table, chain, *args, pos=pos)

    def versioned(self, table: str, chain: str, v4: str, v6: str, *args: str, pos: int | None = None) -> None:
        """`args` holds the placeholder `{}` where the family's address goes."""
        self.add4(table, chain, *(v4 if a == "{}" else a for a in args), pos=pos)
        self.add6(table, chain, *(v6 if a == "{}" else a for a in args), pos=pos)


def _family(cidr: str) -> int:
    return 6 if ":" in cidr else 4


def _is_loopback(cidr: str) -> bool:
    import ipaddress  # only for -i CIDR lists

    addr = ipaddress.ip_address(cidr.split("/")[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback if addr.version == 4 else str(addr) == "::1"


def dns_enabled(cfg: IptablesConfig, facts: HostFacts) -> bool:
    """Step 0: --redirect-dns with no resolvers and no --capture-all-dns is off (Istio warns)."""
    return cfg.redirect_dns and (cfg.capture_all_dns or bool(facts.dns_v4 or facts.dns_v6))


def build(cfg: IptablesConfig, facts: HostFacts) -> RuleSet:
    r = _Lists(facts.enable_ipv6)
    lo4 = cfg.loopback_cidr
    dns = dns_enabled(cfg, facts)
    includes = () if cfg.outbound_all else cfg.service_cidrs
    includes_loopback = any(_is_loopback(c) for c in includes)
    _interfaces(r, cfg)
    _inbound(r, cfg, lo4)
    r.both("nat", "OUTPUT", "-j", "ISTIO_OUTPUT")  # step 6: all protocols
    for port in cfg.outbound_ports_exclude:  # step 7
        r.both("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "RETURN")
        r.both("nat", "ISTIO_OUTPUT", "-p", "udp", "--dport", port, "-j", "RETURN")
    r.versioned("nat", "ISTIO_OUTPUT", PASSTHROUGH4, PASSTHROUGH6, "-o", "lo", "-s", "{}", "-j", "RETURN")  # step 8
    _owners(r, cfg, lo4, dns, includes_loopback)
    if dns:
        _dns(r, cfg, facts)
    r.versioned("nat", "ISTIO_OUTPUT", lo4, LOCAL6, "-d", "{}", "-j", "RETURN")  # step 13
    for cidr in cfg.service_exclude_cidrs:  # step 14
        (r.add4 if _family(cidr) == 4 else r.add6)("nat", "ISTIO_OUTPUT", "-d", cidr, "-j", "RETURN")
    for port in cfg.outbound_ports:  # step 15
        r.both("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "ISTIO_REDIRECT")
    _outbound_cidrs(r, cfg)
    if cfg.tproxy:
        _tproxy_extras(r, cfg, lo4)
    return RuleSet(tuple(r.v4), tuple(r.v6), facts.enable_ipv6)


def _interfaces(r: _Lists, cfg: IptablesConfig) -> None:
    for nic in cfg.exclude_interfaces:  # step 1
        r.both("nat", "PREROUTING", "-i", nic, "-j", "RETURN")
        r.both("nat", "OUTPUT", "-o", nic, "-j", "RETURN")
    if cfg.tproxy:
        for nic in cfg.exclude_interfaces:
            r.both("mangle", "PREROUTING", "-i", nic, "-j", "RETURN")
            r.both("mangle", "OUTPUT", "-o", nic, "-j", "RETURN")
    for nic in cfg.kube_virt_interfaces:  # step 2
        r.both("nat", "PREROUTING", "-i", nic, "-j", "RETURN", pos=1)
    if cfg.drop_invalid:  # step 3
        r.both("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", "ISTIO_DROP")
        r.both("mangle", "ISTIO_DROP", "-j", "DROP")
    # step 4
    r.both("nat", "ISTIO_INBOUND", "-p", "tcp", "--dport", cfg.inbound_tunnel_port, "-j", "RETURN")
    r.both("nat", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.envoy_port)
    r.both("nat", "ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.inbound_capture_port)


def _inbound(r: _Lists, cfg: IptablesConfig, lo4: str) -> None:
    """Step 5: inbound capture, only when -b is non-empty."""
    if not cfg.inbound_ports:
        return
    table = "mangle" if cfg.tproxy else "nat"
    mark = cfg.tproxy_mark
    if cfg.tproxy:
        r.both("mangle", "ISTIO_DIVERT", "-j", "MARK", "--set-mark", mark)
        r.both("mangle", "ISTIO_DIVERT", "-j", "ACCEPT")
        r.versioned("mangle", "ISTIO_TPROXY", lo4, LOCAL6, "!", "-d", "{}", "-p", "tcp", "-j", "TPROXY",
                    "--tproxy-mark", f"{mark}/0xffffffff", "--on-port", cfg.inbound_capture_port)
    r.both(table, "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    if cfg.inbound_all:
        for port in cfg.local_exclude_ports:
            r.both(table, "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "RETURN")
        _capture(r, cfg, ())
    else:
        for port in cfg.inbound_ports:
            _capture(r, cfg, ("--dport", port))


def _capture(r: _Lists, cfg: IptablesConfig, match: tuple[str, ...]) -> None:
    if cfg.tproxy:
        r.both("mangle", "ISTIO_INBOUND", "-p", "tcp", *match, "-m", "conntrack", "--ctstate",
               "RELATED,ESTABLISHED", "-j", "ISTIO_DIVERT")
        r.both("mangle", "ISTIO_INBOUND", "-p", "tcp", *match, "-j", "ISTIO_TPROXY")
    else:
        r.both("nat", "ISTIO_INBOUND", "-p", "tcp", *match, "-j", "ISTIO_IN_REDIRECT")


def _owners(r: _Lists, cfg: IptablesConfig, lo4: str, dns: bool, includes_loopback: bool) -> None:
    """Steps 9-11: the proxy's own uids/gids, then the owner-group filter."""
    tunnel = cfg.inbound_tunnel_port
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for owner in ids:
            if dns and kind == "--uid-owner":  # quirk: Istio's gid loop never uses multiport
                ports = ("-m", "multiport", "!", "--dports", f"{DNS_PORT},{tunnel}")
            else:
                ports = ("!", "--dport", tunnel)
            r.versioned("nat", "ISTIO_OUTPUT", lo4, LOCAL6, "-o", "lo", "!", "-d", "{}", "-p", "tcp", *ports,
                        "-m", "owner", kind, owner, "-j", "ISTIO_IN_REDIRECT")
            if not includes_loopback:
                not_dns = ("-p", "tcp", "!", "--dport", DNS_PORT) if dns else ()
                r.both("nat", "ISTIO_OUTPUT", "-o", "lo", *not_dns, "-m", "owner", "!", kind, owner, "-j", "RETURN")
            r.both("nat", "ISTIO_OUTPUT", "-m", "owner", kind, owner, "-j", "RETURN")
    if cfg.owner_groups_include is None:
        for group in cfg.owner_groups_exclude:
            r.both("nat", "ISTIO_OUTPUT", "-m", "owner", "--gid-owner", group, "-j", "RETURN")
    else:
        matches = [a for g in cfg.owner_groups_include for a in ("-m", "owner", "!", "--gid-owner", g)]
        r.both("nat", "ISTIO_OUTPUT", *matches, "-j", "RETURN")


def _dns(r: _Lists, cfg: IptablesConfig, facts: HostFacts) -> None:
    """Step 12: DNS capture to the agent on 15053, and the conntrack zones."""
    all_dns = cfg.capture_all_dns
    servers = ((4, r.add4, facts.dns_v4, "32"), (6, r.add6, facts.dns_v6, "128"))
    r.both("raw", "OUTPUT", "-j", "ISTIO_OUTPUT_DNS")
    for _, add, found, _ in servers:
        if all_dns or found:
            add("nat", "ISTIO_OUTPUT", "-j", "ISTIO_OUTPUT_DNS")
    for proto, to in (("tcp", "--to-ports"), ("udp", "--to-port")):  # quirk: Istio's udp rule says --to-port
        if all_dns:
            r.both("nat", "ISTIO_OUTPUT_DNS", "-p", proto, "--dport", DNS_PORT, "-j", "REDIRECT", to, AGENT_DNS_PORT)
            continue
        for _, add, found, bits in servers:
            for s in found:
                add("nat", "ISTIO_OUTPUT_DNS", "-p", proto, "--dport", DNS_PORT, "-d", f"{s}/{bits}",
                    "-j", "REDIRECT", to, AGENT_DNS_PORT)
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for owner in ids:
            r.both("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", DNS_PORT, "-m", "owner", kind, owner,
                   "-j", "CT", "--zone", "1")
            r.both("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--sport", AGENT_DNS_PORT, "-m", "owner", kind, owner,
                   "-j", "CT", "--zone", "2")
    if all_dns:
        r.both("raw", "PREROUTING", "-j", "ISTIO_INBOUND")
        r.both("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", DNS_PORT, "-j", "CT", "--zone", "2")
        r.both("raw", "ISTIO_INBOUND", "-p", "udp", "--sport", DNS_PORT, "-j", "CT", "--zone", "1")
        return
    for _, add, found, bits in servers:
        if found:
            add("raw", "PREROUTING", "-j", "ISTIO_INBOUND")
        for s in found:
            add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", DNS_PORT, "-d", f"{s}/{bits}", "-j", "CT", "--zone", "2")
            add("raw", "ISTIO_INBOUND", "-p", "udp", "--sport", DNS_PORT, "-s", f"{s}/{bits}", "-j", "CT", "--zone", "1")


def _outbound_cidrs(r: _Lists, cfg: IptablesConfig) -> None:
    """Step 16: once for v4, then once for v6."""
    for family, add in ((4, r.add4), (6, r.add6)):
        if cfg.outbound_all:
            add("nat", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT")
            for nic in cfg.kube_virt_interfaces:
                add("nat", "PREROUTING", "-i", nic, "-j", "ISTIO_REDIRECT", pos=1)
            continue
        for cidr in cfg.service_cidrs:
            if _family(cidr) != family:
                continue
            for nic in cfg.kube_virt_interfaces:
                add("nat", "PREROUTING", "-i", nic, "-d", cidr, "-j", "ISTIO_REDIRECT", pos=1)
            add("nat", "ISTIO_OUTPUT", "-d", cidr, "-j", "ISTIO_REDIRECT")


def _tproxy_extras(r: _Lists, cfg: IptablesConfig, lo4: str) -> None:
    """Step 17: mark plumbing, whenever the mode is TPROXY, even with -b ''."""
    mark = cfg.tproxy_mark
    r.both("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
    r.both("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for owner in ids:
            r.versioned("mangle", "OUTPUT", lo4, LOCAL6, "!", "-d", "{}", "-p", "tcp", "-o", "lo", "-m", "owner",
                        kind, owner, "-j", "MARK", "--set-mark", OUTBOUND_MARK)
    r.both("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
    r.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN", pos=1)
    r.versioned("mangle", "ISTIO_INBOUND", PASSTHROUGH4, PASSTHROUGH6, "-p", "tcp", "-s", "{}", "-i", "lo",
                "-j", "RETURN", pos=2)
    r.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", OUTBOUND_MARK,
           "-j", "RETURN", pos=3)
