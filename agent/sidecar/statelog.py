"""Log a repeated check when its result changes, not each time someone asks for it.

Readiness and the app probes answer whoever calls: kubelet every few seconds, a careless poller
every few milliseconds. Logging each answer would let any caller set the agent's log rate (a 50 ms
poller wrote about 200 lines in 5 s). `StateLog.observe()` tells its caller when to log instead:

- `Note.CHANGED`: the first result, and every change of result: always logged;
- `Note.STILL`: a periodic summary (every `every` seconds, with how long the state has lasted and
  how many checks saw it) while a state worth repeating lasts: a failure. A healthy steady state
  stays silent.

A summary is written by the check that finds it due, so a state nobody asks about logs nothing more.
The caller picks the keys (one per probe path), so the table stays as small as the configuration.
"""
from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

#: Seconds between two summaries of a failure that lasts.
SUMMARY_EVERY = 30.0


class Note(enum.Enum):
    CHANGED = "changed"
    STILL = "still"


@dataclass(frozen=True, slots=True)
class Report:
    note: Note
    seconds: float  # how long the current state has lasted (0 for CHANGED)
    checks: int  # how many checks saw it, this one included
    first: bool = False  # CHANGED from nothing: the key's first check


@dataclass(slots=True)
class _State:
    value: Hashable
    since: float
    logged: float
    checks: int = 1


class StateLog:
    """Per key, the last result seen and when it was last logged."""

    def __init__(self, every: float = SUMMARY_EVERY, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._states: dict[Hashable, _State] = {}

    def observe(self, key: Hashable, value: Hashable, *, repeat: bool) -> Report | None:
        """Record one check's `value`; the Report says what to log, None: nothing.

        `repeat`: summarise this value periodically while it lasts (pass True for failures)."""
        now = self.clock()
        state = self._states.get(key)
        if state is None or state.value != value:
            self._states[key] = _State(value, now, now)
            return Report(Note.CHANGED, 0.0, 1, first=state is None)
        state.checks += 1
        if repeat and now - state.logged >= self.every:
            state.logged = now
            return Report(Note.STILL, now - state.since, state.checks)
        return None
