"""The supervisor's exit paths (agent.sidecar.supervisor), every one its docstring lists, with real
child processes standing in for Envoy (`sleep`, `sh -c 'exit N'`), a recording admin client, and a
manual clock: the drain and restart waits only end when a test advances time, so every assertion on
"how long" is exact and no test depends on the machine's speed."""
import asyncio
import signal
import time

import pytest
from structlog.testing import capture_logs

from agent.exitcodes import Exit
from agent.sidecar import drain, envoy
from agent.sidecar.admin import AdminError, ReadinessProbe
from agent.sidecar.drainer import Drainer
from agent.sidecar.in_flight import Counts, Plan
from agent.sidecar.reaper import EnvoyHandle
from agent.sidecar.supervisor import Supervision, Supervisor

LIVE = "server.state: 0\nlistener_manager.workers_started: 1\n"


class ManualClock:
    """now() only moves when advance() is called; sleep() waits for that."""

    def __init__(self):
        self.t = 0.0
        self.sleepers: list[tuple[float, asyncio.Future]] = []

    def now(self):
        return self.t

    async def sleep(self, seconds):
        fut = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.t + seconds, fut))
        await fut

    def pending(self):
        return sorted(round(deadline - self.t, 6) for deadline, fut in self.sleepers if not fut.done())

    def advance(self, seconds):
        self.t += seconds
        for deadline, fut in self.sleepers:
            if deadline <= self.t + 1e-9 and not fut.done():
                fut.set_result(None)


class RecordingAdmin:
    def __init__(self, active=(), accepted=(), in_flight=(), stop_error=None):
        self.calls = []
        self.active = list(active)
        self.accepted = list(accepted)  # connections accepted so far, counted before the close; then no new one
        self.in_flight = list(in_flight)  # counted after the close; then 0
        self.stop_error = stop_error
        self.closed = False
        self.total = 0

    async def stats(self, regex, timeout=1.0):
        return LIVE

    async def drain_listeners(self, inbound_only, skip_exit=False, timeout=5.0):
        self.calls.append(("drain_listeners", inbound_only, skip_exit))

    async def active_connections(self, excluded_ports, timeout=2.0):
        self.calls.append(("active_connections",))
        value = self.active.pop(0) if self.active else 0
        if isinstance(value, Exception):
            raise value
        return value

    async def stop_listeners(self, inbound_only, timeout=5.0):
        self.calls.append(("stop_listeners", inbound_only))
        if self.stop_error:
            raise self.stop_error
        self.closed = True

    async def in_flight_plan(self, inbound_only, excluded_ports, timeout=5.0):
        self.calls.append(("in_flight_plan", inbound_only, tuple(excluded_ports)))
        return Plan(frozenset({"listener.0.0.0.0_15006.downstream_cx_active"}), frozenset())

    async def listener_counts(self, plan, timeout=2.0):
        self.calls.append(("counts", "in flight" if self.closed else "new connections"))
        source = self.in_flight if self.closed else self.accepted
        value = source.pop(0) if source else (0 if self.closed else self.total)
        if isinstance(value, Exception):
            raise value
        if self.closed:
            return Counts(value, self.total)
        self.total = value
        return Counts(0, value)

    def counted(self, what):
        return self.calls.count(("counts", what))


class Rig:
    def __init__(self, argv=("sleep", "30"), *, budget=0, admin=None, policy=None, respawn=("sleep", "30"),
                 inbound_only=True, base_delay=0.05):
        self.clock = ManualClock()
        self.admin = admin or RecordingAdmin()
        self.restarts = []
        self.readiness = ReadinessProbe(self.admin, standalone=True, on_first_ready=lambda s: None,
                                        process_start=time.time())
        self.envoy = EnvoyHandle(list(argv))
        self.envoy.spawn()
        self.envoy.argv = list(respawn)  # what a restart runs
        self.sup = Supervisor(Supervision(
            envoy=self.envoy, admin=self.admin, readiness=self.readiness,
            drainer=Drainer(self.admin, policy or drain.DrainPolicy(termination_drain=0.2), inbound_only=inbound_only,
                            excluded_ports=(15021, 15090), clock=self.clock),
            on_restart=lambda: self.restarts.append(1),
            budget=envoy.RestartBudget(budget, 600, base_delay=base_delay),
            reap_all=False, stop_grace=2.0, clock=self.clock))
        self.task = None

    def start(self):
        self.task = asyncio.ensure_future(self.sup.run())

    async def until(self, condition, what):
        """Wait (in real time, bounded only against a hang) until `condition()` holds."""
        for _ in range(2000):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"never happened: {what}")

    async def result(self):
        return await asyncio.wait_for(self.task, 20)

    async def step_until(self, condition, what, step=0.05):
        """Advance the clock `step` at a time, each time something waits, until `condition()` holds."""
        for _ in range(1000):
            await self.until(lambda: condition() or self.clock.pending() or self.task.done(), what)
            if condition():
                return
            self.clock.advance(step)
        raise AssertionError(f"never happened: {what}")

    def closed(self):
        return self.admin.closed or self.admin.stop_error is not None and any(c[0] == "stop_listeners" for c in self.admin.calls)

    def close(self):
        self.envoy.kill()


@pytest.fixture
def logged():
    """The log lines' texts (event and fields) of the test, as one string."""
    with capture_logs() as events:
        yield lambda: "\n".join(" ".join(f"{k}={v}" for k, v in e.items()) for e in events)


@pytest.fixture
def rig():
    made = []

    def make(*args, **kw):
        made.append(Rig(*args, **kw))
        return made[-1]
    yield make
    for r in made:
        r.close()


async def test_sigterm_drains_inbound_for_the_termination_drain_then_stops_envoy(rig):
    r = rig()
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [0.2], "the drain waits terminationDrainDuration")
    assert not r.task.done()
    r.clock.advance(0.2)
    await r.step_until(r.task.done, "the end")
    assert await r.result() == Exit.OK
    # Envoy does not close the listeners itself (skip_exit); they close once no new connection came
    # for 0.1 s (three counts, 50 ms apart), and Envoy stops once nothing they accepted is in flight
    assert r.admin.calls == [("drain_listeners", True, True), ("in_flight_plan", True, (15021, 15090)),
                             *[("counts", "new connections")] * 3, ("stop_listeners", True), ("counts", "in flight")]
    assert r.clock.now() == pytest.approx(0.35)
    assert await r.readiness.reason() == "server is terminated: received signal: SIGTERM"
    assert r.envoy.pid is None and r.envoy.process.returncode is not None


async def test_router_drains_all_listeners(rig):
    r = rig(inbound_only=False)
    r.start()
    r.sup.enqueue("signal", signal.SIGINT)
    await r.until(lambda: r.clock.pending(), "drain wait")
    r.clock.advance(0.2)
    await r.step_until(r.task.done, "the end")
    assert await r.result() == Exit.OK
    assert r.admin.calls[:2] == [("drain_listeners", False, True), ("in_flight_plan", False, (15021, 15090))]
    assert ("stop_listeners", False) in r.admin.calls


async def test_second_signal_forces_without_time_passing(rig):
    r = rig(policy=drain.DrainPolicy(termination_drain=30))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [30], "drain wait")
    r.sup.enqueue("signal", signal.SIGTERM)
    assert await r.result() == Exit.OK and r.clock.now() == 0


async def test_envoy_exiting_during_drain_ends_the_wait(rig):
    r = rig(policy=drain.DrainPolicy(termination_drain=30))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [30], "drain wait")
    r.envoy.process.signal(signal.SIGKILL)  # Envoy goes away by itself
    assert await r.result() == Exit.OK and r.clock.now() == 0


async def test_quitquitquit_skips_the_drain(rig):
    r = rig(policy=drain.DrainPolicy(termination_drain=30))
    r.start()
    r.sup.enqueue("quit")
    assert await r.result() == Exit.OK and r.admin.calls == [] and r.clock.now() == 0


async def test_drain_endpoint_then_signal_stops_at_once(rig):
    r = rig(policy=drain.DrainPolicy(termination_drain=30))
    r.start()
    r.sup.enqueue("drain_endpoint")
    await r.until(lambda: r.admin.calls, "drain_listeners")
    assert await r.readiness.reason() == "server is terminated: drain requested"
    r.sup.enqueue("signal", signal.SIGTERM)
    assert await r.result() == Exit.OK
    assert r.admin.calls == [("drain_listeners", True, True)] and r.clock.now() == 0


async def test_exit_on_zero_polls_until_zero_and_survives_errors(rig):
    r = rig(admin=RecordingAdmin(active=[3, AdminError("refused"), 1, 0]),
            policy=drain.DrainPolicy(exit_on_zero=True, minimum_drain=5, poll_interval=1))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [5], "minimum drain")
    r.clock.advance(5)
    for _ in range(3):  # 3 active, a failed poll, 1 active: each followed by one poll interval
        await r.until(lambda: r.clock.pending() == [1], "poll interval")
        r.clock.advance(1)
    # zero: the listeners (which still accepted) close at a quiet moment, then what they accepted is counted
    await r.step_until(r.task.done, "the end")
    assert await r.result() == Exit.OK
    assert r.admin.calls.count(("active_connections",)) == 4 and r.clock.now() == pytest.approx(8.15)
    assert r.admin.calls[-3:] == [("counts", "new connections"), ("stop_listeners", True), ("counts", "in flight")]


async def test_envoy_stops_only_once_nothing_the_closed_listeners_accepted_is_in_flight(rig, logged):
    """The new order: drain gracefully, wait terminationDrainDuration, close the listeners (nothing
    new is accepted), count what they accepted until none is in flight, then stop Envoy."""
    r = rig(admin=RecordingAdmin(in_flight=[2, AdminError("timeout"), 1, 0]))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [0.2], "termination drain")
    assert r.admin.calls == [("drain_listeners", True, True)]  # still accepting during the window
    r.clock.advance(0.2)
    await r.step_until(r.closed, "the close")
    await r.until(lambda: r.clock.pending() == [0.05], "the first count waits for requests on their way")
    closed_at = r.clock.now()
    for counted in (1, 2, 3):  # 2 in flight, a failed count (tried again), 1 in flight
        r.clock.advance(0.05)
        await r.until(lambda: r.admin.counted("in flight") == counted and r.clock.pending(), "count")
        assert r.envoy.pid is not None  # Envoy is not stopped while an accepted request runs
    r.clock.advance(0.05)
    assert await r.result() == Exit.OK
    assert r.admin.counted("in flight") == 4 and r.clock.now() == pytest.approx(closed_at + 0.2)
    assert ("termination drain duration elapsed; no new connection for 0.1s; no accepted request in flight"
            in logged())


async def test_the_listeners_close_once_connections_stop_arriving(rig, logged):
    r = rig(admin=RecordingAdmin(accepted=[5, 6, 7, 7, 7]))  # two new connections, then none
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [0.2], "termination drain")
    r.clock.advance(0.2)
    await r.step_until(r.closed, "the close")
    assert r.clock.now() == pytest.approx(0.4) and r.admin.counted("new connections") == 5
    await r.step_until(r.task.done, "the end")
    assert await r.result() == Exit.OK


async def test_connections_that_keep_arriving_hold_the_close_at_most_close_wait(rig, logged):
    r = rig(admin=RecordingAdmin(accepted=list(range(1000))), policy=drain.DrainPolicy(termination_drain=1, close_wait=0.5))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [1], "termination drain")
    r.clock.advance(1)
    await r.step_until(r.closed, "the close")
    assert r.clock.now() == pytest.approx(1.5)
    await r.step_until(r.task.done, "the end")
    assert await r.result() == Exit.OK and "connections still arriving after 0.5s" in logged()


async def test_new_connections_that_cannot_be_counted_mean_the_listeners_close_now(rig, logged):
    r = rig(admin=RecordingAdmin(accepted=[AdminError("timeout")]))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [0.2], "termination drain")
    r.clock.advance(0.2)
    await r.step_until(r.closed, "the close")
    assert r.clock.now() == pytest.approx(0.2)
    await r.step_until(r.task.done, "the end")
    assert "new connections unknown: the count failed" in logged()


async def test_requests_still_in_flight_after_the_grace_do_not_hold_envoy(rig, logged):
    r = rig(admin=RecordingAdmin(in_flight=[3] * 1000), policy=drain.DrainPolicy(termination_drain=1, finish_grace=0.5))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [1], "termination drain")
    r.clock.advance(1)
    await r.step_until(r.closed, "the close")
    closed_at = r.clock.now()
    await r.step_until(r.task.done, "the end")
    assert await r.result() == Exit.OK and r.clock.now() == pytest.approx(closed_at + 0.55, abs=0.06)
    assert "3 accepted in flight after 0.5s" in logged()


async def test_second_signal_ends_the_wait_for_accepted_requests(rig):
    r = rig(admin=RecordingAdmin(in_flight=[5] * 1000))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [0.2], "termination drain")
    r.clock.advance(0.2)
    await r.step_until(lambda: r.admin.counted("in flight") == 1, "counted 5 in flight")
    await r.until(r.clock.pending, "the next count's wait")
    now = r.clock.now()
    r.sup.enqueue("signal", signal.SIGTERM)
    assert await r.result() == Exit.OK and r.clock.now() == now


async def test_listeners_that_cannot_be_closed_mean_envoy_is_stopped_at_once(rig, logged):
    r = rig(admin=RecordingAdmin(stop_error=AdminError("POST /drain_listeners: refused")))
    r.start()
    r.sup.enqueue("signal", signal.SIGTERM)
    await r.until(lambda: r.clock.pending() == [0.2], "termination drain")
    r.clock.advance(0.2)
    await r.step_until(r.task.done, "the end")
    assert await r.result() == Exit.OK and r.clock.now() == pytest.approx(0.3)  # the quiet counts, then no wait
    assert r.admin.counted("in flight") == 0 and "closing the listeners failed" in logged()


async def test_budget_zero_exits_like_istio(rig):
    r = rig(argv=("sh", "-c", "exit 3"), budget=0)
    r.start()
    assert await r.result() == Exit.OK and r.restarts == []


async def test_restart_after_the_backoff_within_budget_then_give_up(rig):
    r = rig(argv=("sh", "-c", "exit 3"), budget=1, respawn=("sh", "-c", "kill -9 $$"), base_delay=4)
    r.start()
    await r.until(lambda: r.clock.pending() == [4], "restart backoff")
    assert r.restarts == [] and r.readiness.envoy_down == "Envoy exited (code=3)"
    r.clock.advance(4)
    assert await r.result() == Exit.FAILURE and r.restarts == [1]
    assert r.readiness.envoy_down == "Envoy exited (signal=SIGKILL)"


async def test_cannot_respawn_is_a_failure(rig):
    r = rig(argv=("sh", "-c", "exit 1"), budget=2, respawn=("/nonexistent/envoy",))
    r.start()
    await r.until(lambda: r.clock.pending(), "restart backoff")
    r.clock.advance(60)
    assert await r.result() == Exit.FAILURE


async def test_signal_while_waiting_to_restart_exits_at_once(rig):
    r = rig(argv=("sh", "-c", "exit 1"), budget=1, base_delay=8)
    r.start()
    await r.until(lambda: r.clock.pending() == [8], "restart backoff")
    r.sup.enqueue("signal", signal.SIGTERM)
    assert await r.result() == Exit.OK and r.restarts == []


async def test_envoy_handle_kills_a_leftover_on_exit():
    with EnvoyHandle(["sleep", "30"]) as handle:
        assert handle.pid is None  # the sidecar spawns it in its start-up
        handle.spawn()
        assert handle.pid is not None
    assert handle.pid is None and handle.process.returncode == -signal.SIGKILL
