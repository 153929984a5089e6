"""Dry-run's Runner: it runs nothing, answers every read as an empty kernel would, and records what
the flow asks, as Istio's DependenciesStub
(https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/dependencies/stub.go).

The transcript, in Istio's format: each restore (and `-C` check) document line by line, each other
iptables call as `<binary> <args>`, each read as `iptables-save` / `ip6tables-save`. Binaries are
named plainly, as Istio's stub detects them. With DRY_RUN_FILE_PATH the whole transcript so far is
written to that file after every call, without truncating it first (as Istio's stub does).

`ip` commands (routes) are not part of that transcript: Istio programs routes through netlink,
outside its Dependencies, and leaves them out of a dry run
(https://github.com/istio/istio/blob/master/tools/common/tproxy/run_linux.go). The recorder logs
each one instead and answers it as an empty routing table would.

`kernel` (family -> iptables-save text) is the state the reads return; empty by default, and never
changed by what is recorded: a dry run of a re-run or of --cleanup-only is given the state to run
against.
"""
from __future__ import annotations

import os

from agent.iptables import restore
from agent.iptables.logger import log
from agent.iptables.runner import Result

BINARY = {4: "iptables", 6: "ip6tables"}


class DryRunRecorder:
    free_reads = True

    def __init__(self, file_path: str = "", kernel: dict[int, str] | None = None) -> None:
        self.file_path = file_path
        self.kernel = kernel or {}
        self.lines: list[str] = []
        self.spawned: list[list[str]] = []  # nothing is ever spawned

    def _record(self, new: list[str]) -> None:
        self.lines.extend(new)
        if self.file_path:
            fd = os.open(self.file_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, self.transcript.encode())
            finally:
                os.close(fd)

    @property
    def transcript(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def save(self, family: int) -> str:
        self._record([f"{BINARY[family]}-save"])
        return self.kernel.get(family, "")

    def restore(self, family: int, text: str, *, noflush: bool = True) -> None:
        self._record(text.splitlines())

    def check(self, family: int, text: str) -> int | None:
        """The first `-C` line whose rule is not in `kernel` (compared as --verify compares)."""
        self._record(text.splitlines())
        live = restore.parse_save(self.kernel.get(family, ""))
        have = {(table, restore.rule_key(line)) for table, chains in live.items()
                for lines in chains.values() for line in lines}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith("-C ") and (table, restore.rule_key("-A" + line[2:])) not in have:
                return number
        return None

    def iptables(self, family: int, args: list[str], *, quiet: bool = False) -> Result:
        self._record([" ".join([BINARY[family], *args])])
        return Result(0)

    def run(self, argv: list[str], stdin: str | None = None) -> Result:
        lines = "; ".join((stdin or "").splitlines())
        log.info("dry-run: not running %s%s", " ".join(argv), f" <<< {lines}" if lines else "")
        return Result(0)

    def describe(self, family: int) -> str:
        return BINARY[family]

    def explain(self, family: int) -> str:
        return ""
