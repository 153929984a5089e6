"""TPROXY policy routing and the IPv6 passthrough address, with iproute2 (Istio's ConfigureRoutes,
https://github.com/istio/istio/blob/master/tools/common/tproxy/run_linux.go).

What Istio does through netlink, done here with `ip` and made idempotent by looking first:

* IPv6 on: `::6/128` on `lo` (the proxy's inbound-passthrough source address). Checked in
  /proc/net/if_inet6 (no process); added with `ip -6 addr add ::6/128 dev lo` when missing.
* TPROXY with inbound ports: per family, `ip rule add fwmark <MARK> lookup <TABLE>` and
  `ip route add local default dev lo table <TABLE>`. One `ip -batch` lists the rules and the
  table; a second adds only what is missing. The kernel accepts duplicate `ip rule`s, so Istio's
  blind add stacks one more rule per re-run; looking first keeps a re-run a no-op.

`cleanup()` removes the same things (for --cleanup-only), and so does a reconcile to flags without
TPROXY. `missing()` lists what is not in place (for --verify). Everything goes through the runner's
`run(argv)`, so dry-run touches nothing.
"""
from __future__ import annotations

import re
from typing import TextIO

from agent.exitcodes import Exit
from agent.iptables.config import IptablesConfig
from agent.iptables.logger import log
from agent.iptables.runner import RouteError, Runner


IF_INET6 = "/proc/net/if_inet6"
PASSTHROUGH6_HEX = "0" * 31 + "6"


class Plan:
    """The routing state these flags want: TPROXY `families`, `::6` on lo when IPv6 is on."""

    def __init__(self, families: tuple[int, ...], mark: int, table: str, loopback6: bool) -> None:
        self.families, self.mark, self.table, self.loopback6 = families, mark, table, loopback6

    @classmethod
    def of(cls, cfg: IptablesConfig, ipv6: bool) -> "Plan":
        tproxy = cfg.tproxy and bool(cfg.inbound_ports)
        families = ((4, 6) if ipv6 else (4,)) if tproxy else ()
        return cls(families, int(cfg.tproxy_mark), cfg.tproxy_route_table, ipv6)


def has_loopback6(path: str = IF_INET6) -> bool:
    try:
        with open(path) as f:
            return any(line.split()[0] == PASSTHROUGH6_HEX and line.split()[-1] == "lo" for line in f)
    except (OSError, IndexError):
        return False


def _state(runner: Runner, family: int, plan: Plan) -> tuple[bool, bool]:
    """(rule present, route present) for one family, from one `ip -batch` listing."""
    res = _batch(runner, family, ["rule show", f"route show table {plan.table}"], force=True)
    rule = any(_rule_matches(m, plan) for m in re.finditer(r"fwmark (0x[0-9a-fA-F]+|\d+)(?:/\S+)? lookup (\S+)",
                                                           res))
    route = any(line.strip().startswith("local default dev lo") for line in res.splitlines())
    return rule, route


def _rule_matches(m: re.Match, plan: Plan) -> bool:
    return int(m.group(1), 0) == plan.mark and m.group(2) == plan.table


def _batch(runner: Runner, family: int, lines: list[str], *, force: bool = False) -> str:
    argv = ["ip", f"-{family}", *(["-force"] if force else []), "-batch", "-"]
    res = runner.run(argv, stdin="".join(line + "\n" for line in lines))
    if not res.ok and not force:
        raise RouteError(f"failed to configure routes: {' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def configure(cfg: IptablesConfig, ipv6: bool, runner: Runner, *, replaced: bool = False) -> int:
    """Bring routing in line with the flags. Returns how many changes were made.

    ``replaced``: rules of other flags were just replaced (--reconcile, --force-apply). Without
    TPROXY now, the TPROXY routes of this mark and table an earlier run added are removed too, so
    going back to REDIRECT leaves no stale rule; a fresh pod's run does not look for them."""
    plan = Plan.of(cfg, ipv6)
    changes = 0
    if replaced and not plan.families:
        changes += _remove(runner, Plan((4, 6) if ipv6 else (4,), plan.mark, plan.table, ipv6))
    if plan.loopback6 and not has_loopback6():
        res = runner.run(["ip", "-6", "addr", "add", "::6/128", "dev", "lo"])
        if not res.ok and "File exists" not in res.stderr:
            raise RouteError(f"failed to configure routes: add ::6/128 to lo: {res.stderr.strip()}")
        changes += 1
    for family in plan.families:
        rule, route = _state(runner, family, plan)
        todo = ([] if rule else [f"rule add fwmark {plan.mark} lookup {plan.table}"]) + \
               ([] if route else [f"route add local default dev lo table {plan.table}"])
        if todo:
            _batch(runner, family, todo)
            changes += len(todo)
            log.info("routes added family=%s %s", family, "; ".join(todo))
    return changes


def missing(cfg: IptablesConfig, ipv6: bool, runner: Runner) -> list[str]:
    """What `configure` would add, as `ip` command lines (empty when routing is in place)."""
    plan = Plan.of(cfg, ipv6)
    out = [] if not plan.loopback6 or has_loopback6() else ["ip -6 addr add ::6/128 dev lo"]
    for family in plan.families:
        rule, route = _state(runner, family, plan)
        out += [] if rule else [f"ip -{family} rule add fwmark {plan.mark} lookup {plan.table}"]
        out += [] if route else [f"ip -{family} route add local default dev lo table {plan.table}"]
    return out


def verify_report(cfg: IptablesConfig, ipv6: bool, runner: Runner, rule_diff: list[str], out: TextIO,
                  backend: str) -> int:
    """--verify's answer, either backend: the rules' difference (`rule_diff`, with its headers) and
    the missing routes on `out`, exit 1; or a log line that all is in place, exit 0."""
    lines = list(rule_diff)
    if absent := missing(cfg, ipv6, runner):
        lines += ["# routes missing:", *[f"+{m}" for m in absent]]
    if lines:
        out.write("".join(line + "\n" for line in lines))
        out.flush()
        log.error(f"{backend} rules are not in place (difference on stdout)")
        return Exit.FAILURE
    log.info(f"{backend} rules and routes are in place")
    return Exit.OK


def _remove(runner: Runner, plan: Plan) -> int:
    """Delete the TPROXY rule (every copy Istio's blind re-runs stacked) and route of ``plan``'s
    families, errors ignored; how many families had any."""
    removed = 0
    for family in plan.families:
        rule, route = _state(runner, family, plan)
        lines = [f"rule del fwmark {plan.mark} lookup {plan.table}"] * (8 if rule else 0)
        lines += [f"route del local default dev lo table {plan.table}"] if route else []
        if lines:
            _batch(runner, family, lines, force=True)
            log.info("routes removed family=%s (TPROXY mark %s, table %s)", family, plan.mark, plan.table)
            removed += 1
    return removed


def cleanup(cfg: IptablesConfig, ipv6: bool, runner: Runner) -> None:
    """Remove what `configure` adds (errors ignored, as Istio's cleanup)."""
    plan = Plan.of(cfg, ipv6)
    _remove(runner, plan)
    if plan.loopback6 and has_loopback6():
        runner.run(["ip", "-6", "addr", "del", "::6/128", "dev", "lo"])
