"""The drain controller: tells Envoy to drain, then waits as `drain.decide` says.

The waiting is asynchronous and ends early when one of the caller's events is set (a second signal,
Envoy exiting by itself). Time comes from an injected `Clock`, so tests drive it without sleeping.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from agent.sidecar import drain, logs
from agent.sidecar.admin import AdminError

log = logs.get()


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class DrainAdmin(Protocol):
    """The part of Envoy's admin API a drain uses (agent.sidecar.admin.AdminClient)."""

    async def drain_listeners(self, inbound_only: bool, skip_exit: bool = False) -> None: ...

    async def active_connections(self, excluded_ports: Sequence[int]) -> int | None: ...


async def sleep_or_event(clock: Clock, seconds: float, events: Sequence[asyncio.Event]) -> None:
    """Sleep `seconds`, or less if one of `events` is set meanwhile."""
    waiters = [asyncio.ensure_future(clock.sleep(seconds)), *(asyncio.ensure_future(e.wait()) for e in events)]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@dataclass(slots=True)
class Drainer:
    admin: DrainAdmin
    policy: drain.DrainPolicy
    inbound_only: bool
    excluded_ports: tuple[int, ...]
    clock: Clock

    async def run(self, cause: str, ends: Mapping[str, asyncio.Event]) -> None:
        """Drain Envoy's listeners and wait. `ends`: reason -> event that ends the wait at once."""
        started = self.clock.now()
        log.info("draining Envoy", cause=cause, inbound_only=self.inbound_only, **asdict(self.policy))
        try:
            await self.admin.drain_listeners(self.inbound_only)
        except AdminError as e:
            log.warning("drain_listeners failed", error=str(e))
        reason = await self._wait(started, ends)
        log.info("drain finished", reason=reason, seconds=round(self.clock.now() - started, 3))

    async def _wait(self, started: float, ends: Mapping[str, asyncio.Event]) -> str:
        active, errors = None, 0
        while True:
            for reason, event in ends.items():
                if event.is_set():
                    return reason
            step = drain.decide(self.clock.now() - started, active, self.policy, poll_errors=errors)
            if step.action == drain.Action.STOP:
                return step.reason
            if step.action == drain.Action.POLL:
                try:
                    got = await self.admin.active_connections(self.excluded_ports)
                    active, errors = (drain.NO_STAT if got is None else got), 0
                except AdminError as e:
                    active, errors = drain.POLL_FAILED, errors + 1
                    log.warning("active connections poll failed", error=str(e), failures=errors)
                continue
            await sleep_or_event(self.clock, step.seconds, list(ends.values()))
            active = None  # stale after sleeping: poll again (exit-on-zero mode)
