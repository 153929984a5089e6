"""Agent logging through structlog, in Istio's line format.

Text (default), as Istio's zap encoder writes it:
    2026-01-01T00:00:00.123456Z<TAB>info<TAB>[<scope><TAB>]Envoy proxy is ready key=value ...
JSON (`--log_as_json`): {"time": ..., "level": ..., "scope": ..., "msg": ..., <fields>}.

Levels per scope come from `--log_output_level` (`default:info,probes:debug`; a bare `debug` sets the
default scope). Scopes not listed follow `default`. `none` silences a scope.

At start-up the sidecar writes its first lines (Envoy started, the flags, the effective config)
before structlog is imported: configure(defer_structlog=True) runs the very same processors
(`_stamp`, then render_text/render_json) and writes like structlog's PrintLogger, and the edge calls
adopt_structlog() once the pod is ready, so structlog's ~60 ms of imports stay off the path to
`/healthz/ready`. The lines are identical either way (tests/unit/sidecar/test_logs.py).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any, TextIO

# structlog (and the asyncio it pulls in) is imported by adopt_structlog() only: the edge validates the
# level spec with parse_levels() before spawning Envoy, configures logging after it with
# defer_structlog=True, and hands over to structlog once the status server has served (see configure()).

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


def _stamp(levels: Mapping[str, int], method: str, event: dict) -> bool:
    """Adds time and Istio's level name; False when the scope's level filters the event out."""
    level = _METHOD_LEVEL.get(method, "info")
    if LEVELS[level] < levels.get(event.get("scope", "default"), levels.get("default", LEVELS["info"])):
        return False
    event["time"] = _timestamp()
    event["level"] = level
    return True


def _make_filter(levels: Mapping[str, int]):
    import structlog

    def stamp_and_filter(_logger: Any, method: str, event: dict) -> dict:
        if not _stamp(levels, method, event):
            raise structlog.DropEvent
        return event

    return stamp_and_filter


class _Settings:
    """What configure() was given: where lines go and how they look, for structlog or the early writer."""

    def __init__(self, levels: Mapping[str, int], renderer: Any, stream: TextIO):
        self.levels, self.renderer, self.stream = levels, renderer, stream

    def write(self, method: str, event: dict) -> None:
        """The same processors structlog runs (stamp and filter, render), then PrintLogger's write."""
        if _stamp(self.levels, method, event):
            self.stream.write(self.renderer(None, method, event) + "\n")
            self.stream.flush()


#: The configuration not yet handed to structlog: set by configure(), taken by adopt_structlog().
_early: _Settings | None = None


def configure(output_level: str = "default:info", as_json: bool = False, target: str = "stdout",
              stream: TextIO | None = None, *, defer_structlog: bool = False) -> None:
    """Configure logging once for the process. Raises LogConfigError on a bad level spec.

    With `defer_structlog`, lines are written by this module's own writer (same processors, same
    output) until adopt_structlog() is called: the sidecar edge uses it so that importing structlog
    (tens of milliseconds) does not delay the status server at start-up.
    """
    global _early
    levels = parse_levels(output_level)
    if stream is None:
        first = (target or "stdout").split(",")[0].strip()
        stream = sys.stderr if first == "stderr" else sys.stdout if first in ("stdout", "") else open(first, "a", buffering=1)
    _early = _Settings(levels, render_json if as_json else render_text, stream)
    if not defer_structlog:
        adopt_structlog()


def adopt_structlog() -> None:
    """Hand the deferred output over to structlog; from then on every line goes through it.

    A no-op unless configure(defer_structlog=True) ran and nothing adopted structlog since.
    """
    global _early
    if _early is None:
        return
    import structlog

    settings, _early = _early, None
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _make_filter(settings.levels), settings.renderer],
        logger_factory=structlog.PrintLoggerFactory(settings.stream),
        cache_logger_on_first_use=False,
    )


def reset() -> None:
    """Forget a deferred configuration (tests): unconfigured loggers use structlog's defaults."""
    global _early
    _early = None


#: Logger method -> the method name structlog's filtering logger hands to the processors.
_METHODS = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning", "error": "error",
            "exception": "error", "critical": "critical", "fatal": "critical"}


class _Lazy:
    """The agent's logger. Resolves at each call: the early writer before adopt_structlog(), structlog after."""

    def __init__(self, scope: str, context: Mapping[str, Any] | None = None):
        self.scope = scope
        self.context = dict(context or {})

    def bind(self, **kw: Any) -> "_Lazy":
        return _Lazy(self.scope, {**self.context, **kw})

    def __getattr__(self, name: str) -> Any:
        early = _early
        if early is None:
            log = _structlog_logger(self.scope)
            return getattr(log.bind(**self.context) if self.context else log, name)
        method = _METHODS.get(name)
        if method is None:
            raise AttributeError(name)

        def emit(event: str, *args: Any, **kw: Any) -> None:
            if name == "exception":
                kw.setdefault("exc_info", True)
            if args:  # structlog's %-interpolation of positional arguments
                event = event % (args[0] if len(args) == 1 and isinstance(args[0], Mapping) and args[0] else args)
            scope = {"scope": self.scope} if self.scope != "default" else {}
            early.write(method, {**scope, **self.context, **kw, "event": event})

        return emit


def _structlog_logger(scope: str) -> Any:
    import structlog

    log = structlog.get_logger()
    return log.bind(scope=scope) if scope != "default" else log


def lazy(scope: str = "default") -> Any:
    return _Lazy(scope)


def get(scope: str = "default") -> Any:
    """A logger for `scope`; cheap to create at import time (nothing is resolved until it logs)."""
    return _Lazy(scope)
