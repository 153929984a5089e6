"""The one seam through which istio-iptables touches the kernel (Istio's `Dependencies`,
https://github.com/istio/istio/tree/master/tools/istio-iptables/pkg/dependencies).

`Runner` declares everything the flow (agent.iptables.apply and agent.iptables.routes) asks of the
outside world; there are two:

* `RealRunner` picks the iptables binaries as Istio's DetectIptablesVersion does (legacy when the
  legacy tables hold rules, else nft; FORCE_IPTABLES_BINARY overrides) and runs them, with
  `--wait=30` on writing commands of legacy >= 1.6.2 (the xtables lock; nft needs none).
* `DryRunRecorder` (agent.iptables.recorder) runs nothing and records what it is asked.

Process budget (at most 4 on the common path). Istio's detection alone runs up to 12
commands (`-save`, `-save --version`, a kernel probe `-A` and `-D`, for up to three candidates and
two families). Here detection costs one process per family, and that process is also the flow's
first read of the live rules, so nothing is spawned twice:

* legacy "has existing rules" (Istio: its `-save` printed >= 3 lines) is read from
  /proc/net/ip_tables_names (ip6_tables_names): legacy `-save` prints a table block exactly when the
  kernel lists that table there. No process.
* legacy with rules -> `iptables-legacy-save` (its output is the state; its header carries the
  version, which decides `--wait`). Otherwise `iptables-nft-save`: success means nft is usable and
  its output is the state (nft takes no `--wait`, so no version is needed).
* The kernel-support probe (`-t nat -A INPUT -p 255 -j RETURN`, then `-D`) only runs to explain a
  failure, or on the fallback path (plain `iptables`, forced legacy without a version header).
* The v6 binary is only detected when something needs IPv6.

So a fresh pod netns with default flags spawns: `iptables-nft-save`, `iptables-nft-restore` = 2
(4 with IPv6). `spawned` lists every argv, and `apply` logs the count.
"""
from __future__ import annotations

import os
import subprocess
from typing import Protocol

from agent.iptables.logger import log

_BASE = {4: "iptables", 6: "ip6tables"}
_PROC_TABLES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}
_XTABLES_ERRORS = {1: "xtables other problem", 2: "xtables parameter problem",
                   3: "xtables version problem", 4: "xtables resource problem"}


class IptablesError(Exception):
    """An iptables command failed (exit 1 at the edge). `line` is the restore line that failed."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class Result:
    """A finished command."""

    __slots__ = ("code", "stdout", "stderr")

    def __init__(self, code: int, stdout: str = "", stderr: str = "") -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:
        return f"Result({self.code!r}, {self.stdout!r}, {self.stderr!r})"

    @property
    def ok(self) -> bool:
        return self.code == 0


class Runner(Protocol):
    """Everything the flow asks of the outside world (families are 4 / 6, as RuleSet.family)."""

    #: True when reading state costs no process (the recorder). The flow then makes every read
    #: Istio's flow makes (both families' state first, each family's final state last), so a
    #: dry-run transcript lists the commands Istio's lists; the real runner reads only what a
    #: decision needs.
    free_reads: bool
    #: The argv of every process started so far (logged at the end of a run).
    spawned: list[list[str]]

    def save(self, family: int) -> str:
        """The live rules, in iptables-save form."""

    def restore(self, family: int, text: str, *, noflush: bool = True) -> None:
        """Feed `text` to iptables-restore; IptablesError (with the failing line) when it fails."""

    def check(self, family: int, text: str) -> int | None:
        """Feed a document of `-C` lines: None when every rule exists, else the first line that fails."""

    def iptables(self, family: int, args: list[str], *, quiet: bool = False) -> Result:
        """One iptables command; IptablesError when it fails, unless `quiet`."""

    def run(self, argv: list[str], stdin: str | None = None) -> Result:
        """Any other command (`ip`, for the routes)."""

    def describe(self, family: int) -> str:
        """The family's iptables binary, for messages."""

    def explain(self, family: int) -> str:
        """After a failed restore: why the binary cannot work here, or "" when no reason is known."""


def restore_failed_line(stderr: str) -> int | None:
    """The line number iptables-restore names in `... line N failed`."""
    head, sep, _ = stderr.partition(" failed")
    number = head.rsplit("line ", 1)[-1] if sep else ""
    return int(number) if number.isdigit() else None


def _error(argv: list[str], res: Result) -> str:
    """Istio's wording: exit 1-4 become `xtables ... problem: <stderr after first ':'>`."""
    detail = res.stderr.strip()
    kind = _XTABLES_ERRORS.get(res.code)
    if kind:
        tail = detail.split(":", 1)[1].strip() if ":" in detail else detail
        return f"{' '.join(argv[:1])}: {kind}: {tail}"
    return f"{' '.join(argv)}: exit {res.code}: {detail}"


# ---- binary detection ---------------------------------------------------------------------------

class Binary:
    """One detected iptables family: `name` is e.g. `iptables-nft`; save/restore add the suffix.
    `variant` is "legacy" or "nft"; `initial_save` is the detection's `-save` output."""

    def __init__(self, name: str, variant: str, version: tuple[int, ...] = (),
                 initial_save: str | None = None) -> None:
        self.name, self.variant, self.version, self.initial_save = name, variant, version, initial_save

    @property
    def wait(self) -> list[str]:
        """Writing commands get --wait=30 on legacy >= 1.6.2 (the xtables lock; nft needs none)."""
        return ["--wait=30"] if self.variant == "legacy" and self.version >= (1, 6, 2) else []


class DetectError(IptablesError):
    pass


class RouteError(Exception):
    """`failed to configure routes: ...` (exit 1); the iptables rules are in place by then.
    (Defined here so apply can catch it without importing routes on the common path.)"""


def _parse_version(text: str) -> tuple[int, ...]:
    """The first `v<digits>(.<digits>)+` in text, e.g. `iptables-save v1.8.9 (legacy)`."""
    for word in text.replace("(", " ").split():
        parts = word[1:].split(".") if word.startswith("v") else []
        if len(parts) > 1 and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
    return ()


def legacy_has_tables(family: int, proc_path: str | None = None) -> bool:
    """True when legacy `-save` would print something (>= 3 lines): the kernel has a legacy table."""
    try:
        with open(proc_path or _PROC_TABLES[family]) as f:
            return bool(f.read().strip())
    except OSError:
        return False  # module not loaded: legacy has no tables in any netns


# ---- the real runner ----------------------------------------------------------------------------

def spawn(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run argv (looked up in PATH), feed stdin, collect stdout/stderr. A binary that cannot be
    started is a Result with code 127, as a shell reports it, not an exception."""
    try:
        cp = subprocess.run(argv, input=stdin or "", capture_output=True, text=True, errors="replace", env=env)
    except OSError as e:  # not installed / not executable
        return Result(127, "", f"{argv[0]}: {e.strerror or e}")
    return Result(cp.returncode, cp.stdout, cp.stderr)


class RealRunner:
    """Runs iptables/ip commands in the current netns. `force` is FORCE_IPTABLES_BINARY;
    `spawned` lists the argv of every process started (the process budget, logged at the end)."""

    free_reads = False

    def __init__(self, force: str = "", env: dict[str, str] | None = None, lockfile: str = "") -> None:
        self.force, self.env, self.lockfile = force, env, lockfile
        self.spawned: list[list[str]] = []
        self._bins: dict[int, Binary] = {}
        self._fresh_save: dict[int, str] = {}

    # -- process plumbing
    def _spawn(self, argv: list[str], stdin: str | None = None, lock: Binary | None = None) -> Result:
        self.spawned.append(argv)
        log.debug("exec %s%s", " ".join(argv), f" <<EOF\n{stdin}EOF" if stdin else "")
        env = self.env
        if lock is not None and self.lockfile and lock.wait and lock.version >= (1, 8, 6):
            # CNI mode: a pod-scoped xtables lock (the netns path) instead of the node's, as Istio's
            # UsePodScopedXtablesLock
            env = {**(os.environ if env is None else env), "XTABLES_LOCKFILE": self.lockfile}
        return spawn(argv, stdin, env)

    def run(self, argv: list[str], stdin: str | None = None) -> Result:
        return self._spawn(argv, stdin)

    # -- detection (Istio's DetectIptablesVersion, with the shortcuts of the module docstring)
    def binary(self, family: int) -> Binary:
        if family not in self._bins:
            self._bins[family] = b = self._detect(family)
            self._fresh_save[family] = b.initial_save or ""
            b.initial_save = None
            log.debug("iptables binary family=%s binary=%s variant=%s version=%s", family, b.name,
                     b.variant, ".".join(map(str, b.version)) or "?")
        return self._bins[family]

    def _detect(self, family: int) -> Binary:
        base = _BASE[family]
        if self.force:
            return self._probe(f"{base}-{self.force}", self.force)
        if legacy_has_tables(family):
            try:
                return self._probe(f"{base}-legacy", "legacy")
            except DetectError as e:
                log.debug("legacy candidate unusable: %s", e)
        try:
            return self._probe(f"{base}-nft", "nft")
        except DetectError as e:
            log.debug("nft candidate unusable: %s", e)
        return self._probe(base, "")

    def _probe(self, name: str, variant: str) -> Binary:
        res = self._spawn([f"{name}-save"])
        if not res.ok:
            raise DetectError(f"iptables binary {name} is not usable: {res.stderr.strip() or res.code}")
        version = _parse_version(res.stdout.split("\n", 1)[0]) if res.stdout.startswith("#") else ()
        if not variant or (variant == "legacy" and not version):
            # Unknown variant (plain `iptables`) or legacy without a header: ask the binary.
            ver = self._spawn([f"{name}-save", "--version"])
            if ver.ok and "unrecognized option" not in ver.stderr:
                version = _parse_version(ver.stdout)
                variant = variant or ("nft" if "nf_tables" in ver.stdout else "legacy")
            else:
                variant, version = variant or "legacy", version or (0, 0, 0)
            if name == _BASE[4] or name == _BASE[6]:
                self._kernel_probe(Binary(name, variant, version))
        return Binary(name, variant, version, res.stdout)

    def _kernel_probe(self, b: Binary) -> None:
        """Istio's kernel-support check: a throwaway nat rule proves it; removed again at once."""
        args = ["-t", "nat", "-A", "INPUT", "-p", "255", "-j", "RETURN", *b.wait]
        res = self._spawn([b.name, *args])
        if not res.ok or "does not exist" in res.stderr:
            raise DetectError(f"iptables binary {b.name} has no loaded kernel support: {res.stderr.strip()}")
        self._spawn([b.name, *["-D" if a == "-A" else a for a in args]])

    def explain(self, family: int) -> str:
        """After a failed restore: the kernel-support probe's verdict, if it finds a problem."""
        try:
            self._kernel_probe(self.binary(family))
        except IptablesError as e:
            return str(e)
        return ""

    def describe(self, family: int) -> str:
        return self.binary(family).name

    # -- the operations
    def save(self, family: int) -> str:
        """Live rules. Reuses the last save (first: the detection's) while nothing was written."""
        b = self.binary(family)
        if family not in self._fresh_save:
            res = self._spawn([f"{b.name}-save"])
            if not res.ok:
                raise IptablesError(_error([f"{b.name}-save"], res))
            self._fresh_save[family] = res.stdout
        return self._fresh_save[family]

    def restore(self, family: int, text: str, *, noflush: bool = True) -> None:
        b = self.binary(family)
        argv = [f"{b.name}-restore", *(["--noflush"] if noflush else []), *b.wait]
        res = self._spawn(argv, stdin=text, lock=b)
        self._fresh_save.pop(family, None)
        if not res.ok:
            log.debug("restore input:\n%s", text)
            raise IptablesError(_error(argv, res), restore_failed_line(res.stderr))

    def check(self, family: int, text: str) -> int | None:
        """Feed a document of `-C` lines to one restore: None when every rule exists, else the
        number of the first line that failed (one process instead of one `iptables -C` per rule)."""
        b = self.binary(family)
        res = self._spawn([f"{b.name}-restore", "--noflush", *b.wait], stdin=text, lock=b)
        if res.ok:
            return None
        return restore_failed_line(res.stderr) or 0

    def iptables(self, family: int, args: list[str], *, quiet: bool = False) -> Result:
        b = self.binary(family)
        writing = not ("-C" in args or "-S" in args or "-L" in args)
        argv = [b.name, *args, *(b.wait if writing else [])]
        res = self._spawn(argv, lock=b if writing else None)
        if writing:
            self._fresh_save.pop(family, None)
        if not res.ok and not quiet:
            raise IptablesError(_error(argv, res))
        return res
