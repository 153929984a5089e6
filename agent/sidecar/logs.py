"""The sidecar's logs: structlog, configured once at start, rendering Istio's lines (agent.logformat).

    log = logs.get("probes")          # at import time: nothing is resolved until the first line
    log.info("app probe", status=200) # 2026-...Z<TAB>info<TAB>probes<TAB>app probe status=200

The processor chain is: context variables, then `ScopeFilter` (drops what `--log_output_level` hides
for the event's scope and stamps Istio's level name), then `render_line` (text or JSON).

Libraries log through the standard library's `logging` (aiohttp's server, asyncio's "Task exception
was never retrieved", grpc's Python layer, `warnings`): `StdlibLines` sends each record through the
same chain, in the scope named by the logger's top package (`aiohttp`, `asyncio`, `grpc`,
`warnings`), so `--log_output_level aiohttp:debug` or `asyncio:none` applies to them too; a library's
debug records only when its scope is named (`default:debug` is the agent's own detail, not every
HTTP/2 frame a library decodes). Every record
is one line: never a traceback (the exception becomes `error="<type>: <message>"`), and their text,
which can quote what a remote caller sent (aiohttp's parse errors quote the bad header), is escaped
and cut. (grpc's C core writes its own lines to stderr, outside Python; `GRPC_VERBOSITY` governs them.)
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from agent.logformat import DEFAULT_SCOPE, METHOD_LEVELS, Level, enabled, one_line, parse_levels, render


@dataclass(frozen=True, slots=True)
class ScopeFilter:
    """Drops events below their scope's level; keeps Istio's level for the renderer."""

    levels: Mapping[str, Level]

    def __call__(self, _logger: Any, method: str, event: dict) -> dict:
        level = METHOD_LEVELS.get(method, Level.INFO)
        if not enabled(self.levels, event.get("scope", DEFAULT_SCOPE), level):
            raise structlog.DropEvent
        event["level"] = level
        return event


@dataclass(frozen=True, slots=True)
class LineRenderer:
    as_json: bool

    def __call__(self, _logger: Any, _method: str, event: dict) -> str:
        level = event.pop("level")
        scope = event.pop("scope", DEFAULT_SCOPE)
        msg = str(event.pop("event", ""))  # JSON escapes it; a text line must not be broken by it
        return render(level, msg if self.as_json else one_line(msg), event, scope=scope, as_json=self.as_json)


#: Standard-library levels, highest first, and the logger method structlog dispatches them as.
_METHODS = ((logging.CRITICAL, "critical"), (logging.ERROR, "error"), (logging.WARNING, "warning"),
            (logging.INFO, "info"))
#: Longest message, detail or error text of a library's record, in characters before escaping.
TEXT_LIMIT = 300


class StdlibLines(logging.Handler):
    """The root logger's one handler: each `logging` record as one of the agent's lines."""

    def __init__(self, levels: Mapping[str, Level]):
        super().__init__()
        self.levels = levels

    def emit(self, record: logging.LogRecord) -> None:
        scope = record.name.removeprefix("py.").split(".")[0]
        if record.levelno < logging.INFO and scope not in self.levels:
            return
        try:
            method = next((name for level, name in _METHODS if record.levelno >= level), "debug")
            first, _, rest = _message(record).partition("\n")
            fields = {"detail": one_line(" ".join(rest.split()), TEXT_LIMIT)} if rest.strip() else {}
            error = record.exc_info[1] if record.exc_info else None
            if error is not None:
                fields["error"] = exception_text(error)
            getattr(get(scope), method)(one_line(first, TEXT_LIMIT), **fields)
        except Exception:  # noqa: BLE001 - a line that cannot be written (a closed stream) is dropped
            pass  # logging's own handleError would print a traceback


def exception_text(error: BaseException) -> str:
    """`<type>: <message>` on one line, cut: what a log line says of an exception (no traceback)."""
    text = " ".join(str(error).split())
    return one_line(f"{type(error).__name__}: {text}" if text else type(error).__name__, TEXT_LIMIT)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - %-arguments that do not fit the format
        return str(record.msg)


def open_target(target: str) -> TextIO:
    """--log_target: `stdout`, `stderr` or a file path (the first of a comma list). OSError if unwritable."""
    first = (target or "stdout").split(",")[0].strip()
    if first in ("stdout", ""):
        return sys.stdout
    if first == "stderr":
        return sys.stderr
    return open(first, "a", buffering=1)


def configure(output_level: str = "default:info", as_json: bool = False, target: str = "stdout",
              stream: TextIO | None = None) -> None:
    """Configure logging for the process. LogConfigError on a bad level spec, OSError on a bad target."""
    levels = parse_levels(output_level)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, ScopeFilter(levels), LineRenderer(as_json)],
        logger_factory=structlog.PrintLoggerFactory(stream or open_target(target)),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibLines)]:
        root.removeHandler(handler)  # configured again (tests, the early-signal path): one bridge
    root.addHandler(StdlibLines(levels))
    # Istio's levels have the standard library's numbers. The root's level is only a first cut (no
    # record made for nothing); StdlibLines and ScopeFilter decide per scope.
    named = [level for scope, level in levels.items() if scope != DEFAULT_SCOPE]
    root.setLevel(min([max(levels[DEFAULT_SCOPE], Level.INFO), *named]))
    logging.captureWarnings(True)  # `warnings` output as records too, instead of two raw lines on stderr


def get(scope: str = DEFAULT_SCOPE) -> Any:
    """A logger for `scope`; lazy, so modules create theirs at import time, before configure()."""
    return structlog.get_logger(scope=scope) if scope != DEFAULT_SCOPE else structlog.get_logger()
