"""Real mode: look at the kernel, decide, change it atomically, then routes and validation.

The orchestrator of spec §5 with the stricter re-run behaviour issue 2 asks for. It receives a
runner (agent.iptables.runner) and never builds commands anywhere else. Per family (4, then 6
when IPv6 is on) it reads the live rules once (the binary detection's own `-save`), then:

* nothing of ours live (no ISTIO_* chain, no jump to one): **apply** - one
  `iptables-restore --noflush` per family. This is the common path: 2 processes per family.
* ours live and identical to what these flags create (§5.3: chains present, ISTIO_* rule counts
  equal, every expected rule passes `-C`; the `-C` checks go in ONE restore document): **nothing
  to do**, exit 0. `--force-apply` re-applies anyway (as a reconcile, instead of Istio's
  "Chain already exists" failure). When one family is in place and the other has nothing of ours
  (a run killed between IPv4 and IPv6, re-run by kubelet with the same flags), the missing family
  is applied as fresh.
* ours live but different (**drift**): without `--reconcile`, exit 1 with one line naming the
  first difference and saying to use --reconcile; nothing is touched. With `--reconcile`:
  guardrails (§5.4: DROP tcp/udp in filter INPUT/FORWARD/OUTPUT) go in, then one restore per
  family swaps the old rules for the new ones in a single transaction (delete our jumps from
  built-in chains, flush our chains, delete the ones these flags do not create, add the new
  rules), then the guardrails come out again, whatever happened.

Failure leaves nothing half-applied: iptables-restore commits per table, so when a restore fails
(or IPv6 fails after IPv4 succeeded) every table we touched is put back from the snapshot taken
before we started (one `iptables-restore` without --noflush of the saved tables).

`--cleanup-only` removes what these flags create (§5.5), limited to what is live, in one restore
per family; if that document fails it falls back to Istio's one-command-at-a-time, errors
ignored. `--verify` prints the difference in iptables-save form (agent.iptables.restore.diff) and
exits 0 when in place, 1 when not. Exit codes: 0, 1 (any failure), 126 (validation).
"""
from __future__ import annotations

import sys

from agent.exitcodes import Exit
from agent.iptables import restore
from agent.iptables.config import IptablesConfig
from agent.iptables.host import HostFacts
from agent.iptables.logger import DEBUG, log
from agent.iptables.rules import BUILTIN, Rule, RuleSet
from agent.iptables.runner import IptablesError, RealRunner, RouteError, Runner

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Sequence, TextIO

TABLE_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
GUARDRAILS = tuple((chain, proto) for chain in ("INPUT", "FORWARD", "OUTPUT") for proto in ("tcp", "udp"))


class Drift(Exception):
    """Different rules of ours are live and --reconcile is off (exit 1, nothing touched)."""


# ---- pure helpers -------------------------------------------------------------------------------

def jumps_to_istio(words: Sequence[str]) -> bool:
    return any(a == "-j" and b.startswith("ISTIO") for a, b in zip(words, words[1:]))


def ours_live(state: restore.State) -> bool:
    """Any ISTIO_* chain, or a jump to one: rules from some istio-iptables run are in place."""
    return any(chain.startswith("ISTIO") or any(jumps_to_istio(line.split()) for line in lines)
               for chains in state.values() for chain, lines in chains.items())


def by_table(rules: Sequence[Rule]) -> dict[str, list[Rule]]:
    out: dict[str, list[Rule]] = {}
    for rule in rules:
        out.setdefault(rule.table, []).append(rule)
    return out


def check_document(rules: Sequence[Rule]) -> tuple[str, dict[int, Rule]]:
    """`-C` lines for the rules, grouped by table; and which rule sits on which line."""
    lines: list[str] = []
    where: dict[int, Rule] = {}
    for table, group in by_table(rules).items():
        lines.append(f"*{table}")
        for rule in group:
            lines.append(" ".join(("-C", rule.chain, *rule.args)))
            where[len(lines)] = rule
        lines.append("COMMIT")
    return "".join(line + "\n" for line in lines), where


def document_blocks(text: str) -> dict[str, list[str]]:
    """A restore/save document -> table -> its lines between `*table` and COMMIT (no comments)."""
    blocks: dict[str, list[str]] = {}
    table = None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            blocks[table] = []
        elif line.strip() == "COMMIT":
            table = None
        elif table is not None:
            blocks[table].append(line)
    return blocks


def join_blocks(blocks: dict[str, list[str]]) -> str:
    out = []
    for table, lines in blocks.items():
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "".join(line + "\n" for line in out)


def snapshot_document(before: str, tables: Sequence[str]) -> str:
    """A full (not --noflush) restore that puts `tables` back as they were in `before`; a table
    that did not exist comes back empty with ACCEPT policies."""
    saved = document_blocks(before)
    blocks = {}
    for table in tables:
        empty = [f":{chain} ACCEPT [0:0]" for chain in TABLE_CHAINS.get(table, ())]
        blocks[table] = saved.get(table) or empty
    return join_blocks(blocks)


def committed_tables(doc: str, failed_line: int | None) -> list[str]:
    """iptables-restore commits table by table: the tables whose COMMIT came before the failing
    line are in the kernel. Unknown line: every table but a lone one may be."""
    tables, current = [], None
    lines = doc.splitlines()
    for number, line in enumerate(lines, 1):
        if line.startswith("*"):
            current = line[1:].strip()
        elif line.strip() == "COMMIT" and current:
            if failed_line is not None and number >= failed_line:
                break
            tables.append(current)
    if failed_line is None:
        return tables if len(tables) > 1 else []
    return tables


def istio_shape(table: str, chain: str, words: Sequence[str]) -> bool:
    """Rules Istio puts in built-in chains that do not jump to an ISTIO_ chain, told apart by
    shape only (Istio's text and iptables-save's both match): the -c/-k interface RETURNs
    (`-i X -j RETURN` in PREROUTING, `-o X -j RETURN` in OUTPUT; spec §2.3 steps 1-2) and the
    TPROXY mark/connmark plumbing in mangle (step 17). A reconcile removes them whatever flags
    installed them, so switching flags leaves nothing of the old set behind."""
    words = list(words)
    if table not in ("nat", "mangle") or chain not in ("PREROUTING", "OUTPUT") or "-j" not in words:
        return False
    if len(words) == 4 and words[0] in ("-i", "-o") and words[2:] == ["-j", "RETURN"]:
        return (words[0] == "-i") == (chain == "PREROUTING")
    target = words[words.index("-j") + 1] if words.index("-j") + 1 < len(words) else ""
    return table == "mangle" and (target in ("CONNMARK", "MARK") or
                                  (target == "RETURN" and "lo" in words and "--mark" in words))


def _ours_in_builtin(table: str, chain: str, line: str) -> bool:
    words = line.split()
    return not chain.startswith("ISTIO") and (jumps_to_istio(words) or istio_shape(table, chain, words[2:]))


def swap_document(live: restore.State, rules: Sequence[Rule], present: Sequence[Rule]) -> str:
    """One transaction that replaces our live rules with `rules` (see the module docstring).
    `present` are the other non-jump rules of built-in chains these flags add that are live."""
    new = document_blocks(restore.render(rules))
    blocks: dict[str, list[str]] = {}
    touched = [t for t, chains in live.items() if ours_live({t: chains}) or
               any(_ours_in_builtin(t, c, line) for c, ls in chains.items() for line in ls)]
    for table in dict.fromkeys([*touched, *new]):
        chains = live.get(table, {})
        mine = [c for c in chains if c.startswith("ISTIO")]
        lines = ["-D" + line[2:] for c, ls in chains.items() for line in ls if _ours_in_builtin(table, c, line)]
        lines += [" ".join(("-D", r.chain, *r.args)) for r in present if r.table == table]
        lines += [f"-F {c}" for c in mine]
        created = {line.split()[1] for line in new.get(table, []) if line.startswith("-N ")}
        lines += [f"-X {c}" for c in mine if c not in created]
        lines += [line for line in new.get(table, []) if not (line.startswith("-N ") and line.split()[1] in mine)]
        blocks[table] = lines
    return join_blocks(blocks)


GUARDRAIL_LINES = frozenset(f"-A {chain} -p {proto} -j DROP" for chain, proto in GUARDRAILS)


def guardrail_document(add: bool, live: restore.State) -> str:
    """§5.4 guardrails. Adding first removes stale ones found in `live` (iptables-save prints
    them exactly as GUARDRAIL_LINES), then inserts; removing deletes the six we inserted."""
    if not add:
        return join_blocks({"filter": [f"-D {chain} -p {proto} -j DROP" for chain, proto in GUARDRAILS]})
    stale = [line for lines in live.get("filter", {}).values() for line in lines if line in GUARDRAIL_LINES]
    lines = ["-D" + line[2:] for line in stale]
    lines += [f"-I {chain} 1 -p {proto} -j DROP" for chain, proto in GUARDRAILS]
    return join_blocks({"filter": lines})


def drift_reason(want: restore.State, live: restore.State) -> str | None:
    """§5.3's structural checks (the `-C` check comes after): the first difference, in words."""
    for table, chains in want.items():
        for chain, lines in chains.items():
            have = live.get(table, {}).get(chain)
            if have is None:
                return f"chain {chain} is missing from table {table}"
            if chain.startswith("ISTIO") and len(have) != len(lines):
                return f"{table} {chain} has {len(have)} rules where these flags give {len(lines)}"
    for table, chains in live.items():
        for chain in chains:
            if chain.startswith("ISTIO") and chain not in want.get(table, {}):
                return f"{table} {chain} exists but these flags do not create it"
    return None


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

    def read_state(self) -> None:
        for fam in self.families:
            fam.before = self.runner.save(fam.number)
            fam.live = restore.parse_save(fam.before)

    # -- decisions
    def run(self) -> int:
        self.read_state()
        if self.cfg.verify:
            return self.verify()
        if self.cfg.cleanup_only:
            self.cleanup()
            return Exit.OK
        if not any(ours_live(f.live) for f in self.families):
            self.apply_fresh()
            return Exit.OK
        reason = self.first_drift()
        if reason is None and not self.cfg.force_apply:
            missing = [f for f in self.families if not ours_live(f.live)]
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
            if not ours_live(fam.live):
                continue
            reason = drift_reason(restore.expected_state(fam.rules), fam.live)
            if reason is None:
                text, where = check_document(fam.rules)
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
        self.transaction([(fam, doc, list(document_blocks(doc))) for fam, doc in docs])
        log.info("iptables rules applied (%s)", ", ".join(f.label for f, _ in docs))

    def transaction(self, steps: list[tuple[Family, str, list[str]]]) -> None:
        """Run one restore per family; on any failure put back every table already touched."""
        done: list[tuple[Family, list[str]]] = []
        for fam, doc, tables in steps:
            try:
                self.runner.restore(fam.number, doc)
            except IptablesError as e:
                hint = self.runner.explain(fam.number) if isinstance(self.runner, RealRunner) else ""
                partial = committed_tables(doc, e.line)
                self.rollback(done + ([(fam, partial)] if partial else []))
                raise IptablesError(f"{fam.label}: {e}" + (f" ({hint})" if hint else "")) from None
            done.append((fam, tables))

    def rollback(self, done: list[tuple[Family, list[str]]]) -> None:
        for fam, tables in reversed(done):
            try:
                self.runner.restore(fam.number, snapshot_document(fam.before, tables), noflush=False)
                log.info("rolled back %s tables %s", fam.label, ",".join(tables))
            except IptablesError as e:
                log.error("rollback of %s failed: %s", fam.label, e)

    def reconcile(self, reason: str) -> None:
        log.info("reconciling iptables rules: %s", reason)
        steps = []
        for fam in self.families:
            present = self.present(fam, [r for r in fam.rules if r.chain in BUILTIN and not
                                         (jumps_to_istio(r.args) or istio_shape(r.table, r.chain, r.args))])
            doc = swap_document(fam.live, fam.rules, present)
            steps.append((fam, doc, list(document_blocks(doc))))
        installed = self.guardrails_on()
        try:
            self.transaction(steps)
        except BaseException:
            self.guardrails_off(installed, quiet=True)  # keep the first error
            raise
        self.guardrails_off(installed)
        log.info("iptables rules reconciled")

    def guardrails_on(self) -> list[Family]:
        """§5.4: block traffic while rules change. All or nothing across families."""
        installed: list[Family] = []
        for fam in self.families:
            try:
                self.runner.restore(fam.number, guardrail_document(True, fam.live))
            except IptablesError as e:
                self.guardrails_off(installed, quiet=True)
                raise IptablesError(f"failed to install guardrails ({fam.label}): {e}") from None
            installed.append(fam)
        return installed

    def guardrails_off(self, installed: list[Family], quiet: bool = False) -> None:
        for fam in installed:
            try:
                self.runner.restore(fam.number, guardrail_document(False, fam.live))
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
            text, where = check_document(candidates)
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
        """§5.5's commands, keeping only what is live, as one document (empty: nothing to do)."""
        live = fam.live
        chains = [(t, c) for t, c in dict.fromkeys((r.table, r.chain) for r in reversed(fam.rules))
                  if c not in BUILTIN and c in live.get(t, {})]
        flushed = set(chains)
        deletes = [r for r in reversed(fam.rules) if (r.table, r.chain) not in flushed
                   and (not r.chain.startswith("ISTIO") or jumps_to_istio(r.args))
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
        return join_blocks(blocks)

    def verify(self) -> int:
        lines: list[str] = []
        for fam in self.families:
            diff = restore.diff(restore.expected_state(fam.rules), fam.live)
            if diff:
                lines += [f"# {fam.label} ({self.runner.describe(fam.number)}): - live only, + missing", *diff]
        from agent.iptables import routes

        missing = routes.missing(self.cfg, self.ruleset.ipv6, self.runner)
        lines += ["# routes missing:", *[f"+{m}" for m in missing]] if missing else []
        if lines:
            self.out.write("".join(line + "\n" for line in lines))
            self.out.flush()
            log.error("iptables rules are not in place (difference on stdout)")
            return Exit.FAILURE
        log.info("iptables rules and routes are in place")
        return Exit.OK

    def log_final_state(self) -> None:
        if not log.isEnabledFor(DEBUG):
            return  # Istio always dumps it; it costs a process per family, so only when asked
        for fam in self.families:
            try:
                log.debug("final %s state:\n%s", fam.label, self.runner.save(fam.number))
            except IptablesError as e:
                log.debug("final %s state unavailable: %s", fam.label, e)


def main(cfg: IptablesConfig, ruleset: RuleSet, facts: HostFacts, runner: Runner | None = None,
         out: TextIO | None = None) -> int:
    """Apply (or verify / clean up), then routes, then --run-validation. Returns the exit code."""
    lockfile = cfg.network_namespace if cfg.cni_mode else ""
    runner = runner or RealRunner(force=cfg.force_iptables_binary, lockfile=lockfile)
    code = Exit.OK
    if not cfg.skip_rule_apply:
        applier = Applier(cfg, ruleset, runner, out or sys.stdout)
        try:
            code = applier.run()
            if code == Exit.OK and not (cfg.verify or cfg.cleanup_only) and (ruleset.ipv6 or cfg.tproxy):
                from agent.iptables import routes  # only IPv6 (::6 on lo) and TPROXY need it

                routes.configure(cfg, ruleset.ipv6, runner)
        except (Drift, IptablesError, RouteError) as e:
            log.error("%s", e)
            code = Exit.FAILURE
        finally:
            applier.log_final_state()
            spawned = getattr(runner, "spawned", None)
            if spawned is not None:
                log.debug("processes spawned: %d (%s)", len(spawned), "; ".join(a[0] for a in spawned))
    if code == Exit.OK and cfg.run_validation and not cfg.verify:
        from agent.iptables import validation

        if not validation.run(cfg, facts):
            return Exit.VALIDATION_FAILED
    return code
