"""istio-iptables settings: the flag table, the env-only settings, the frozen config and its
validation (Istio's, made stricter: see below). Istio's flags and their env vars:
https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/cmd/root.go

Pure: no environment reads, no host lookups. The edge passes the environment in, and user/group
name lookups are injected (see agent.iptables.host), so every rule here is a table-driven test.

Two kinds of problems, as the exit codes tell them apart:
- usage problems (exit 255): a value that can never work, e.g. a port outside 1-65535, a malformed
  CIDR, an unknown mode. Istio copies most of these into iptables arguments unchecked; we refuse
  them before anything touches the kernel.
- run problems (exit 1): the checks Istio itself makes and reports with exit 1 (owner group count,
  loopback CIDR).
"""
from __future__ import annotations

from agent.flags import Flag
from agent.iptables.names import interface_problem, owner_problem
from agent.iptables.record import Record

from collections.abc import Callable, Mapping
from typing import Any

F = Flag
FLAGS: tuple[Flag, ...] = (
    F("envoy-port", short="p", default="15001", help="outbound capture port (target of ISTIO_REDIRECT); no env var, as in Istio"),
    F("inbound-capture-port", short="z", default="15006", env=("INBOUND_CAPTURE_PORT",),
      help="inbound capture port (target of ISTIO_IN_REDIRECT / TPROXY --on-port)"),
    F("inbound-tunnel-port", short="e", default="15008", env=("INBOUND_TUNNEL_PORT",),
      help="HBONE tunnel port, exempt from inbound capture"),
    F("proxy-uid", short="u", env=("PROXY_UID",),
      help="comma list of UIDs (or user names) whose traffic is not redirected; empty = uid of ENVOY_USER, else 1337"),
    F("proxy-gid", short="g", env=("PROXY_GID",),
      help="comma list of GIDs (or group names) whose traffic is not redirected; empty = the --proxy-uid value"),
    F("istio-inbound-interception-mode", short="m", env=("ISTIO_INBOUND_INTERCEPTION_MODE",),
      help="inbound interception mode: REDIRECT or TPROXY (empty = REDIRECT)"),
    F("istio-inbound-ports", short="b", env=("ISTIO_INBOUND_PORTS",),
      help="comma list of inbound ports to capture; '*' = all, empty = none"),
    F("istio-local-exclude-ports", short="d", env=("ISTIO_LOCAL_EXCLUDE_PORTS",),
      help="comma list of inbound ports not to capture (only with -b '*')"),
    F("istio-exclude-interfaces", short="c", env=("ISTIO_EXCLUDE_INTERFACES",),
      help="comma list of interfaces captured in neither direction"),
    F("istio-service-cidr", short="i", env=("ISTIO_SERVICE_CIDR",),
      help="comma list of outbound destination CIDRs to capture; '*' = all, empty = none"),
    F("istio-service-exclude-cidr", short="x", env=("ISTIO_SERVICE_EXCLUDE_CIDR",),
      help="comma list of outbound destination CIDRs never captured ('*' is rejected)"),
    F("istio-outbound-ports", short="q", env=("ISTIO_OUTBOUND_PORTS",),
      help="comma list of outbound TCP ports always captured"),
    F("istio-local-outbound-ports-exclude", short="o", env=("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",),
      help="comma list of outbound ports (TCP and UDP) never captured"),
    F("kube-virt-interfaces", short="k", env=("KUBE_VIRT_INTERFACES",),
      help="comma list of virtual interfaces whose inbound traffic is treated as outbound"),
    F("istio-inbound-tproxy-mark", short="t", default="1337", env=("ISTIO_INBOUND_TPROXY_MARK",),
      help="TPROXY packet/connection mark and ip rule fwmark (decimal)"),
    F("istio-inbound-tproxy-route-table", short="r", default="133", env=("ISTIO_INBOUND_TPROXY_ROUTE_TABLE",),
      help="policy-routing table for TPROXY (decimal)"),
    F("dry-run", short="n", kind="bool", default=False, env=("DRY_RUN",),
      help="print the commands (Istio's transcript) on stdout instead of running them"),
    F("iptables-probe-port", kind="uint16", default=15002, env=("IPTABLES_PROBE_PORT",),
      help="original destination port of the --run-validation probe"),
    F("probe-timeout", kind="duration", default=5.0, env=("PROBE_TIMEOUT",), help="--run-validation timeout"),
    F("skip-rule-apply", kind="bool", default=False, env=("SKIP_RULE_APPLY",),
      help="skip all rule and route programming (with --run-validation)"),
    F("run-validation", kind="bool", default=False, env=("RUN_VALIDATION",),
      help="check that the rules capture traffic (exit 126 when not)"),
    F("redirect-dns", kind="bool", default=False, env=("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"),
      help="capture DNS (port 53) to the agent on 15053"),
    F("drop-invalid", kind="bool", default=False, env=("DROP_INVALID", "INVALID_DROP"),
      help="drop conntrack-INVALID packets (mangle)"),
    F("dual-stack", kind="bool", default=False, env=("DUAL_STACK", "ISTIO_DUAL_STACK"),
      help="IPv6 is on when any global address is IPv6 (not only the first)"),
    F("capture-all-dns", kind="bool", default=False, env=("CAPTURE_ALL_DNS",),
      help="with --redirect-dns, capture all port-53 traffic, not only to resolv.conf servers"),
    F("network-namespace", env=("NETWORK_NAMESPACE",), help="netns path (CNI-mode locking only)"),
    F("cni-mode", kind="bool", default=False, env=("CNI_MODE",), help="run as Istio CNI does (pod-scoped xtables lock)"),
    F("reconcile", kind="bool", default=False, env=("RECONCILE",),
      help="when different rules are in place, clean them up and apply these"),
    F("cleanup-only", kind="bool", default=False, env=("CLEANUP_ONLY",),
      help="only remove the rules these flags would create"),
    F("force-apply", kind="bool", default=False, env=("FORCE_APPLY",),
      help="apply even when the rules appear to be in place"),
    F("native-nftables", kind="bool", default=False, env=("NATIVE_NFTABLES",),
      help="use Istio's native nftables rules (one nft transaction) instead of iptables"),
    F("force-iptables-binary", env=("FORCE_IPTABLES_BINARY",), help="force the iptables backend: legacy or nft"),
    F("verify", kind="bool", default=False, env=("VERIFY",),
      help="(beyond Istio) compare live rules with these flags' rules, print the difference; exit 0 in place, 1 not"),
)
del F

#: Settings with no flag (Istio reads them with env.Register): from the environment only, so no
#: flag overrides them.
ENV_ONLY: tuple[tuple[str, str, str], ...] = (
    ("ISTIO_OUTBOUND_OWNER_GROUPS", "*", "groups (names or GIDs, comma list) whose outbound traffic is captured; '*' = all"),
    ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "", "groups whose outbound traffic is not captured (only when the include list is '*')"),
    ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32", "IPv4 loopback prefix of the 'not to local' matches, printed as given"),
    ("ENVOY_USER", "istio-proxy", "account whose UID is the default --proxy-uid (1337 when it does not exist)"),
    ("DRY_RUN_FILE_PATH", "", "in dry-run, also write the transcript to this file (not truncated, as Istio)"),
)

MAX_OWNER_GROUPS = 64
DEFAULT_LOOPBACK_CIDR = "127.0.0.1/32"


class IptablesConfig(Record):
    """Every setting, validated. Lists are tuples of items as given (split on ',', empty items
    dropped, no trimming: Istio's config.Split).

    `inbound_ports == ("*",)` and `service_cidrs == ("*",)` are the wildcards. CIDRs are in canonical
    form without host-bit masking (`2001:DB8::/32` -> `2001:db8::/32`, `10.0.0.1/8` stays).
    """

    envoy_port: str = "15001"
    inbound_capture_port: str = "15006"
    inbound_tunnel_port: str = "15008"
    proxy_uids: tuple[str, ...] = ()
    proxy_gids: tuple[str, ...] = ()
    tproxy: bool = False
    inbound_ports: tuple[str, ...] = ()
    local_exclude_ports: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    service_cidrs: tuple[str, ...] = ()
    service_exclude_cidrs: tuple[str, ...] = ()
    outbound_ports: tuple[str, ...] = ()
    outbound_ports_exclude: tuple[str, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    tproxy_mark: str = "1337"
    tproxy_route_table: str = "133"
    dry_run: bool = False
    probe_port: int = 15002
    probe_timeout: float = 5.0
    skip_rule_apply: bool = False
    run_validation: bool = False
    redirect_dns: bool = False
    drop_invalid: bool = False
    dual_stack: bool = False
    capture_all_dns: bool = False
    network_namespace: str = ""
    cni_mode: bool = False
    reconcile: bool = False
    cleanup_only: bool = False
    force_apply: bool = False
    native_nftables: bool = False
    force_iptables_binary: str = ""
    verify: bool = False
    # env-only
    owner_groups_include: tuple[str, ...] | None = None  # None = '*' (all groups)
    owner_groups_exclude: tuple[str, ...] = ()
    loopback_cidr: str = "127.0.0.1/32"
    envoy_user: str = "istio-proxy"
    dry_run_file_path: str = ""

    @property
    def mode(self) -> str:
        return "TPROXY" if self.tproxy else "REDIRECT"

    @property
    def inbound_all(self) -> bool:
        return self.inbound_ports == ("*",)

    @property
    def outbound_all(self) -> bool:
        return self.service_cidrs == ("*",)


class Problem(Record):
    """One bad setting. `usage` problems exit 255 (bad command line); the others exit 1 (as Istio)."""

    setting: str  # "--envoy-port" or an env var name
    value: str
    reason: str
    usage: bool = True

    def __str__(self) -> str:
        # One line whatever the value holds: control characters are shown escaped.
        shown = self.value if self.value.isprintable() else self.value.encode("unicode_escape").decode()
        return f'invalid value "{shown}" for {self.setting}: {self.reason}'


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems

    @property
    def usage(self) -> bool:
        return any(p.usage for p in self.problems)


def split_list(text: str) -> tuple[str, ...]:
    """Istio's comma lists: split on ',', drop empty items, no trimming, no de-duplication."""
    return tuple(item for item in text.split(",") if item)


def parse_prefix(text: str) -> str:
    """Go's netip.ParsePrefix, returning the canonical text without masking host bits."""
    import ipaddress  # only for CIDR flags (see agent/iptables/__init__.py)

    addr_text, slash, bits_text = text.partition("/")
    if not slash:
        raise ValueError("no '/' in CIDR")
    if "%" in addr_text:
        raise ValueError("zones are not allowed in a CIDR")
    addr = ipaddress.ip_address(addr_text)  # ValueError on a bad address (leading zeros too)
    limit = 32 if addr.version == 4 else 128
    if not bits_text.isdigit() or not bits_text.isascii() or (len(bits_text) > 1 and bits_text[0] == "0"):
        raise ValueError(f"bad prefix length {bits_text!r}")
    if int(bits_text) > limit:
        raise ValueError(f"prefix length {bits_text} out of range 0-{limit}")
    return f"{addr}/{int(bits_text)}"


def _port_problem(text: str) -> str | None:
    if not (text.isascii() and text.isdigit()):
        return "not a port number"
    if not 1 <= int(text) <= 65535:
        return "port out of range 1-65535"
    return None


def _setting(parsed: Any, flag: Flag, environ: Mapping[str, str]) -> str:
    """Name a setting as the user gave it: the flag, or the env var it came from."""
    label = (f"-{flag.short}/" if flag.short else "") + f"--{flag.name}"
    if flag.attr in getattr(parsed, "explicit", ()) or flag.attr not in getattr(parsed, "from_env", ()):
        return label
    var = [v for v in flag.env if v in environ][-1]
    return f"{label} (env {var})"


_BY_ATTR = {f.attr: f for f in FLAGS}
MAX_UINT32 = 2**32 - 1


class _Checker:
    """Collects problems while converting flag values; one instance per load()."""

    def __init__(self, parsed: Any, environ: Mapping[str, str]) -> None:
        self.parsed, self.env, self.problems = parsed, environ, []
        self.nft = bool(parsed.values["native_nftables"])  # the names the rules can carry differ

    def value(self, attr: str) -> Any:
        return self.parsed.values[attr]

    def bad(self, attr: str, value: str, reason: str) -> None:
        self.problems.append(Problem(_setting(self.parsed, _BY_ATTR[attr], self.env), value, reason))

    def port(self, attr: str) -> str:
        text = self.value(attr)
        if (why := _port_problem(text)) is not None:
            self.bad(attr, text, why)
        return text

    def ports(self, attr: str, wildcard: bool = False) -> tuple[str, ...]:
        text = self.value(attr)
        if wildcard and text == "*":
            return ("*",)
        items = split_list(text)
        for item in items:
            if (why := _port_problem(item)) is not None:
                hint = " ('*' is allowed only as the whole value)" if item == "*" and wildcard else ""
                self.bad(attr, text, f"{item!r}: {why}{hint}")
                break
        return items

    def cidrs(self, attr: str, wildcard: bool) -> tuple[str, ...]:
        text = self.value(attr)
        if text == "*":
            if wildcard:
                return ("*",)
            self.bad(attr, text, "'*' is not allowed here (it would exclude every destination)")
            return ()
        out = []
        for item in split_list(text):
            try:
                out.append(parse_prefix(item))
            except ValueError as e:
                self.bad(attr, text, f"{item!r} is not a CIDR (address/bits): {e}")
                break
        return tuple(out)

    def interfaces(self, attr: str) -> tuple[str, ...]:
        text = self.value(attr)
        items = split_list(text)
        for item in items:
            if (why := interface_problem(item, nft=self.nft)) is not None:
                self.bad(attr, text, why)
                break
        return items

    def integer(self, attr: str) -> str:
        text = self.value(attr)
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_UINT32):
            self.bad(attr, text, f"not a decimal integer in 1-{MAX_UINT32}")
        return text

    def owners(self, attr: str, text: str, lookup: Callable[[str], int | None], kind: str) -> tuple[str, ...]:
        items = split_list(text)
        for item in items:
            if (why := owner_problem(item, nft=self.nft)) is not None:
                self.bad(attr, text, f"{kind} {why}")
                break
            if not (item.isascii() and item.isdigit()) and lookup(item) is None:
                self.bad(attr, text, f"{item!r} is neither a numeric {kind} nor a known {kind} name")
                break
        return items


def _mode(check: _Checker) -> bool:
    text = check.value("istio_inbound_interception_mode")
    if text not in ("", "REDIRECT", "TPROXY"):
        check.bad("istio_inbound_interception_mode", text, "must be REDIRECT or TPROXY")
    return text == "TPROXY"


def _proxy_ids(check: _Checker, user_id: Callable[[str], int | None],
               group_id: Callable[[str], int | None]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """As Istio: empty -u is ENVOY_USER's uid (1337 if unknown); empty -g is the -u value."""
    uid_text = check.value("proxy_uid")
    if not uid_text:
        uid = user_id(check.env.get("ENVOY_USER", "istio-proxy"))
        uid_text = str(uid) if uid is not None else "1337"
    before = len(check.problems)
    uids = check.owners("proxy_uid", uid_text, user_id, "uid")
    gid_text = check.value("proxy_gid")
    if not gid_text:
        if len(check.problems) > before:
            return uids, uids  # one line for one bad value: -g only inherits -u's problem
        gid_text = uid_text
    before = len(check.problems)
    gids = check.owners("proxy_gid", gid_text, group_id, "gid")
    if len(check.problems) > before and not check.value("proxy_gid"):
        p = check.problems[-1]
        check.problems[-1] = Problem(p.setting, p.value, p.reason + " (-g defaults to the -u value)")
    return uids, gids


def _env_only(environ: Mapping[str, str], nft: bool) -> tuple[dict[str, Any], list[Problem]]:
    """The env-only settings: owner groups and the loopback CIDR. Istio's checks (config.Validate)
    exit 1, and so do ours; a group name the rules cannot carry is a usage problem (exit 255), as
    for -u/-g. Group names are not looked up (iptables or nft resolve them when applied, as in
    Istio)."""
    problems = []
    include = environ.get("ISTIO_OUTBOUND_OWNER_GROUPS", "*")
    groups = None if include == "*" else split_list(include)
    if groups is not None and len(groups) > MAX_OWNER_GROUPS:
        problems.append(Problem("ISTIO_OUTBOUND_OWNER_GROUPS", include, "number of owner groups whose outgoing "
                                f"traffic should be redirected to Envoy cannot exceed {MAX_OWNER_GROUPS}, "
                                f"got {len(groups)}", usage=False))
    for var in ("ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"):
        text = environ.get(var, "")
        names = () if var == "ISTIO_OUTBOUND_OWNER_GROUPS" and text == "*" else split_list(text)
        whys = (why for name in names if (why := owner_problem(name, nft=nft)) is not None)
        if (why := next(whys, None)) is not None:
            problems.append(Problem(var, text, f"group {why}"))
    loopback = environ.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", DEFAULT_LOOPBACK_CIDR)
    if (why := loopback_problem(loopback)) is not None:
        problems.append(Problem("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", loopback, why, usage=False))
    values = {
        "owner_groups_include": groups,
        "owner_groups_exclude": split_list(environ.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "")),
        "loopback_cidr": loopback,
        "envoy_user": environ.get("ENVOY_USER", "istio-proxy"),
        "dry_run_file_path": environ.get("DRY_RUN_FILE_PATH", ""),
    }
    return values, problems


def loopback_problem(text: str) -> str | None:
    if text == DEFAULT_LOOPBACK_CIDR:
        return None  # valid; not parsed, so that the common path needs no ipaddress import
    try:
        canonical = parse_prefix(text)
    except ValueError as e:
        return f"failed to parse CIDR: {e}"
    addr, bits = canonical.split("/")
    if ":" in addr or not addr.startswith("127."):  # canonical IPv4 text: in 127.0.0.0/8
        return "expected valid IPv4 loopback address in CIDR"
    if not 8 <= int(bits) <= 32:
        return "expected CIDR to have mask in range [8, 32]"
    return None


#: Values that need no check beyond their flag kind.
PASSTHROUGH = ("dry_run", "probe_timeout", "skip_rule_apply", "run_validation", "redirect_dns", "drop_invalid",
               "dual_stack", "capture_all_dns", "network_namespace", "cni_mode", "reconcile", "cleanup_only",
               "force_apply", "native_nftables", "verify")


def _other_checks(check: _Checker) -> None:
    if check.value("force_iptables_binary") not in ("", "legacy", "nft"):
        check.bad("force_iptables_binary", check.value("force_iptables_binary"), "must be legacy or nft")
    if check.value("iptables_probe_port") == 0:
        check.bad("iptables_probe_port", "0", "port out of range 1-65535")


def load(parsed: Any, environ: Mapping[str, str], *, user_id: Callable[[str], int | None],
         group_id: Callable[[str], int | None]) -> IptablesConfig:
    """Build the config from parsed flags (agent.flags.Parsed) and the environment.

    Raises ConfigError with every problem found; `.usage` tells 255 from 1. Nothing here touches
    the host except through the two injected name lookups.
    """
    check = _Checker(parsed, environ)
    tproxy = _mode(check)
    uids, gids = _proxy_ids(check, user_id, group_id)
    values = dict(
        envoy_port=check.port("envoy_port"),
        inbound_capture_port=check.port("inbound_capture_port"),
        inbound_tunnel_port=check.port("inbound_tunnel_port"),
        proxy_uids=uids, proxy_gids=gids, tproxy=tproxy,
        inbound_ports=check.ports("istio_inbound_ports", wildcard=True),
        local_exclude_ports=check.ports("istio_local_exclude_ports"),
        exclude_interfaces=check.interfaces("istio_exclude_interfaces"),
        service_exclude_cidrs=check.cidrs("istio_service_exclude_cidr", wildcard=False),
        service_cidrs=check.cidrs("istio_service_cidr", wildcard=True),
        outbound_ports=check.ports("istio_outbound_ports"),
        outbound_ports_exclude=check.ports("istio_local_outbound_ports_exclude"),
        kube_virt_interfaces=check.interfaces("kube_virt_interfaces"),
        tproxy_mark=check.integer("istio_inbound_tproxy_mark"),
        tproxy_route_table=check.integer("istio_inbound_tproxy_route_table"),
        force_iptables_binary=check.value("force_iptables_binary"),
    )
    _other_checks(check)
    values.update({attr: check.value(attr) for attr in PASSTHROUGH}, probe_port=check.value("iptables_probe_port"))
    env_values, env_problems = _env_only(environ, check.nft)
    problems = check.problems + env_problems
    if problems:
        # Usage problems first: they decide the exit code and the first line the user reads.
        raise ConfigError(sorted(problems, key=lambda p: not p.usage))
    return IptablesConfig(**values, **env_values)
