"""`pilot-agent istio-iptables`: parse, validate, gather host facts, build the rules, hand off.

Exit paths (spec §7, issue 2):
  0    rules applied, or already in place, or dry-run done, or --verify found them in place
  1    a run failure: no usable local address, unreadable resolv.conf, owner groups > 64, bad
       loopback CIDR (Istio's checks), iptables/route failures, --verify found a difference
  126  --run-validation failed
  255  a bad command line: unknown flag, bad flag value, any value our validation refuses;
       one `Error: ...` line per problem on stderr and nothing touched.

Standard library only: this runs in every pod's init container, so start-up cost matters.
Dry-run (-n) prints Istio's transcript (spec §4) on stdout and nothing else; logs go to stderr.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Mapping, Sequence, TextIO

from agent import flags
from agent.exitcodes import Exit
from agent.iptables import config as cfgmod
from agent.iptables import host, restore, rules
from agent.iptables.config import ConfigError, IptablesConfig

log = logging.getLogger("istio-iptables")

TITLE = """pilot-agent istio-iptables: set up the pod's traffic capture (Istio's init container).

Usage:
  pilot-agent istio-iptables [flags]"""


def all_flags() -> tuple[flags.Flag, ...]:
    from agent.cli import LOG_FLAGS  # the edge owns the shared logging flags

    return cfgmod.FLAGS + tuple(LOG_FLAGS)


EMPTY = '""'


def help_text() -> str:
    env_only = "\n".join(f"  {var:<40} {text} (default {default or EMPTY})" for var, default, text in cfgmod.ENV_ONLY)
    return flags.usage(TITLE, all_flags()) + "\nEnvironment-only settings:\n" + env_only + "\n"


def run(argv: Sequence[str], environ: Mapping[str, str], *, stdout: TextIO | None = None,
        stderr: TextIO | None = None, gather: Callable[..., host.HostFacts] = host.gather) -> int:
    """The mode's entry point (agent.cli). Tests inject stdout/stderr and the host-facts reader."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        parsed = flags.parse(all_flags(), argv, environ, allow_unknown=False)
    except flags.UsageError as e:
        err.write(f"Error: {e}\n")
        return Exit.USAGE
    if parsed.help:
        out.write(help_text())
        return Exit.OK
    try:
        cfg = cfgmod.load(parsed, environ, user_id=host.user_id, group_id=host.group_id)
    except ConfigError as e:
        err.writelines(f"Error: {p}\n" for p in e.problems)
        return Exit.USAGE if e.usage else Exit.FAILURE
    _setup_logging(parsed.values.get("log_output_level", ""), err)
    if cfg.native_nftables:
        log.error("--native-nftables is not supported by this implementation; use the iptables backend")
        return Exit.FAILURE
    try:
        facts = gather(dual_stack=cfg.dual_stack, need_dns=cfg.redirect_dns and not cfg.capture_all_dns)
    except host.HostError as e:
        log.error("%s", e)
        return Exit.FAILURE
    if cfg.redirect_dns and not rules.dns_enabled(cfg, facts):
        log.warning("REDIRECT_DNS is set but no DNS servers were found in %s; DNS capture is off", host.RESOLV_CONF)
    ruleset = rules.build(cfg, facts)
    _log_config(cfg, facts)
    if cfg.dry_run:
        return dry_run(cfg, ruleset, out)
    return _apply(cfg, ruleset, facts)


def dry_run(cfg: IptablesConfig, ruleset: rules.RuleSet, out: TextIO) -> int:
    """Print the transcript of spec §4.1 (and write DRY_RUN_FILE_PATH, §4.3). Touches nothing."""
    log.info("running iptables in dry-run mode")
    lines = transcript(cfg, ruleset)
    if lines:
        out.write("".join(line + "\n" for line in lines))
        out.flush()
    if cfg.dry_run_file_path and lines:
        _write_untruncated(cfg.dry_run_file_path, lines)
    if not cfg.skip_rule_apply:
        log.info("skipping configuring routes due to dry run mode")
    return Exit.OK


def transcript(cfg: IptablesConfig, ruleset: rules.RuleSet) -> list[str]:
    """What Istio's dry-run stub records: the save probes, the restore documents (or the cleanup
    commands with --cleanup-only), then the final-state saves (§4.1)."""
    if cfg.skip_rule_apply:
        return []
    lines = ["iptables-save", "ip6tables-save"]
    families = [(4, "iptables")] + ([(6, "ip6tables")] if ruleset.ipv6 else [])
    for family, binary in families:
        if cfg.cleanup_only:
            lines += restore.transcript_lines(restore.cleanup_commands(ruleset.family(family)), binary)
        else:
            lines += restore.render(ruleset.family(family)).splitlines()
    lines += [f"{binary}-save" for _, binary in families]
    return lines


def _write_untruncated(path: str, lines: list[str]) -> None:
    """Istio opens the file create|write-only without truncating it; we keep that."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(line + "\n" for line in lines).encode())
    finally:
        os.close(fd)


def _apply(cfg: IptablesConfig, ruleset: rules.RuleSet, facts: host.HostFacts) -> int:
    """Real mode: the iptables-apply orchestrator owns verify/reconcile/cleanup/apply/routes."""
    from agent.iptables import apply  # noqa: PLC0415 - imported only on the real path

    return int(apply.main(cfg, ruleset, facts))


class _Formatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}000Z"
        return f"{stamp}\t{record.levelname.lower().replace('warning', 'warn')}\t{record.getMessage()}"


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR, "fatal": logging.CRITICAL, "none": logging.CRITICAL + 10}


def _setup_logging(level_spec: str, err: TextIO) -> None:
    """Logs go to stderr, never stdout (the dry-run transcript owns stdout). Istio's
    --log_output_level is a comma list of scope:level; we honour the `default` scope."""
    level = logging.INFO
    for item in level_spec.split(","):
        scope, _, name = item.rpartition(":")
        if scope in ("", "default") and name in _LEVELS:
            level = _LEVELS[name]
    handler = logging.StreamHandler(err)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _log_config(cfg: IptablesConfig, facts: host.HostFacts) -> None:
    if log.isEnabledFor(logging.DEBUG):
        for name, value in sorted(vars(cfg).items()):
            log.debug("config %s=%s", name, value)
    log.info("host ipv6=%s host_ip=%s dns_v4=%s dns_v6=%s mode=%s", facts.enable_ipv6, facts.host_ip,
             ",".join(facts.dns_v4), ",".join(facts.dns_v6), cfg.mode)
