"""The sidecar's logs: structlog, configured once at start, rendering Istio's lines (agent.logformat).

    log = logs.get("probes")          # at import time: nothing is resolved until the first line
    log.info("app probe", status=200) # 2026-...Z<TAB>info<TAB>probes<TAB>app probe status=200

The processor chain is: context variables, then `ScopeFilter` (drops what `--log_output_level` hides
for the event's scope and stamps Istio's level name), then `render_line` (text or JSON).
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from agent.logformat import DEFAULT_SCOPE, METHOD_LEVELS, Level, enabled, parse_levels, render


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
        msg = str(event.pop("event", ""))
        return render(level, msg, event, scope=scope, as_json=self.as_json)


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


def get(scope: str = DEFAULT_SCOPE) -> Any:
    """A logger for `scope`; lazy, so modules create theirs at import time, before configure()."""
    return structlog.get_logger(scope=scope) if scope != DEFAULT_SCOPE else structlog.get_logger()
