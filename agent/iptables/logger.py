"""istio-iptables' log: Istio's text lines (`<time>\t<level>\t<message>`), or JSON, on stderr.

Not the `logging` package: this path runs in every pod's init container, and importing `logging`
(with traceback, string, threading, weakref ...) costs several milliseconds of start-up, more than
building the rules. The interface is the subset of `logging.Logger` these modules use (`debug`,
`info`, `warning`, `error` with %-style arguments, `isEnabledFor`), so call sites read the same.

agent.iptables.command configures the one instance, `log`, from --log_output_level and
--log_as_json. Before that (modules used on their own, as in tests) warnings and errors go to
sys.stderr, as `logging` does without a handler.
"""
from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import TextIO

DEBUG, INFO, WARNING, ERROR, FATAL, NONE = 10, 20, 30, 40, 50, 60
#: Istio's level names (--log_output_level) and the level each stands for.
LEVELS = {"debug": DEBUG, "info": INFO, "warn": WARNING, "error": ERROR, "fatal": FATAL, "none": NONE}
_NAMES = {number: name for name, number in LEVELS.items()}


class Logger:
    def __init__(self) -> None:
        self.level = WARNING
        self.as_json = False
        self.stream: TextIO | None = None  # None: sys.stderr at the time of writing

    def configure(self, level: int, as_json: bool, stream: TextIO) -> None:
        self.level, self.as_json, self.stream = level, as_json, stream

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging.Logger's name
        return level >= self.level

    def log(self, level: int, msg: str, *args: object) -> None:
        if level < self.level:
            return
        text = msg % args if args else msg
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}000Z"
        name = _NAMES[level]
        if self.as_json:
            import json

            line = json.dumps({"time": stamp, "level": name, "scope": "default", "msg": text})
        else:
            line = f"{stamp}\t{name}\t{text}"
        (self.stream or sys.stderr).write(line + "\n")  # one write per line: threads do not interleave

    def debug(self, msg: str, *args: object) -> None:
        self.log(DEBUG, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self.log(INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self.log(ERROR, msg, *args)


log = Logger()


def log_level(spec: str) -> int:
    """Istio's --log_output_level: a comma list of `scope:level` (or a bare level for `default`).
    We log in one scope, `default`; other scopes are accepted and ignored. ValueError if bad."""
    level = INFO
    for item in filter(None, spec.split(",")):
        scope, _, name = item.rpartition(":")
        if name not in LEVELS:
            raise ValueError(f"invalid log level {name!r} (one of {', '.join(LEVELS)})")
        if scope in ("", "default"):
            level = LEVELS[name]
    return level
