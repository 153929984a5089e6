"""Agent logging through structlog, in Istio's line format.

Text (default), as Istio's zap encoder writes it:
    2026-01-01T00:00:00.123456Z<TAB>info<TAB>[<scope><TAB>]Envoy proxy is ready key=value ...
JSON (`--log_as_json`): {"time": ..., "level": ..., "scope": ..., "msg": ..., <fields>}.

Levels per scope come from `--log_output_level` (`default:info,probes:debug`; a bare `debug` sets the
default scope). Scopes not listed follow `default`. `none` silences a scope.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Mapping, TextIO

# structlog (and the asyncio it pulls in) is imported in configure()/get(): the edge validates the
# level spec with parse_levels() before spawning Envoy and configures logging after it.

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40, "fatal": 50, "none": 100}
#: structlog method names -> Istio level names.
_METHOD_LEVEL = {"debug": "debug", "info": "info", "warning": "warn", "warn": "warn",
                 "error": "error", "exception": "error", "critical": "fatal", "fatal": "fatal"}


class LogConfigError(ValueError):
    """A malformed --log_output_level."""


def parse_levels(spec: str) -> dict[str, int]:
    """'default:info,grpc:none' -> {'default': 20, 'grpc': 100}."""
    levels = {"default": LEVELS["info"]}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        scope, _, level = part.rpartition(":")
        scope = scope or "default"
        if level not in LEVELS:
            raise LogConfigError(f'invalid --log_output_level "{spec}": unknown level "{level}"')
        levels[scope] = LEVELS[level]
    return levels


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _quote(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' "=\t\n'):
        return json.dumps(text)
    return text


def render_text(_logger: Any, _method: str, event: dict) -> str:
    time_ = event.pop("time")
    level = event.pop("level")
    scope = event.pop("scope", "default")
    msg = str(event.pop("event", ""))
    fields = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
    prefix = f"{time_}\t{level}\t" + ("" if scope == "default" else f"{scope}\t")
    return prefix + msg + (" " + fields if fields else "")


def render_json(_logger: Any, _method: str, event: dict) -> str:
    out = {"time": event.pop("time"), "level": event.pop("level"), "scope": event.pop("scope", "default"),
           "msg": str(event.pop("event", ""))}
    out.update(event)
    return json.dumps(out, default=str)


def _make_filter(levels: Mapping[str, int]):
    import structlog

    default = levels.get("default", LEVELS["info"])

    def stamp_and_filter(_logger: Any, method: str, event: dict) -> dict:
        level = _METHOD_LEVEL.get(method, "info")
        if LEVELS[level] < levels.get(event.get("scope", "default"), default):
            raise structlog.DropEvent
        event["time"] = _timestamp()
        event["level"] = level
        return event

    return stamp_and_filter


def configure(output_level: str = "default:info", as_json: bool = False, target: str = "stdout",
              stream: TextIO | None = None) -> None:
    """Configure structlog once for the process. Raises LogConfigError on a bad level spec."""
    import structlog

    levels = parse_levels(output_level)
    if stream is None:
        first = (target or "stdout").split(",")[0].strip()
        stream = sys.stderr if first == "stderr" else sys.stdout if first in ("stdout", "") else open(first, "a", buffering=1)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _make_filter(levels),
                    render_json if as_json else render_text],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


class _Lazy:
    """A module-level logger usable before configure(): resolves structlog on first use."""

    def __init__(self, scope: str):
        self.scope = scope

    def __getattr__(self, name: str) -> Any:
        return getattr(get(self.scope), name)


def lazy(scope: str = "default") -> Any:
    return _Lazy(scope)


def get(scope: str = "default") -> Any:
    import structlog

    log = structlog.get_logger()
    return log.bind(scope=scope) if scope != "default" else log
