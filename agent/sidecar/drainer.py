"""The drain controller: tells Envoy to drain, waits as `drain.decide` says, then closes the
(inbound) listeners when `drain.quiet` says and waits as `drain.finish` says for what they accepted.

The waiting is asynchronous and ends early when one of the caller's events is set (a second signal,
Envoy exiting by itself). Time comes from an injected `Clock`, so tests drive it without sleeping.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from agent.sidecar import drain, logs
from agent.sidecar.admin import AdminError
from agent.sidecar.in_flight import Counts, Plan

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

    async def stop_listeners(self, inbound_only: bool) -> None: ...

    async def in_flight_plan(self, inbound_only: bool, excluded_ports: tuple[int, ...]) -> Plan: ...

    async def listener_counts(self, plan: Plan) -> Counts: ...


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
            await self.admin.drain_listeners(self.inbound_only, skip_exit=True)  # the agent closes them
        except AdminError as e:
            log.warning("drain_listeners failed", error=str(e))
        reason = await self._wait(started, ends)
        if _ended(ends) is None:
            reason = f"{reason}; {await self._finish(ends)}"
        log.info("drain finished", reason=reason, seconds=round(self.clock.now() - started, 3))

    async def _finish(self, ends: Mapping[str, asyncio.Event]) -> str:
        """Close the listeners at a quiet moment, then wait until nothing they accepted is in flight.

        Which stats to count is asked before the close, not after: Envoy closes the sockets on its
        main thread once its workers have stopped accepting, and an admin request served there
        meanwhile delays the close, while connections queue in the sockets' backlog that the close
        then resets."""
        try:
            plan = await self.admin.in_flight_plan(self.inbound_only, self.excluded_ports)
        except AdminError as e:
            log.warning("finding the listeners' stats failed", error=str(e))
            plan = None
        when = await self._quiet(plan, ends) if plan is not None else "listeners' stats unknown"
        if (ended := _ended(ends)) is not None:
            return f"{when}; {ended}"
        try:
            await self.admin.stop_listeners(self.inbound_only)
        except AdminError as e:
            log.warning("closing the listeners failed", error=str(e))
            return f"{when}; listeners not closed"
        if plan is None:
            return f"{when}; listeners closed"
        log.info("listeners closed: waiting for the requests they accepted", when=when, inbound_only=self.inbound_only,
                 listeners=len(plan.listener_stats), grace_seconds=self.policy.finish_grace)
        closed = self.clock.now()
        await sleep_or_event(self.clock, self.policy.finish_poll, list(ends.values()))  # see drain.finish

        async def in_flight() -> float:
            return (await self.admin.listener_counts(plan)).in_flight

        done = await self._steps(closed, ends, lambda elapsed, count, _errors: drain.finish(elapsed, count, self.policy),
                                 in_flight, "counting requests in flight failed")
        return f"{when}; {done}"

    async def _quiet(self, plan: Plan, ends: Mapping[str, asyncio.Event]) -> str:
        """Wait, as `drain.quiet` says, for a moment when no new connection comes."""
        started = self.clock.now()
        accepted, changed = None, started

        async def since_new() -> float:
            nonlocal accepted, changed
            now, total = self.clock.now(), (await self.admin.listener_counts(plan)).accepted
            if total != accepted:
                accepted, changed = total, now
            return now - changed

        return await self._steps(started, ends, lambda elapsed, since, _errors: drain.quiet(elapsed, since, self.policy),
                                 since_new, "counting new connections failed")

    async def _wait(self, started: float, ends: Mapping[str, asyncio.Event]) -> str:
        async def active() -> float:
            got = await self.admin.active_connections(self.excluded_ports)
            return drain.NO_STAT if got is None else got

        return await self._steps(started, ends, lambda elapsed, count, errors: drain.decide(
            elapsed, count, self.policy, poll_errors=errors), active, "active connections poll failed")

    async def _steps(self, started: float, ends: Mapping[str, asyncio.Event],
                     decide: Callable[[float, float | None, int], drain.Step], poll: Callable[[], Awaitable[float]],
                     failed: str) -> str:
        """Do what `decide(elapsed, last count, failed polls in a row)` says until it says stop or
        one of `ends` is set; returns the reason."""
        count, errors = None, 0
        while True:
            if (reason := _ended(ends)) is not None:
                return reason
            step = decide(self.clock.now() - started, count, errors)
            if step.action == drain.Action.STOP:
                return step.reason
            if step.action == drain.Action.POLL:
                try:
                    count, errors = await poll(), 0
                except AdminError as e:
                    count, errors = drain.POLL_FAILED, errors + 1
                    log.warning(failed, error=str(e), failures=errors)
                continue
            await sleep_or_event(self.clock, step.seconds, list(ends.values()))
            count = None  # stale after sleeping: count again


def _ended(ends: Mapping[str, asyncio.Event]) -> str | None:
    """The reason of the first of `ends` that is set, if any."""
    return next((reason for reason, event in ends.items() if event.is_set()), None)
