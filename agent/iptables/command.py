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

import sys

from agent import flags
from agent.exitcodes import Exit
from agent.iptables import config as cfgmod
from agent.iptables import host, restore, rules
from agent.iptables.config import ConfigError, IptablesConfig
from agent.iptables.logger import DEBUG, log, log_level

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Callable, Mapping, Sequence, TextIO

    from agent.iptables.runner import Runner

TITLE = """pilot-agent istio-iptables: set up the pod's traffic capture (Istio's init container).

Usage:
  pilot-agent istio-iptables [flags]"""


def all_flags() -> tuple[flags.Flag, ...]:
    return cfgmod.FLAGS + flags.LOG_FLAGS


EMPTY = '""'


def help_text() -> str:
    env_only = "\n".join(f"  {var:<40} {text} (default {default or EMPTY})" for var, default, text in cfgmod.ENV_ONLY)
    return flags.usage(TITLE, all_flags()) + "\nEnvironment-only settings:\n" + env_only + "\n"


def env_only_table() -> str:
    rows = ["| env var | default | meaning |", "|---|---|---|"]
    rows += [f"| `{var}` | `{default or EMPTY}` | {text} |" for var, default, text in cfgmod.ENV_ONLY]
    return "\n".join(rows) + "\n"


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
        level = log_level(parsed.values["log_output_level"])
    except ValueError as e:
        err.write(f'Error: invalid value "{parsed.values["log_output_level"]}" for --log_output_level: {e}\n')
        return Exit.USAGE
    try:
        cfg = cfgmod.load(parsed, environ, user_id=host.user_id, group_id=host.group_id)
    except ConfigError as e:
        err.writelines(f"Error: {p}\n" for p in e.problems)
        return Exit.USAGE if e.usage else Exit.FAILURE
    log.configure(level, parsed.values["log_as_json"], err)  # stderr: the dry-run transcript owns stdout
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
        return dry_run(cfg, ruleset, facts, out)
    return _apply(cfg, ruleset, facts, out)


def dry_run(cfg: IptablesConfig, ruleset: rules.RuleSet, facts: host.HostFacts, out: TextIO) -> int:
    """Istio's dry-run (spec §4): every call goes to the recorder, which writes DRY_RUN_FILE_PATH
    (§4.3); the transcript goes to stdout. Touches nothing, needs no iptables binary."""
    from agent.iptables.runner import DryRunRecorder

    log.info("running iptables in dry-run mode")
    recorder = DryRunRecorder(file_path=cfg.dry_run_file_path)
    if cfg.verify:  # beyond Istio: the difference against an empty (recorded) kernel
        return _apply(cfg, ruleset, facts, out, recorder)
    if not cfg.skip_rule_apply:
        record(cfg, ruleset, recorder)
        log.info("skipping configuring routes due to dry run mode")
    out.write(recorder.transcript)
    out.flush()
    if cfg.run_validation:  # Istio runs the validator in dry-run too (it only listens and connects)
        return _validate(cfg, facts)
    return Exit.OK


def record(cfg: IptablesConfig, ruleset: rules.RuleSet, runner: "Runner") -> None:
    """The calls Istio's flow makes against a clean state (§4.1): both save probes, each family's
    restore document (or, with --cleanup-only, the §5.5 commands), then the final-state saves."""
    families = (4, 6) if ruleset.ipv6 else (4,)
    runner.save(4)
    runner.save(6)  # the v6 probe runs even when IPv6 is off (§9.4)
    for family in families:
        if cfg.cleanup_only:
            for args in restore.cleanup_commands(ruleset.family(family)):
                runner.iptables(family, args, quiet=True)
        else:
            runner.restore(family, restore.render(ruleset.family(family)))
    for family in families:
        runner.save(family)


def transcript(cfg: IptablesConfig, ruleset: rules.RuleSet) -> list[str]:
    """The dry-run transcript as lines (empty with --skip-rule-apply)."""
    from agent.iptables.runner import DryRunRecorder

    recorder = DryRunRecorder()
    if not cfg.skip_rule_apply:
        record(cfg, ruleset, recorder)
    return recorder.lines


def _apply(cfg: IptablesConfig, ruleset: rules.RuleSet, facts: host.HostFacts, out: TextIO,
           runner: "Runner | None" = None) -> int:
    """Real mode: the iptables-apply orchestrator owns verify/reconcile/cleanup/apply/routes and
    --run-validation."""
    from agent.iptables import apply  # imported only when needed

    return int(apply.main(cfg, ruleset, facts, runner=runner, out=out))


def _validate(cfg: IptablesConfig, facts: host.HostFacts) -> int:
    from agent.iptables import validation

    return Exit.OK if validation.run(cfg, facts) else Exit.VALIDATION_FAILED


def _log_config(cfg: IptablesConfig, facts: host.HostFacts) -> None:
    if log.isEnabledFor(DEBUG):
        for name, value in sorted(vars(cfg).items()):
            log.debug("config %s=%s", name, value)
    log.info("host ipv6=%s host_ip=%s dns_v4=%s dns_v6=%s mode=%s", facts.enable_ipv6, facts.host_ip,
             ",".join(facts.dns_v4), ",".join(facts.dns_v6), cfg.mode)
