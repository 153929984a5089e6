"""`pilot-agent istio-iptables --native-nftables`: Istio's native nftables mode.

agent.iptables.command parses and validates the flags, reads the host facts, then hands over
here (only with `--native-nftables`, so the iptables path never imports the nft modules). The
run, as Istio's (https://github.com/istio/istio/blob/master/tools/istio-nftables/pkg/nft/program.go):

* `--skip-rule-apply`: nothing is generated, printed or applied (validation, if asked, still runs);
* `--dry-run`: the transaction (agent.iptables.nft_script) on stdout and nothing else, exit 0.
  Unlike Istio's, whose nft dry run still applies the rules and only skips the routes, ours runs
  no nft and touches nothing: no rule, no route, no address, no sysctl;
* otherwise the real apply: one `nft -f -` transaction, then the routes (`apply_real`).

Then `--run-validation`, as in the iptables mode (exit 126 when it fails).
"""
from __future__ import annotations

from typing import TextIO

from agent.exitcodes import Exit
from agent.iptables import nft_rules, nft_script
from agent.iptables.config import IptablesConfig
from agent.iptables.host import HostFacts
from agent.iptables.logger import log


def run(cfg: IptablesConfig, facts: HostFacts, out: TextIO) -> int:
    """The mode's flow once the config and host facts are in. Returns the exit code."""
    log.info("native nftables enabled, using nft rules for traffic redirection.")
    code = Exit.OK
    if not cfg.skip_rule_apply:
        ruleset = nft_rules.build(cfg, facts)
        code = dry_run(cfg, ruleset, out) if cfg.dry_run else apply_real(cfg, ruleset, facts, out)
    if code == Exit.OK and cfg.run_validation and not cfg.verify:
        from agent.iptables import validation

        if not validation.run(cfg, facts):
            return Exit.VALIDATION_FAILED
    return code


def dry_run(cfg: IptablesConfig, ruleset: nft_rules.RuleSet, out: TextIO) -> int:
    """Print Istio's transaction (what Istio's tool hands to `nft -f -`; the conformance goldens
    are this text), and only that. A real run applies it behind the deletion of those of our
    tables that are live, in the same transaction (agent.iptables.nft_apply)."""
    log.info("dry run: printing the nft transaction; nothing is applied")
    out.write(nft_script.transaction(cfg, ruleset))
    out.flush()
    return Exit.OK


def apply_real(cfg: IptablesConfig, ruleset: nft_rules.RuleSet, facts: HostFacts, out: TextIO) -> int:
    """Apply the transaction and the routes (and --verify / --reconcile / --cleanup-only):
    agent.iptables.nft_apply, which reads our tables back first."""
    from agent.iptables import nft_apply

    return nft_apply.main(cfg, facts, nft_script.render(ruleset), nft_script.render_cleanup(), out)
