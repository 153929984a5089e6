"""Shared helpers for the pure istio-iptables tests: build a config/rule set with injected host facts."""
from __future__ import annotations

import io
from typing import Mapping, Sequence

from agent import flags
from agent.iptables import apply, command, config, rules
from agent.iptables.host import HostError, HostFacts
from agent.iptables.recorder import DryRunRecorder

USERS = {"istio-proxy": 1337, "root": 0, "app": 1000}
GROUPS = {"istio-proxy": 1337, "root": 0, "java": 2000, "ftp": 21}


def load(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> config.IptablesConfig:
    env = dict(env or {})
    parsed = flags.parse(command.all_flags(), list(argv), env)
    return config.load(parsed, env, user_id=USERS.get, group_id=GROUPS.get)


def transcript(argv: Sequence[str], env: Mapping[str, str] | None = None, facts: HostFacts | None = None,
               kernel: dict[int, str] | None = None) -> str:
    """The dry-run transcript of the one flow against a recorder whose kernel holds `kernel`."""
    cfg = load(argv, env)
    facts = facts or HostFacts()
    recorder = DryRunRecorder(kernel=kernel)
    apply.main(cfg, rules.build(cfg, facts), facts, recorder, io.StringIO())
    return recorder.transcript


class Host:
    """The host-facts reader command.run is given: fixed facts (or an error), calls recorded (the
    kernel-untouched check: a rejected command line never reads the host)."""

    def __init__(self, facts: HostFacts | None = None, error: str | None = None) -> None:
        self.facts, self.error, self.calls = facts or HostFacts(), error, []

    def __call__(self, **kw) -> HostFacts:
        self.calls.append(kw)
        if self.error:
            raise HostError(self.error)
        return self.facts


def run(argv: Sequence[str], env: Mapping[str, str] | None = None,
        host: Host | None = None) -> tuple[int, str, str]:
    """`pilot-agent istio-iptables <argv>` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    rc = command.run(list(argv), dict(env or {}), stdout=out, stderr=err, gather=host or Host())
    return rc, out.getvalue(), err.getvalue()

