"""Benchmark: what each import-avoiding construct on the istio-iptables path saves.

    /opt/agent/bin/python bench/iptables_imports.py [-n 25] [--root DIR]

Each variant runs in a fresh interpreter (`python -I`, as the console script runs) that has first
imported everything the istio-iptables dry-run path imports today (the `agent` modules of that
path, so their standard-library imports too), then times one step on top of that with
perf_counter. Prints the median and minimum in milliseconds over `-n` interpreters, and marks a module the path
already imports (its cost is then part of the path, and the figure shows nothing). `--root` measures
another checkout, e.g. the tree before a change (`git worktree add /tmp/before <commit>`):

* typing, re, dataclasses, subprocess, socket, ipaddress, shlex/difflib: the module alone, on top
  of the path's own imports (and the four idioms together, since they share dependencies);
* the five istio-iptables value classes (IptablesConfig's 39 fields, Rule, RuleSet, HostFacts,
  Problem) declared as @dataclass(frozen=True, slots=True), import of dataclasses included, against
  the same five declared as agent.iptables.record.Record subclasses.

The rule it decides (written out in agent/iptables/__init__.py): a construct that avoids an import
stays only where it saves 5 ms or more of the istio-iptables run; otherwise the standard-library
idiom is used.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ("import agent.cli, agent.iptables.command, agent.iptables.config, agent.iptables.host, "
           "agent.iptables.rules, agent.iptables.restore, agent.iptables.runner, agent.iptables.apply")
CANDIDATES = ("typing", "re", "subprocess", "socket", "ipaddress", "shlex", "difflib", "dataclasses")

FIELDS = [f"f{i}: str = ''" for i in range(39)]


def classes(decorator: str, base: str) -> str:
    """Source of five classes shaped like the istio-iptables value classes."""
    body = "\n    ".join(FIELDS)
    return f"""
{decorator}
class IptablesConfig{base}:
    {body}
{decorator}
class Rule{base}:
    table: str
    chain: str
    args: tuple
    position: object = None
{decorator}
class RuleSet{base}:
    v4: tuple
    v6: tuple
    ipv6: bool
{decorator}
class HostFacts{base}:
    enable_ipv6: bool = False
    host_ip: str = ''
    dns_v4: tuple = ()
    dns_v6: tuple = ()
{decorator}
class Problem{base}:
    setting: str
    value: str
    reason: str
    usage: bool = True
"""


TIMER = "nothing (the timer itself)"
VARIANTS = {
    TIMER: "",
    "import typing": "import typing",
    "import re": "import re",
    "import subprocess (instead of os.posix_spawnp)": "import subprocess",
    "import socket (instead of _socket)": "import socket",
    "import ipaddress (host facts; deferred to CIDR flags today)": "import ipaddress",
    "import shlex, difflib (--verify only)": "import shlex, difflib",
    "import typing, subprocess, socket, ipaddress": "import typing, subprocess, socket, ipaddress",
    "import dataclasses": "import dataclasses",
    "import typing; typing.dataclass_transform() on a class": (
        "import typing\n@typing.dataclass_transform()\nclass R: pass"),
    "5 classes as @dataclass(frozen=True, slots=True)": (
        "from dataclasses import dataclass\n" + classes("@dataclass(frozen=True, slots=True)", "")),
    "5 classes as Record": "from agent.iptables.record import Record\n" + classes("", "(Record)"),
}


def once(root: Path, step: str) -> float:
    code = (f"import sys\nsys.path.insert(0, {str(root)!r})\n{PRELOAD}\nimport time\n_t = time.perf_counter()\n"
            f"exec(compile({step!r}, 'variant', 'exec'), {{'__name__': 'variant'}})\n"
            "print((time.perf_counter() - _t) * 1000)")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=root, check=True)
    return float(out.stdout.strip())


def already_imported(root: Path) -> set[str]:
    code = f"import sys\nsys.path.insert(0, {str(root)!r})\n{PRELOAD}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=root, check=True)
    return set(out.stdout.split()) & set(CANDIDATES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=25, help="interpreters per variant")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = ap.parse_args()
    root = args.root.resolve()
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.n):  # variants interleaved, so drift spreads over all of them
        for name, step in VARIANTS.items():
            results[name].append(once(root, step))
    loaded = already_imported(root)
    timer = statistics.median(results.pop(TIMER))
    print(f"on top of the istio-iptables path of {root}; the timer itself ({timer:.2f} ms) subtracted")
    print(f"{'':<56} {'median':>8} {'min':>8}")
    for name, times in results.items():
        mark = [m for m in CANDIDATES if f"import {m}" in name and m in loaded]
        note = f"  (already imported by the path: {', '.join(mark)})" if mark else ""
        print(f"{name:<56} {statistics.median(times) - timer:6.2f}ms {min(times) - timer:6.2f}ms{note}")


if __name__ == "__main__":
    main()
