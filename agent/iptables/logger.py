"""istio-iptables' log: Istio's lines (agent.logformat) on stderr, from a standard-library writer.

Not the `logging` package nor structlog: this path runs in every pod's init container, where their
imports would cost more than building the rules (see agent/iptables/__init__.py). The interface is the
subset of `logging.Logger` these modules use (`debug`, `info`, `warning`, `error` with %-style
arguments, `isEnabledFor`), so call sites read the same.

agent.iptables.command configures the one instance, `log`, from --log_output_level and
--log_as_json. istio-iptables logs in the `default` scope only; other scopes are accepted and have
no effect. Before configure() (modules used on their own, as in tests) warnings and errors go to
sys.stderr, as `logging` does without a handler.
"""
from __future__ import annotations

import sys
from typing import TextIO

from agent.logformat import DEFAULT_SCOPE, Level, parse_levels, render

DEBUG = Level.DEBUG


class Logger:
    def __init__(self) -> None:
        self.level = Level.WARN
        self.as_json = False
        self.stream: TextIO | None = None  # None: sys.stderr at the time of writing

    def configure(self, level: Level, as_json: bool, stream: TextIO) -> None:
        self.level, self.as_json, self.stream = level, as_json, stream

    def isEnabledFor(self, level: Level) -> bool:  # noqa: N802 - logging.Logger's name
        return level >= self.level

    def log(self, level: Level, msg: str, *args: object) -> None:
        if level < self.level:
            return
        line = render(level, msg % args if args else msg, {}, as_json=self.as_json)
        (self.stream or sys.stderr).write(line + "\n")  # one write per line: threads do not interleave

    def debug(self, msg: str, *args: object) -> None:
        self.log(Level.DEBUG, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self.log(Level.INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(Level.WARN, msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self.log(Level.ERROR, msg, *args)


log = Logger()


def log_level(spec: str) -> Level:
    """The `default` scope's level from --log_output_level; LogConfigError (a ValueError) if malformed."""
    return parse_levels(spec)[DEFAULT_SCOPE]
