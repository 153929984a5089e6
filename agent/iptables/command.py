"""`pilot-agent istio-iptables`: parse, validate, gather host facts, build the rules, run the flow.

Exit paths:
  0    rules applied, or already in place, or dry-run done, or --verify found them in place
  1    a run failure: no usable local address, unreadable resolv.conf, owner groups > 64, bad
       loopback CIDR (Istio's checks), iptables/route failures, --verify found a difference
  126  --run-validation failed
  255  a bad command line: unknown flag, bad flag value, any value our validation refuses;
       one `Error: ...` line per problem on stderr and nothing touched.

One iptables flow (agent.iptables.apply) whatever the mode; only the runner differs, as in Istio's
ProgramIptables (https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/cmd/root.go):
the real one, or with --dry-run a recorder, whose transcript goes to stdout once the flow is done
(after the difference, with --verify; logs go to stderr). --native-nftables hands over to
agent.iptables.nft_command instead; each backend's modules are imported only on its own path.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from agent import flags
from agent.exitcodes import Exit
from agent.iptables import host, rules
from agent.iptables import config as cfgmod
from agent.iptables.config import ConfigError, IptablesConfig
from agent.iptables.logger import DEBUG, log, log_level

TITLE = """pilot-agent istio-iptables: set up the pod's traffic capture (Istio's init container).

Usage:
  pilot-agent istio-iptables [flags]"""


def all_flags() -> tuple[flags.Flag, ...]:
    return cfgmod.FLAGS + flags.INIT_LOG_FLAGS


EMPTY = '""'


def help_text() -> str:
    env_only = "\n".join(f"  {var:<40} {text} (default {default or EMPTY})" for var, default, text in cfgmod.ENV_ONLY)
    return flags.usage(TITLE, all_flags()) + "\nEnvironment-only settings:\n" + env_only + "\n"


def env_only_table() -> str:
    rows = ["| env var | default | meaning |", "|---|---|---|"]
    rows += [f"| `{var}` | `{default or EMPTY}` | {text} |" for var, default, text in cfgmod.ENV_ONLY]
    return "\n".join(rows) + "\n"


class _Stop(Exception):
    """The run ends before the flow, with this exit code (help printed, or a bad command line)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _load(argv: Sequence[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> IptablesConfig:
    """The config, with the log configured; or _Stop: --help, or one `Error:` line per problem."""
    try:
        parsed = flags.parse(all_flags(), argv, environ, allow_unknown=False)
    except flags.UsageError as e:
        err.write(f"Error: {e}\n")
        raise _Stop(Exit.USAGE) from None
    if parsed.help:
        out.write(help_text())
        raise _Stop(Exit.OK)
    try:
        level = log_level(parsed.values["log_output_level"])
    except ValueError as e:
        err.write(f'Error: invalid value "{parsed.values["log_output_level"]}" for --log_output_level: {e}\n')
        raise _Stop(Exit.USAGE) from None
    try:
        cfg = cfgmod.load(parsed, environ, user_id=host.user_id, group_id=host.group_id)
    except ConfigError as e:
        err.writelines(f"Error: {p}\n" for p in e.problems)
        raise _Stop(Exit.USAGE if e.usage else Exit.FAILURE) from None
    log.configure(level, parsed.values["log_as_json"], err)  # stderr: the dry-run transcript owns stdout
    return cfg


def run(argv: Sequence[str], environ: Mapping[str, str], *, stdout: TextIO | None = None,
        stderr: TextIO | None = None, gather: Callable[..., host.HostFacts] = host.gather) -> int:
    """The mode's entry point (agent.cli). Tests inject stdout/stderr and the host-facts reader."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        cfg = _load(argv, environ, out, err)
    except _Stop as stop:
        return stop.code
    try:
        facts = gather(dual_stack=cfg.dual_stack, need_dns=cfg.redirect_dns and not cfg.capture_all_dns)
    except host.HostError as e:
        log.error("%s", e)
        return Exit.FAILURE
    if cfg.redirect_dns and not rules.dns_enabled(cfg, facts):
        log.warning("REDIRECT_DNS is set but no DNS servers were found in %s; DNS capture is off", host.RESOLV_CONF)
    if cfg.native_nftables:
        from agent.iptables import nft_command

        _log_config(cfg, facts)
        return nft_command.run(cfg, facts, out)
    return _run_iptables(cfg, facts, out)


def _run_iptables(cfg: IptablesConfig, facts: host.HostFacts, out: TextIO) -> int:
    """The iptables mode: the apply flow with the real runner, or with --dry-run the recorder."""
    from agent.iptables import apply
    from agent.iptables.runner import RealRunner

    ruleset = rules.build(cfg, facts)
    _log_config(cfg, facts)
    if not cfg.dry_run:
        lockfile = cfg.network_namespace if cfg.cni_mode else ""
        return apply.main(cfg, ruleset, facts, RealRunner(force=cfg.force_iptables_binary, lockfile=lockfile), out)
    from agent.iptables.recorder import DryRunRecorder

    log.info("running iptables in dry-run mode")
    recorder = DryRunRecorder(file_path=cfg.dry_run_file_path)
    code = apply.main(cfg, ruleset, facts, recorder, out)
    out.write(recorder.transcript)
    out.flush()
    return code


def _log_config(cfg: IptablesConfig, facts: host.HostFacts) -> None:
    if log.isEnabledFor(DEBUG):
        for name, value in sorted(vars(cfg).items()):
            log.debug("config %s=%s", name, value)
    log.info("host ipv6=%s host_ip=%s dns_v4=%s dns_v6=%s mode=%s", facts.enable_ipv6, facts.host_ip,
             ",".join(facts.dns_v4), ",".join(facts.dns_v6), cfg.mode)
