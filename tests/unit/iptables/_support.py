"""Shared helpers for the pure istio-iptables tests: build a config/rule set with injected host facts."""
from __future__ import annotations

from typing import Mapping, Sequence

from agent import flags
from agent.iptables import command, config, rules
from agent.iptables.host import HostFacts

USERS = {"istio-proxy": 1337, "root": 0, "app": 1000}
GROUPS = {"istio-proxy": 1337, "root": 0, "java": 2000, "ftp": 21}


def load(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> config.IptablesConfig:
    env = dict(env or {})
    parsed = flags.parse(command.all_flags(), list(argv), env)
    return config.load(parsed, env, user_id=USERS.get, group_id=GROUPS.get)


def transcript(argv: Sequence[str], env: Mapping[str, str] | None = None, facts: HostFacts | None = None) -> str:
    cfg = load(argv, env)
    ruleset = rules.build(cfg, facts or HostFacts())
    return "".join(line + "\n" for line in command.transcript(cfg, ruleset))
