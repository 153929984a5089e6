"""`--native-nftables`, real mode: put the rules of one nft script in place, in one transaction.

The script (agent.iptables.nft_script: Istio's transaction, what --dry-run prints) creates, flushes
and fills the `inet istio-proxy-*` tables these flags use. Istio feeds it to `nft -f -` blindly on
every run, so a table or chain the new flags no longer use keeps its old rules
(https://github.com/istio/istio/blob/master/tools/istio-nftables/pkg/capture/run.go). Here a run
first reads our tables back (`nft -s list ruleset inet`, agent.iptables.nft_live), then, as the
iptables flow does (agent.iptables.apply):

* nothing of ours live: apply;
* exactly these flags' rules live: nothing to do, exit 0 (`--force-apply` applies anyway);
* other rules of ours live (drift): exit 1 with one line naming the first difference, nothing
  touched; with `--reconcile` (or `--force-apply`), apply.

"Apply" is always ONE `nft -f -`: the cleanup lines (`add table` + `delete table`) of each of our
tables that is live, followed by the script (so on a fresh pod exactly Istio's transaction). The
kernel commits a batch completely or not at all, so the old tables, stale chains included, are
replaced by exactly the new ones without a moment where traffic sees neither, and a script nft
rejects leaves the ruleset as it was. So no guardrails and no rollback are needed, unlike iptables'
per-family restores.

`--cleanup-only` runs the cleanup lines alone (when any of our tables is live) and removes the TPROXY
routes; `--verify` prints the difference (agent.iptables.nft_live.diff, then missing routes) and
exits 0 / 1. Routes and the `::6` address are agent.iptables.routes, as in iptables mode. Processes
on the common path: `nft -s list ruleset inet`, `nft -f -`; `nft --version` only to explain a failure.
"""
from __future__ import annotations

import re
import shutil
from typing import TextIO

from agent.exitcodes import Exit
from agent.iptables import nft_live
from agent.iptables.config import IptablesConfig
from agent.iptables.host import HostFacts
from agent.iptables.logger import DEBUG, log
from agent.iptables.runner import Result, RouteError, spawn

MIN_VERSION = (1, 0, 1)
_ERROR_AT = re.compile(r"^/dev/stdin:(\d+):[\d-]+: (Error: .*)$", re.M)


class NftError(Exception):
    """An nft command failed (exit 1 at the edge)."""


class Drift(Exception):
    """Other rules of ours are live and --reconcile is off (exit 1, nothing touched)."""


def find_nft(cni_mode: bool, path: str | None = None) -> str:
    """The nft binary in PATH, or NftError with Istio's words for a missing one."""
    found = shutil.which("nft", path=path)  # None: $PATH
    if found:
        return found
    where = "on the host filesystem" if cni_mode else "in the sidecar container image"
    raise NftError(f"nativeNftables is enabled, but the nft binary is missing {where}: "
                   "could not find nftables binary: \"nft\" not found in PATH")


def _version(text: str) -> tuple[int, ...]:
    m = re.search(r"v(\d+(?:\.\d+)+)", text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else ()


def _first_error(stderr: str, script: str) -> str:
    """nft's error on one line: the message, and the script line it points at."""
    lines = script.splitlines()
    found = _ERROR_AT.findall(stderr)
    if not found:
        return " ".join(stderr.split()) or "no error text"
    number, message = found[0]
    index = int(number) - 1
    where = f" in `{lines[index]}`" if 0 <= index < len(lines) else ""
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{message}{where}{more}"


class NftRunner:
    """Runs `nft` (and `ip`, for agent.iptables.routes) in the current netns; `spawned` lists the
    argv of every process started."""

    free_reads = False

    def __init__(self, binary: str, env: dict[str, str] | None = None) -> None:
        self.binary, self.env = binary, env
        self.spawned: list[list[str]] = []

    def run(self, argv: list[str], stdin: str | None = None) -> Result:
        self.spawned.append(argv)
        log.debug("exec %s%s", " ".join(argv), f" <<EOF\n{stdin}EOF" if stdin else "")
        return spawn(argv, stdin, self.env)

    def listing(self) -> str:
        res = self.run([self.binary, "-s", "list", "ruleset", nft_live.FAMILY])
        if not res.ok:
            raise NftError(self._explain(f"could not run nftables command: {_first_error(res.stderr, '')}"))
        return res.stdout

    def apply(self, script: str) -> None:
        res = self.run([self.binary, "-f", "-"], stdin=script)
        if not res.ok:
            raise NftError(self._explain(f"nftables run failed: {_first_error(res.stderr, script)}"))

    def _explain(self, message: str) -> str:
        """After a failure: Istio refuses nft older than 1.0.1; say so when that is the cause."""
        res = self.run([self.binary, "--version"])
        version = _version(res.stdout) if res.ok else ()
        if version and version < MIN_VERSION:
            return f"nft version must be v1.0.1 or later (got {res.stdout.strip()}); {message}"
        return message


class NftApplier:
    """One run against our tables: `script` is the rule transaction, `cleanup` the table removal."""

    def __init__(self, cfg: IptablesConfig, facts: HostFacts, script: str, cleanup: str, runner: NftRunner,
                 out: TextIO) -> None:
        self.cfg, self.facts, self.runner, self.out = cfg, facts, runner, out
        self.script, self.cleanup_script = script, cleanup
        self.expected = nft_live.simulate(script)
        self.live: nft_live.State = {}
        self.replaced = False  # rules of other flags were replaced: the routes get a look too

    def run(self) -> int:
        self.live = nft_live.parse_listing(self.runner.listing())
        if self.cfg.verify:
            return self.verify()
        if self.cfg.cleanup_only:
            self.cleanup()
            return Exit.OK
        if not self.live:
            self.apply("nftables rules applied")
            return Exit.OK
        reason = nft_live.first_difference(self.expected, self.live)
        if reason is None and not self.cfg.force_apply:
            log.info("nftables rules already in place; nothing to do")
            return Exit.OK
        if reason is not None and not (self.cfg.reconcile or self.cfg.force_apply):
            raise Drift(f"nftables rules from different settings are in place ({reason}); "
                        "re-run with --reconcile to replace them")
        log.info("reconciling nftables rules: %s", reason or "--force-apply")
        self.apply("nftables rules reconciled")
        self.replaced = True
        return Exit.OK

    def apply(self, done: str) -> None:
        """Our live tables replaced by the script's, in one transaction."""
        self.runner.apply(self.deletes() + self.script)
        log.info("%s (tables %s)", done, ", ".join(self.expected) or "none")
        log.debug("nftables rules programmed:\n%s", self.script)

    def deletes(self) -> str:
        """The cleanup lines of the tables that are live. Only those: deleting a table makes the
        kernel wait for a grace period when the batch commits (some 10 ms here), even for a table
        the same batch has just added, and a fresh pod has none to delete."""
        return "".join(line + "\n" for line in self.cleanup_script.splitlines() if line.split()[-1] in self.live)

    def cleanup(self) -> None:
        if self.live:
            self.runner.apply(self.deletes())
            log.info("removed nftables tables %s", ", ".join(self.live))
        else:
            log.info("no nftables table of ours is in place; nothing to clean up")
        from agent.iptables import routes

        routes.cleanup(self.cfg, self.facts.enable_ipv6, self.runner)
        log.info("cleanup done")

    def verify(self) -> int:
        lines = nft_live.diff(self.expected, self.live)
        lines = ["# nftables (nft list ruleset inet): - live only, + missing", *lines] if lines else []
        from agent.iptables import routes

        return routes.verify_report(self.cfg, self.facts.enable_ipv6, self.runner, lines, self.out, "nftables")


def main(cfg: IptablesConfig, facts: HostFacts, script: str, cleanup: str, out: TextIO,
         runner: NftRunner | None = None) -> int:
    """Apply (or verify / clean up), then the routes. Returns the exit code (--run-validation is
    the caller's, agent.iptables.nft_command)."""
    code = Exit.OK
    try:
        runner = runner or NftRunner(find_nft(cfg.cni_mode))
        applier = NftApplier(cfg, facts, script, cleanup, runner, out)
        code = applier.run()
        if code == Exit.OK and not (cfg.verify or cfg.cleanup_only) and \
                (facts.enable_ipv6 or cfg.tproxy or applier.replaced):
            from agent.iptables import routes  # only IPv6 (::6 on lo), TPROXY and a reconcile need it

            routes.configure(cfg, facts.enable_ipv6, runner, replaced=applier.replaced)
    except (NftError, Drift, RouteError) as e:
        log.error("%s", e)
        code = Exit.FAILURE
    if runner is not None and log.isEnabledFor(DEBUG):
        log.debug("processes spawned: %d (%s)", len(runner.spawned), "; ".join(a[0] for a in runner.spawned))
    return code
