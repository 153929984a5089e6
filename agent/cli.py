"""The edge: the only module that reads sys.argv and os.environ and maps errors to exit codes.

Import cost matters here: `istio-iptables` runs in every pod's init container, so this module and
the iptables path import only the standard library. Each mode is imported lazily.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from agent.exitcodes import Exit

MODES = {
    "istio-iptables": ("agent.iptables.command", "set up the pod's traffic capture (the init container)"),
    "proxy": ("agent.sidecar.command", "run the sidecar: Envoy bootstrap, supervision, status server"),
    "wait": ("agent.commands.wait", "wait until the proxy is ready (postStart hook)"),
    "request": ("agent.commands.request", "send an HTTP request to a local admin port"),
    "version": ("agent.commands.version", "print version information"),
}

ROOT_HELP = """pilot-agent: Istio's sidecar agent, re-implemented in Python.

Usage:
  pilot-agent <mode> [flags]

Modes:
{modes}

Use "pilot-agent <mode> --help" for a mode's flags.
"""


def root_help() -> str:
    modes = "\n".join(f"  {name:<16} {text}" for name, (_, text) in MODES.items())
    return ROOT_HELP.format(modes=modes)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(root_help())
        return Exit.OK if args else Exit.USAGE
    mode, rest = args[0], args[1:]
    if mode not in MODES:
        sys.stderr.write(f'Error: unknown command "{mode}" for "pilot-agent"\n')
        return Exit.USAGE
    module = __import__(MODES[mode][0], fromlist=["run"])  # importlib.import_module, without importing importlib
    return int(module.run(rest, dict(os.environ)))


def istio_iptables_main() -> int:
    """The 2020 init container ran a binary named `istio-iptables` directly."""
    return main(["istio-iptables", *sys.argv[1:]])
