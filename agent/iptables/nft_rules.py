"""The nft rule builder (`--native-nftables`): config + host facts -> the rules of Istio's three
`inet` tables, in generation order.

Pure, beside the iptables builder (agent.iptables.rules) and fed the same flag model and host
facts. The order of every rule is Istio's (NftablesConfigurator.Run in
https://github.com/istio/istio/blob/master/tools/istio-nftables/pkg/capture/run.go), which the
conformance goldens check line by line; the step numbers in the comments are those of the
iptables builder, which Istio's nft code follows stage by stage (0: DNS on or off, 1: excluded
interfaces ... 17: TPROXY mark plumbing).

One `inet` table serves both families, so a rule without an `ip`/`ip6` match sees IPv6 packets
too; the `ip6` twins of the `ip` rules are written only when IPv6 is on (Istio's
AppendV6RuleIfSupported). Values from flags go into the rule text verbatim, as Istio writes them;
our flag validation has already refused every value nft could not parse.

How the rules become the `nft -f -` transaction (chains declared, inserts turned into appends):
agent.iptables.nft_script.
"""
from __future__ import annotations

from agent.iptables.config import IptablesConfig
from agent.iptables.record import Record
from agent.iptables.rules import (AGENT_DNS_PORT, DNS_PORT, LOCAL6, OUTBOUND_MARK, PASSTHROUGH4, PASSTHROUGH6,
                                  _is_loopback, dns_enabled)

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plain data; the adapter module that reads them is not needed here
    from agent.iptables.host import HostFacts

FAMILY = "inet"  # one table family for both IP versions
NAT, MANGLE, RAW = "istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"
TABLES = (NAT, MANGLE, RAW)  # the order of the transaction
PRE, OUT = "prerouting", "output"
INBOUND, REDIRECT, IN_REDIRECT = "istio-inbound", "istio-redirect", "istio-in-redirect"
OUTPUT, OUTPUT_DNS = "istio-output", "istio-output-dns"
DIVERT, TPROXY, DROP = "istio-divert", "istio-tproxy", "istio-drop"
DNS_REDIRECT = f"counter redirect to :{AGENT_DNS_PORT}"


class Chain(Record):
    """A chain of one of our tables. `hook` is a base chain's `type ... hook ... priority N`."""

    table: str
    name: str
    hook: str = ""


#: Every chain Istio may declare, in the order it declares them (per table: the base chains, then
#: the regular ones). Priorities are the iptables tables' (nat -100, mangle -150, raw -300: raw runs
#: before conntrack), written as numbers because older nft refuses `dstnat` on the output hook.
#: mangle output is a `route` chain: a mark set there re-routes the packet, as in iptables' mangle.
CHAINS: tuple[Chain, ...] = (
    Chain(NAT, PRE, "type nat hook prerouting priority -100"),
    Chain(NAT, OUT, "type nat hook output priority -100"),
    *(Chain(NAT, name) for name in (INBOUND, REDIRECT, IN_REDIRECT, OUTPUT, OUTPUT_DNS)),
    Chain(MANGLE, PRE, "type filter hook prerouting priority -150"),
    Chain(MANGLE, OUT, "type route hook output priority -150"),
    *(Chain(MANGLE, name) for name in (DIVERT, TPROXY, INBOUND, DROP)),
    Chain(RAW, PRE, "type filter hook prerouting priority -300"),
    Chain(RAW, OUT, "type filter hook output priority -300"),
    *(Chain(RAW, name) for name in (INBOUND, OUTPUT_DNS)),
)


class Rule(Record):
    """One rule: appended, or inserted at `index` (0-based, as iptables positions minus one)."""

    table: str
    chain: str
    text: str
    index: int | None = None


class RuleSet(Record):
    rules: tuple[Rule, ...]  # every table's, in generation order

    def table(self, name: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.table == name)


class _Rules:
    """Istio's four ways to add a rule: append or insert, always or only when IPv6 is on."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.rules: list[Rule] = []

    def add(self, table: str, chain: str, text: str, index: int | None = None) -> None:
        self.rules.append(Rule(table, chain, text, index))

    def add6(self, table: str, chain: str, text: str, index: int | None = None) -> None:
        if self.ipv6:
            self.add(table, chain, text, index)


def _v4(cidrs: tuple[str, ...]) -> list[str]:
    return [c for c in cidrs if ":" not in c]


def _v6(cidrs: tuple[str, ...]) -> list[str]:
    return [c for c in cidrs if ":" in c]


def build(cfg: IptablesConfig, facts: HostFacts) -> RuleSet:
    r = _Rules(facts.enable_ipv6)
    lo4 = cfg.loopback_cidr
    dns = dns_enabled(cfg, facts)
    includes = () if cfg.outbound_all else cfg.service_cidrs
    _interfaces(r, cfg)
    _inbound(r, cfg, lo4)
    r.add(NAT, OUT, f"counter jump {OUTPUT}")  # step 6: all protocols
    for port in cfg.outbound_ports_exclude:  # step 7
        r.add(NAT, OUTPUT, f"tcp dport {port} counter return")
        r.add(NAT, OUTPUT, f"udp dport {port} counter return")
    r.add(NAT, OUTPUT, f"oifname lo ip saddr {PASSTHROUGH4} counter return")  # step 8
    r.add6(NAT, OUTPUT, f"oifname lo ip6 saddr {PASSTHROUGH6} counter return")
    _owners(r, cfg, lo4, dns, any(map(_is_loopback, includes)))
    if dns:
        _dns(r, cfg, facts)
    r.add(NAT, OUTPUT, f"ip daddr {lo4} counter return")  # step 13
    r.add6(NAT, OUTPUT, f"ip6 daddr {LOCAL6} counter return")
    for cidr in _v4(cfg.service_exclude_cidrs):  # step 14
        r.add(NAT, OUTPUT, f"ip daddr {cidr} counter return")
    for cidr in _v6(cfg.service_exclude_cidrs):
        r.add6(NAT, OUTPUT, f"ip6 daddr {cidr} counter return")
    for port in cfg.outbound_ports:  # step 15
        r.add(NAT, OUTPUT, f"tcp dport {port} counter jump {REDIRECT}")
    _outbound_cidrs(r, cfg)
    if cfg.tproxy:
        _tproxy_extras(r, cfg, lo4)
    return RuleSet(tuple(r.rules))


def _interfaces(r: _Rules, cfg: IptablesConfig) -> None:
    """Steps 1-4: excluded and virtual interfaces, drop-invalid, the redirect chains."""
    for nic in cfg.exclude_interfaces:
        r.add(NAT, PRE, f"iifname {nic} counter return")
        r.add(NAT, OUT, f"oifname {nic} counter return")
    if cfg.tproxy:
        for nic in cfg.exclude_interfaces:
            r.add(MANGLE, PRE, f"iifname {nic} counter return")
            r.add(MANGLE, OUT, f"oifname {nic} counter return")
    for nic in cfg.kube_virt_interfaces:
        r.add(NAT, PRE, f"iifname {nic} counter return", index=0)
    if cfg.drop_invalid:  # quirk: TCP only, where iptables drops every protocol
        r.add(MANGLE, PRE, f"meta l4proto tcp ct state invalid counter jump {DROP}")
        r.add(MANGLE, DROP, "counter drop")
    r.add(NAT, INBOUND, f"meta l4proto tcp tcp dport {cfg.inbound_tunnel_port} counter return")
    r.add(NAT, REDIRECT, f"meta l4proto tcp counter redirect to :{cfg.envoy_port}")
    r.add(NAT, IN_REDIRECT, f"meta l4proto tcp counter redirect to :{cfg.inbound_capture_port}")


def _inbound(r: _Rules, cfg: IptablesConfig, lo4: str) -> None:
    """Step 5: inbound capture, only when -b is non-empty (-d only with -b '*')."""
    if not cfg.inbound_ports:
        return
    table = MANGLE if cfg.tproxy else NAT
    if cfg.tproxy:
        mark, port = cfg.tproxy_mark, cfg.inbound_capture_port
        r.add(MANGLE, DIVERT, f"counter meta mark set {mark}")
        r.add(MANGLE, DIVERT, "counter accept")
        # an `ip`/`ip6` match gives tproxy the family it needs in an inet table
        r.add(MANGLE, TPROXY, f"meta l4proto tcp ip daddr != {lo4} tproxy ip to :{port} meta mark set {mark} "
                              "counter accept")
        r.add6(MANGLE, TPROXY, f"meta l4proto tcp ip6 daddr != {LOCAL6} tproxy ip6 to :{port} meta mark set {mark} "
                               "counter accept")
    r.add(table, PRE, f"meta l4proto tcp counter jump {INBOUND}")
    if cfg.inbound_all:
        for port in cfg.local_exclude_ports:
            r.add(table, INBOUND, f"meta l4proto tcp tcp dport {port} counter return")
        _capture(r, cfg, "")
    else:
        for port in cfg.inbound_ports:
            _capture(r, cfg, f"tcp dport {port} ")


def _capture(r: _Rules, cfg: IptablesConfig, port: str) -> None:
    if cfg.tproxy:
        r.add(MANGLE, INBOUND, f"meta l4proto tcp ct state related,established {port}counter jump {DIVERT}")
        r.add(MANGLE, INBOUND, f"meta l4proto tcp {port}counter jump {TPROXY}")
    else:
        r.add(NAT, INBOUND, f"meta l4proto tcp {port}counter jump {IN_REDIRECT}")


def _owners(r: _Rules, cfg: IptablesConfig, lo4: str, dns: bool, includes_loopback: bool) -> None:
    """Steps 9-11: the proxy's own uids/gids, then the owner-group filter."""
    tunnel = cfg.inbound_tunnel_port
    for match, ids in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        for owner in ids:
            # quirk: Istio's gid loop never exempts DNS from the lo redirect; its uid loop does
            ports = f"{{ {DNS_PORT}, {tunnel} }}" if dns and match == "skuid" else tunnel
            tail = f"tcp dport != {ports} {match} {owner} counter jump {IN_REDIRECT}"
            r.add(NAT, OUTPUT, f"oifname lo meta l4proto tcp ip daddr != {lo4} {tail}")
            r.add6(NAT, OUTPUT, f"oifname lo meta l4proto tcp ip6 daddr != {LOCAL6} {tail}")
            if not includes_loopback:
                not_dns = f"meta l4proto tcp tcp dport != {DNS_PORT} " if dns else ""
                r.add(NAT, OUTPUT, f"oifname lo {not_dns}{match} != {owner} counter return")
            r.add(NAT, OUTPUT, f"{match} {owner} counter return")
    if cfg.owner_groups_include is None:
        for group in cfg.owner_groups_exclude:
            r.add(NAT, OUTPUT, f"skgid {group} counter return")
    else:
        r.add(NAT, OUTPUT, "".join(f"skgid != {g} " for g in cfg.owner_groups_include) + "counter return")


def _dns(r: _Rules, cfg: IptablesConfig, facts: HostFacts) -> None:
    """Step 12: DNS to the agent on 15053, and the conntrack zones that keep the proxy's upstream
    queries (zone 1) apart from the app's queries to the agent (zone 2).

    Fix of an Istio bug: Istio writes the nat jump to istio-output-dns and the raw jump to
    istio-inbound when resolv.conf has a server of either family, but the IPv6 servers' rules only
    when IPv6 is on. On an IPv4 pod whose resolvers are all IPv6 the two chains then get no rule,
    are not declared, and nft rejects the whole transaction for the jumps to missing chains. Here
    the IPv6 servers count only when IPv6 is on, as in the iptables mode, whose jumps are per
    family; such a pod gets the DNS-aware owner rules and zones, and no capture, as with iptables.
    """
    all_dns, v4 = cfg.capture_all_dns, facts.dns_v4
    v6 = facts.dns_v6 if r.ipv6 else ()
    servers = bool(all_dns or v4 or v6)
    owners = cfg.proxy_uids + cfg.proxy_gids
    if servers or owners:  # raw istio-output-dns gets a rule (always, with Istio's non-empty -u)
        r.add(RAW, OUT, f"counter jump {OUTPUT_DNS}")
    if servers:
        r.add(NAT, OUTPUT, f"counter jump {OUTPUT_DNS}")  # one jump for both families
    for proto in ("tcp", "udp"):
        if all_dns:
            match = "meta l4proto tcp tcp" if proto == "tcp" else "udp"
            r.add(NAT, OUTPUT_DNS, f"{match} dport {DNS_PORT} {DNS_REDIRECT}")
            continue
        for s in v4:  # quirk: address first here, port first in the raw zones below
            r.add(NAT, OUTPUT_DNS, f"ip daddr {s}/32 {proto} dport {DNS_PORT} {DNS_REDIRECT}")
        for s in v6:
            r.add(NAT, OUTPUT_DNS, f"ip6 daddr {s}/128 {proto} dport {DNS_PORT} {DNS_REDIRECT}")
    for match, ids in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        for owner in ids:
            r.add(RAW, OUTPUT_DNS, f"udp dport {DNS_PORT} meta {match} {owner} counter ct zone set 1")
            r.add(RAW, OUTPUT_DNS, f"udp sport {AGENT_DNS_PORT} meta {match} {owner} counter ct zone set 2")
    if servers:
        r.add(RAW, PRE, f"counter jump {INBOUND}")
    if all_dns:
        r.add(RAW, OUTPUT_DNS, f"udp dport {DNS_PORT} counter ct zone set 2")
        r.add(RAW, INBOUND, f"udp sport {DNS_PORT} counter ct zone set 1")
        return
    for family, bits, found in (("ip", 32, v4), ("ip6", 128, v6)):
        for s in found:
            r.add(RAW, OUTPUT_DNS, f"udp dport {DNS_PORT} {family} daddr {s}/{bits} counter ct zone set 2")
            r.add(RAW, INBOUND, f"udp sport {DNS_PORT} {family} saddr {s}/{bits} counter ct zone set 1")


def _outbound_cidrs(r: _Rules, cfg: IptablesConfig) -> None:
    """Step 16: -i '*' is one family-less jump; CIDRs are IPv4 first, then IPv6. Each -k interface
    gets the same capture, inserted at the head of nat prerouting."""
    if cfg.outbound_all:
        r.add(NAT, OUTPUT, f"counter jump {REDIRECT}")
        for nic in cfg.kube_virt_interfaces:
            r.add(NAT, PRE, f"iifname {nic} counter jump {REDIRECT}", index=0)
        return
    for family, add, cidrs in (("ip", r.add, _v4(cfg.service_cidrs)), ("ip6", r.add6, _v6(cfg.service_cidrs))):
        for cidr in cidrs:
            for nic in cfg.kube_virt_interfaces:
                add(NAT, PRE, f"iifname {nic} {family} daddr {cidr} counter jump {REDIRECT}", index=0)
            add(NAT, OUTPUT, f"{family} daddr {cidr} counter jump {REDIRECT}")


def _tproxy_extras(r: _Rules, cfg: IptablesConfig, lo4: str) -> None:
    """Step 17: mark plumbing, whenever the mode is TPROXY, even with -b ''. The inserts use
    Istio's indexes 0, 1, 1, 2 (so with IPv6 the ::6 return lands before the mark-1338 one)."""
    mark = cfg.tproxy_mark
    r.add(MANGLE, PRE, f"meta l4proto tcp mark {mark} counter ct mark set mark")
    r.add(MANGLE, OUT, f"oifname lo meta l4proto tcp mark {mark} counter return")
    for match, ids in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        for owner in ids:
            tail = f"{match} {owner} counter meta mark set {OUTBOUND_MARK}"
            r.add(MANGLE, OUT, f"oifname lo meta l4proto tcp ip daddr != {lo4} {tail}")
            r.add6(MANGLE, OUT, f"oifname lo meta l4proto tcp ip6 daddr != {LOCAL6} {tail}")
    r.add(MANGLE, OUT, f"meta l4proto tcp ct mark {mark} counter meta mark set ct mark")
    r.add(MANGLE, INBOUND, f"meta l4proto tcp mark {mark} counter return", index=0)
    r.add(MANGLE, INBOUND, f"iifname lo meta l4proto tcp ip saddr {PASSTHROUGH4} counter return", index=1)
    r.add6(MANGLE, INBOUND, f"iifname lo meta l4proto tcp ip6 saddr {PASSTHROUGH6} counter return", index=1)
    r.add(MANGLE, INBOUND, f"iifname lo meta l4proto tcp mark != {OUTBOUND_MARK} counter return", index=2)
