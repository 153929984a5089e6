"""The sidecar's supervisor: the main loop that keeps Envoy running and stops it cleanly.

Signal handlers, SIGCHLD and the status server's /quitquitquit and /drain only *enqueue* events; the
loop dispatches them to `handle_<name>` (gunicorn's arbiter shape). The drain runs as a task so
the loop keeps reaping children and seeing a second signal while it waits.

States: RUNNING -> (Envoy died) RESTARTING -> RUNNING ... ; RUNNING/RESTARTING -> DRAINING -> STOPPED.

Exit paths, all of them (exit code in brackets):
1. SIGTERM/SIGINT: readiness fails, inbound listeners drain, wait (agent.sidecar.drain), the
   listeners close and what they accepted finishes, stop Envoy                             [0]
2. a second SIGTERM/SIGINT while draining: stop Envoy now                                  [0]
3. POST /quitquitquit, or a signal after POST /drain: stop Envoy without the drain wait     [0]
4. Envoy exits by itself while draining: the wait ends early                               [0]
5. Envoy exits unexpectedly and the restart budget is 0 (Istio's behaviour)                [0]
6. Envoy exits unexpectedly past the restart budget                                        [1]
7. Envoy cannot be started again (exec failure)                                            [1]
8. a signal while waiting to restart Envoy: nothing to drain                               [0]
"""
from __future__ import annotations

import asyncio
import enum
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.exitcodes import Exit
from agent.sidecar import envoy, logs, reaper
from agent.sidecar.admin import AdminClient, AdminError, ReadinessProbe
from agent.sidecar.drainer import Clock, Drainer, MonotonicClock
from agent.sidecar.stop_signals import STOP_SIGNALS

log = logs.get()


class State(enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Supervision:
    """What the supervisor is given (built by agent.sidecar.sidecar)."""

    envoy: reaper.EnvoyHandle
    admin: AdminClient
    readiness: ReadinessProbe
    drainer: Drainer
    on_restart: Callable[[], None]  # counts the restart metric
    budget: envoy.RestartBudget
    reap_all: bool = field(default_factory=lambda: os.getpid() == 1)
    stop_grace: float = 2.0
    clock: Clock = field(default_factory=MonotonicClock)


class Supervisor:
    def __init__(self, sup: Supervision):
        self.s = sup
        self.envoy = sup.envoy
        self.state = State.RUNNING
        self.events: asyncio.Queue[tuple] = asyncio.Queue()
        self.skip_drain = False
        self.forced = asyncio.Event()
        self.envoy_gone = asyncio.Event()
        self.exit_code: int | None = None
        self._tasks: set[asyncio.Task] = set()  # the drain and a pending restart

    # -- enqueue-only entry points --------------------------------------------------------------
    def enqueue(self, *event: object) -> None:
        self.events.put_nowait(event)

    async def request_quit(self) -> None:
        self.enqueue("quit")

    async def request_drain(self) -> None:
        self.enqueue("drain_endpoint")

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- main loop ---------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.enqueue, "signal", signum)
        loop.add_signal_handler(signal.SIGCHLD, self.enqueue, "child")
        self.enqueue("child")  # Envoy may have exited before the handler was installed
        # The edge blocked the stop signals during start-up: one sent meanwhile is delivered now,
        # to the handlers above. The mask found here is put back at the end.
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            while self.exit_code is None:
                name, *args = await self.events.get()
                await getattr(self, f"handle_{name}")(*args)
            return self.exit_code
        finally:
            # First the mask (blocked again in the agent): the mesh services' shutdown and the edge's
            # cleanup are still to come, and a late SIGTERM/SIGINT must not kill the agent half-way
            # (the default action once the handlers are gone) or raise KeyboardInterrupt.
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for signum in (*STOP_SIGNALS, signal.SIGCHLD):
                loop.remove_signal_handler(signum)
            for task in list(self._tasks):
                task.cancel()

    async def handle_child(self) -> None:
        code, orphans = reaper.reap(self.envoy.pid, self.s.reap_all)
        for pid, status in orphans:
            log.info("reaped orphan process", pid=pid, **envoy.describe_exit(status))
        if code is None:
            return
        self.envoy.exited(code)
        self.envoy_gone.set()
        if self.state == State.DRAINING:
            log.info("Envoy exited", **envoy.describe_exit(code))
            return
        self._unexpected_exit(code)

    def _unexpected_exit(self, code: int) -> None:
        fields = envoy.describe_exit(code)
        log.error("Envoy exited unexpectedly", **fields)
        self.s.readiness.envoy_down = f"Envoy exited ({', '.join(f'{k}={v}' for k, v in fields.items() if k != 'hint')})"
        if self.s.budget.limit <= 0:
            log.info("Envoy restarts disabled (budget 0): exiting as Istio does", exit_code=int(Exit.OK))
            self.exit_code = Exit.OK
            return
        now = self.s.clock.now()
        if not self.s.budget.allow(now):
            log.error("Envoy restart budget exhausted: exiting", restarts=len(self.s.budget.history),
                      window_seconds=self.s.budget.window, exit_code=int(Exit.FAILURE))
            self.exit_code = Exit.FAILURE
            return
        delay = self.s.budget.record(now)
        self.state = State.RESTARTING
        log.warning("restarting Envoy", attempt=len(self.s.budget.history), limit=self.s.budget.limit,
                    delay_seconds=delay)
        self._background(self._restart_after(delay))

    async def _restart_after(self, delay: float) -> None:
        await self.s.clock.sleep(delay)
        self.enqueue("restart")

    async def handle_restart(self) -> None:
        if self.state != State.RESTARTING:
            return
        try:
            proc = self.envoy.spawn()
        except OSError as e:
            log.error("cannot start Envoy again", error=str(e), exit_code=int(Exit.FAILURE))
            self.exit_code = Exit.FAILURE
            return
        self.envoy_gone.clear()
        self.s.on_restart()
        self.s.readiness.envoy_restarted()
        self.state = State.RUNNING
        log.info("Envoy restarted", pid=proc.pid)

    async def handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.state == State.DRAINING:
            log.warning("second signal: stopping Envoy now", signal=name)
            self.forced.set()
            return
        self._begin_drain(f"received signal: {name}")

    async def handle_quit(self) -> None:
        log.info("quitquitquit: stopping Envoy without draining")
        self.skip_drain = True
        if self.state == State.DRAINING:
            self.forced.set()
        else:
            self._begin_drain("quitquitquit")

    async def handle_drain_endpoint(self) -> None:
        log.info("drain requested: draining inbound listeners for good; the next signal stops Envoy at once")
        self.skip_drain = True
        self.s.readiness.terminate("drain requested")
        try:
            await self.s.admin.drain_listeners(self.s.drainer.inbound_only, skip_exit=True)
        except AdminError as e:
            log.warning("drain_listeners failed", error=str(e))

    async def handle_done(self) -> None:
        self.state = State.STOPPED
        self.exit_code = Exit.OK
        log.info("Agent has successfully terminated")

    # -- drain -------------------------------------------------------------------------------------
    def _begin_drain(self, cause: str) -> None:
        self.s.readiness.terminate(cause)
        prev, self.state = self.state, State.DRAINING
        if prev == State.RESTARTING or self.envoy.pid is None:
            log.info("no Envoy running: exiting", cause=cause)
            self.enqueue("done")
            return
        self._background(self._drain(cause))

    async def _drain(self, cause: str) -> None:
        """Drain, wait, stop Envoy. Whatever fails on the way, Envoy is stopped and the loop told."""
        try:
            if self.skip_drain:
                log.info("skipping drain", cause=cause)
            else:
                await self.s.drainer.run(cause, {"forced by a second signal": self.forced,
                                                 "Envoy exited early": self.envoy_gone})
        except Exception as e:  # never leave the loop waiting for a "done" that will not come
            log.error("drain failed: stopping Envoy", error=repr(e))
        finally:
            try:
                await self._stop_envoy()
            finally:
                self.enqueue("done")

    async def _stop_envoy(self) -> None:
        if self.envoy.pid is None:
            return
        self.envoy.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.envoy_gone.wait(), self.s.stop_grace)
        except asyncio.TimeoutError:
            log.warning("Envoy did not stop in time: killing it", grace_seconds=self.s.stop_grace)
            self.envoy.signal(signal.SIGKILL)
            await self.envoy_gone.wait()
