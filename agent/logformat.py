"""Istio's log line format, its level table and the `--log_output_level` parser, for both modes.

Text, as Istio's zap encoder writes it (https://github.com/istio/istio/blob/master/pkg/log/config.go):
    2026-01-01T00:00:00.123456Z<TAB>info<TAB>[<scope><TAB>]Envoy proxy is ready key=value ...
JSON (`--log_as_json`): {"time": ..., "level": ..., "scope": ..., "msg": ..., <fields>}.

`--log_output_level` is a comma list of `scope:level` (`default:info,probes:debug`); a bare level sets
the `default` scope, and scopes not listed follow `default`. `none` silences a scope.

The writers are elsewhere: the sidecar renders through structlog (agent.sidecar.logs); istio-iptables
has a standard-library writer (agent.iptables.logger), since it runs in every pod's init container.
Both call `render`, so a line reads the same whichever mode wrote it. `json` is imported only when
a line needs it: istio-iptables writes text lines without fields, and the import is 2 ms of its run.
"""
from __future__ import annotations

import enum
import time
from collections.abc import Mapping


class Level(enum.IntEnum):
    DEBUG = 10
    INFO = 20
    WARN = 30
    ERROR = 40
    FATAL = 50
    NONE = 60  # above every level: the scope is silent

    @property
    def label(self) -> str:
        """The name Istio prints and `--log_output_level` takes."""
        return self.name.lower()


#: Logger method names (structlog's and logging's) -> Istio's level.
METHOD_LEVELS = {"debug": Level.DEBUG, "info": Level.INFO, "warning": Level.WARN, "warn": Level.WARN,
                 "error": Level.ERROR, "exception": Level.ERROR, "critical": Level.FATAL, "fatal": Level.FATAL}

DEFAULT_SCOPE = "default"


class LogConfigError(ValueError):
    """A malformed --log_output_level; the message names the flag and the value."""


def parse_levels(spec: str) -> dict[str, Level]:
    """'default:info,grpc:none' -> {'default': Level.INFO, 'grpc': Level.NONE}."""
    levels = {DEFAULT_SCOPE: Level.INFO}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        scope, _, name = part.rpartition(":")
        try:
            levels[scope or DEFAULT_SCOPE] = Level[name.upper()]
        except KeyError:
            known = ", ".join(level.label for level in Level)
            raise LogConfigError(f'invalid --log_output_level "{spec}": unknown level "{name}" (one of {known})') from None
    return levels


def enabled(levels: Mapping[str, Level], scope: str, level: Level) -> bool:
    return level >= levels.get(scope, levels.get(DEFAULT_SCOPE, Level.INFO))


def timestamp(now: float | None = None) -> str:
    """UTC with microseconds, as Istio prints it."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def one_line(text: str, limit: int | None = None) -> str:
    """`text` as one printable line: line breaks and other control characters escaped (`\\n`,
    `\\x1b`, `\\u2028`), cut to `limit` characters first (marked `...`). For text a remote caller may
    have chosen, which must not start a line of its own or reach a terminal raw."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _quote(value: object) -> str:
    import json

    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    text = value if isinstance(value, str) else str(value)
    # Quoted (JSON escapes) when a space, quote or `=` would blur the key=value split, and whenever a
    # character is not printable: a line break, tab, escape sequence or lone surrogate stays escaped.
    if text == "" or not text.isprintable() or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


def render(level: Level, msg: str, fields: Mapping[str, object], *, scope: str = DEFAULT_SCOPE,
           as_json: bool = False, now: float | None = None) -> str:
    """One log line (without the newline)."""
    stamp = timestamp(now)
    if as_json:
        import json

        return json.dumps({"time": stamp, "level": level.label, "scope": scope, "msg": msg, **fields}, default=str)
    prefix = f"{stamp}\t{level.label}\t" + ("" if scope == DEFAULT_SCOPE else f"{scope}\t")
    rest = " ".join(f"{key}={_quote(value)}" for key, value in fields.items())
    return prefix + msg + (" " + rest if rest else "")
