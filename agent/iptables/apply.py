"""The one istio-iptables flow: look at the kernel, decide, change it atomically, then routes and
validation. It runs against a Runner (agent.iptables.runner): the real one, or dry-run's recorder,
as Istio's capture code runs against RealDependencies or DependenciesStub
(https://github.com/istio/istio/tree/master/tools/istio-iptables/pkg/dependencies). It never builds
commands itself: documents come from agent.iptables.restore and agent.iptables.documents.

Per family (4, then 6 when IPv6 is on) it reads the live rules once (the binary detection's own
`-save`), then:

* nothing of ours live (no ISTIO_* chain, no jump to one): **apply** - one
  `iptables-restore --noflush` per family. This is the common path: 2 processes per family.
* ours live and identical to what these flags create (every chain present, ISTIO_* rule counts
  equal, every expected rule passes `-C`; the `-C` checks go in ONE restore document): **nothing
  to do**, exit 0. `--force-apply` re-applies anyway (as a reconcile, instead of Istio's
  "Chain already exists" failure). When one family is in place and the other has nothing of ours
  (a run killed between IPv4 and IPv6, re-run by kubelet with the same flags), the missing family
  is applied as fresh.
* ours live but different (**drift**): without `--reconcile`, exit 1 with one line naming the
  first difference and saying to use --reconcile; nothing is touched. With `--reconcile`:
  guardrails (DROP tcp/udp in filter INPUT/FORWARD/OUTPUT) go in, then one restore per family swaps
  the old rules for the new ones in a single transaction, then the guardrails come out again,
  whatever happened.

Failure leaves nothing half-applied: iptables-restore commits per table, so when a restore fails
(or IPv6 fails after IPv4 succeeded) every table we touched is put back from the snapshot taken
before we started (one `iptables-restore` without --noflush of the saved tables).

`--cleanup-only` removes what these flags create, limited to what is live, in one restore per
family; if that document fails it falls back to Istio's one-command-at-a-time, errors ignored.
`--verify` prints the difference in iptables-save form (agent.iptables.restore.diff) and exits 0
when in place, 1 when not. Exit codes: 0, 1 (any failure), 126 (validation).
"""
from __future__ import annotations

from typing import TextIO

from agent.exitcodes import Exit
from agent.iptables import documents, host, restore
from agent.iptables.config import IptablesConfig
from agent.iptables.host import HostFacts
from agent.iptables.logger import DEBUG, log
from agent.iptables.rules import BUILTIN, Rule, RuleSet
from agent.iptables.runner import IptablesError, RouteError, Runner


class Drift(Exception):
    """Different rules of ours are live and --reconcile is off (exit 1, nothing touched)."""


# ---- the orchestrator ---------------------------------------------------------------------------

class Family:
    """One address family's rules, and its live rules when we started (save text and parsed)."""

    def __init__(self, number: int, rules: tuple[Rule, ...]) -> None:
        self.number, self.rules = number, rules
        self.before = ""
        self.live: restore.State = {}

    @property
    def label(self) -> str:
        return f"IPv{self.number}"


class Applier:
    def __init__(self, cfg: IptablesConfig, ruleset: RuleSet, runner: Runner, out: TextIO) -> None:
        self.cfg, self.ruleset, self.runner, self.out = cfg, ruleset, runner, out
        numbers = (4, 6) if ruleset.ipv6 else (4,)
        self.families = [Family(n, ruleset.family(n)) for n in numbers]
        self.replaced = False  # rules of other flags were replaced: the routes get a look too

    def read_state(self) -> None:
        """Each family's live rules. Istio reads both families whatever IPv6 says (its residue
        check, VerifyIptablesState in pkg/capture/helper.go); so does the flow when reads are free
        (the recorder), so that a dry-run transcript lists what Istio's does. The real runner
        leaves IPv6 alone when it is off: a process for a state nothing uses."""
        mine = {fam.number: fam for fam in self.families}
        for number in (4, 6) if self.runner.free_reads else tuple(mine):
            text = self.runner.save(number)
            if number in mine:
                mine[number].before, mine[number].live = text, restore.parse_save(text)

    # -- decisions
    def run(self) -> int:
        self.read_state()
        if self.cfg.verify:
            return self.verify()
        if self.cfg.cleanup_only:
            self.cleanup()
            return Exit.OK
        if not any(restore.ours_live(f.live) for f in self.families):
            self.apply_fresh()
            return Exit.OK
        reason = self.first_drift()
        if reason is None and not self.cfg.force_apply:
            missing = [f for f in self.families if not restore.ours_live(f.live)]
            if missing:  # a run killed between families (IPv4 in, IPv6 not): finish it
                log.info("iptables rules of these flags are in place for %s only; completing",
                         ", ".join(f.label for f in self.families if f not in missing))
                self.apply_fresh(missing)
            else:
                log.info("iptables rules already in place; nothing to do")
            return Exit.OK
        if reason is not None and not self.cfg.reconcile and not self.cfg.force_apply:
            raise Drift(f"iptables rules from different settings are in place ({reason}); "
                        "re-run with --reconcile to replace them")
        self.reconcile(reason or "--force-apply")
        return Exit.OK

    def first_drift(self) -> str | None:
        """The first difference from these flags' rules, in the families where rules of ours are
        live (a family with none is not drift: an earlier run was killed before reaching it)."""
        for fam in self.families:
            if not restore.ours_live(fam.live):
                continue
            reason = documents.drift_reason(restore.expected_state(fam.rules), fam.live)
            if reason is None:
                text, where = documents.check_document(fam.rules)
                line = self.runner.check(fam.number, text)
                if line is not None:
                    rule = where.get(line)
                    reason = f"{rule.table} rule not in place: {rule.text()}" if rule else "a rule is not in place"
            if reason is not None:
                return f"{fam.label}: {reason}"
        return None

    # -- changing things
    def apply_fresh(self, families: list[Family] | None = None) -> None:
        docs = [(fam, restore.render(fam.rules)) for fam in families or self.families if fam.rules]
        self.transaction([(fam, doc, list(restore.document_blocks(doc))) for fam, doc in docs])
        log.info("iptables rules applied (%s)", ", ".join(f.label for f, _ in docs))

    def transaction(self, steps: list[tuple[Family, str, list[str]]]) -> None:
        """Run one restore per family; on any failure put back every table already touched."""
        done: list[tuple[Family, list[str]]] = []
        for fam, doc, tables in steps:
            try:
                self.runner.restore(fam.number, doc)
            except IptablesError as e:
                hint = self.runner.explain(fam.number)
                partial = documents.committed_tables(doc, e.line)
                self.rollback(done + ([(fam, partial)] if partial else []))
                raise IptablesError(f"{fam.label}: {e}" + (f" ({hint})" if hint else "")) from None
            done.append((fam, tables))

    def rollback(self, done: list[tuple[Family, list[str]]]) -> None:
        for fam, tables in reversed(done):
            try:
                self.runner.restore(fam.number, documents.snapshot_document(fam.before, tables), noflush=False)
                log.info("rolled back %s tables %s", fam.label, ",".join(tables))
            except IptablesError as e:
                log.error("rollback of %s failed: %s", fam.label, e)

    def reconcile(self, reason: str) -> None:
        log.info("reconciling iptables rules: %s", reason)
        steps = []
        for fam in self.families:
            present = self.present(fam, [r for r in fam.rules if r.chain in BUILTIN and
                                         not documents.ours_in_builtin(r.table, r.chain, r.args)])
            doc = documents.swap_document(fam.live, fam.rules, present)
            steps.append((fam, doc, list(restore.document_blocks(doc))))
        installed = self.guardrails_on()
        try:
            self.transaction(steps)
        except BaseException:
            self.guardrails_off(installed, quiet=True)  # keep the first error
            raise
        self.guardrails_off(installed)
        self.replaced = True
        log.info("iptables rules reconciled")

    def guardrails_on(self) -> list[Family]:
        """Block traffic while rules change (see documents.guardrail_document). All or nothing
        across families."""
        installed: list[Family] = []
        for fam in self.families:
            try:
                self.runner.restore(fam.number, documents.guardrail_document(True, fam.live))
            except IptablesError as e:
                self.guardrails_off(installed, quiet=True)
                raise IptablesError(f"failed to install guardrails ({fam.label}): {e}") from None
            installed.append(fam)
        return installed

    def guardrails_off(self, installed: list[Family], quiet: bool = False) -> None:
        for fam in installed:
            try:
                self.runner.restore(fam.number, documents.guardrail_document(False, fam.live))
            except IptablesError as e:
                log.error("failed to remove guardrails (%s); traffic stays blocked: %s", fam.label, e)
                if not quiet:
                    raise

    def present(self, fam: Family, candidates: list[Rule]) -> list[Rule]:
        """Which of `candidates` are live, with as few `-C` restores as it takes (one when all
        are; one more per missing rule)."""
        candidates = [r for r in candidates if r.table in fam.live]
        for _ in range(len(candidates) + 1):
            if not candidates:
                return []
            text, where = documents.check_document(candidates)
            line = self.runner.check(fam.number, text)
            if line is None:
                return candidates
            if line not in where:
                break
            candidates = [r for r in candidates if r is not where[line]]
        return [r for r in candidates if self.runner.iptables(fam.number, restore.check_args(r), quiet=True).ok]

    def cleanup(self) -> None:
        for fam in self.families:
            doc = self.cleanup_document(fam)
            if not doc:
                log.info("%s: nothing of these flags' rules is in place; nothing to clean up", fam.label)
                continue
            try:
                self.runner.restore(fam.number, doc)
            except IptablesError as e:
                log.info("%s: cleanup in one transaction failed (%s); removing rule by rule", fam.label, e)
                for args in restore.cleanup_commands(fam.rules):
                    self.runner.iptables(fam.number, args, quiet=True)
        from agent.iptables import routes

        routes.cleanup(self.cfg, self.ruleset.ipv6, self.runner)
        log.info("cleanup done")

    def cleanup_document(self, fam: Family) -> str:
        """Istio's cleanup commands (restore.cleanup_commands), keeping only what is live, as one
        document (empty: nothing to do)."""
        live = fam.live
        chains = [(t, c) for t, c in dict.fromkeys((r.table, r.chain) for r in reversed(fam.rules))
                  if c not in BUILTIN and c in live.get(t, {})]
        flushed = set(chains)
        deletes = [r for r in reversed(fam.rules) if (r.table, r.chain) not in flushed
                   and (not restore.is_istio_chain(r.chain) or restore.jumps_to_istio(r.args))
                   and (r.target is None or r.target in BUILTIN or r.target in live.get(r.table, {}))]
        live_deletes = set(self.present(fam, deletes))
        deletes = [r for r in deletes if r in live_deletes]
        blocks: dict[str, list[str]] = {}
        for r in deletes:
            blocks.setdefault(r.table, []).append(" ".join(("-D", r.chain, *r.args)))
        for t, c in chains:
            blocks.setdefault(t, []).append(f"-F {c}")
        for t, c in chains:
            refs = sum(1 for ch, ls in live[t].items() if (t, ch) not in flushed
                       for line in ls if line.split()[-2:] == ["-j", c])
            if refs <= sum(1 for r in deletes if r.table == t and r.target == c):
                blocks[t].append(f"-X {c}")
            else:
                log.warning("%s: %s %s is still used by other rules; flushed but kept", fam.label, t, c)
        return restore.join_blocks(blocks)

    def verify(self) -> int:
        lines: list[str] = []
        for fam in self.families:
            # owner names (-u istio-proxy) resolved: iptables-save prints the numeric ids
            diff = restore.diff(restore.expected_state(fam.rules), fam.live, host.owner_id)
            if diff:
                lines += [f"# {fam.label} ({self.runner.describe(fam.number)}): - live only, + missing", *diff]
        from agent.iptables import routes

        return routes.verify_report(self.cfg, self.ruleset.ipv6, self.runner, lines, self.out, "iptables")

    def log_final_state(self) -> None:
        """Istio logs every family's final state. That costs the real runner a process per family,
        so it does only when debug logging is on; with free reads (the recorder) it always does."""
        if not (self.runner.free_reads or log.isEnabledFor(DEBUG)):
            return
        for fam in self.families:
            try:
                log.debug("final %s state:\n%s", fam.label, self.runner.save(fam.number))
            except IptablesError as e:
                log.debug("final %s state unavailable: %s", fam.label, e)


def main(cfg: IptablesConfig, ruleset: RuleSet, facts: HostFacts, runner: Runner, out: TextIO) -> int:
    """Apply (or verify / clean up), then routes, then --run-validation. Returns the exit code."""
    code = Exit.OK
    if not cfg.skip_rule_apply:
        applier = Applier(cfg, ruleset, runner, out)
        try:
            code = applier.run()
            if code == Exit.OK and not (cfg.verify or cfg.cleanup_only) and \
                    (ruleset.ipv6 or cfg.tproxy or applier.replaced):
                from agent.iptables import routes  # only IPv6 (::6 on lo), TPROXY and a reconcile need it

                routes.configure(cfg, ruleset.ipv6, runner, replaced=applier.replaced)
        except (Drift, IptablesError, RouteError) as e:
            log.error("%s", e)
            code = Exit.FAILURE
        finally:
            applier.log_final_state()
            log.debug("processes spawned: %d (%s)", len(runner.spawned), "; ".join(a[0] for a in runner.spawned))
    if code == Exit.OK and cfg.run_validation and not cfg.verify:
        from agent.iptables import validation

        if not validation.run(cfg, facts):
            return Exit.VALIDATION_FAILED
    return code
