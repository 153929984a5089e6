"""The supervisor's exit paths (agent.sidecar.run) with real child processes standing in for Envoy
(`sleep`, `sh -c 'exit N'`) and a recording admin client. Every path in run.py's docstring."""
import asyncio
import signal
import time


from agent.exitcodes import Exit
from agent.sidecar import drain, envoy, reaper
from agent.sidecar.admin import AdminError, ReadinessProbe
from agent.sidecar.run import Supervision, Supervisor

LIVE = "server.state: 0\nlistener_manager.workers_started: 1\n"


class RecordingAdmin:
    def __init__(self, active=()):
        self.calls = []
        self.active = list(active)

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


def make(argv=("sleep", "30"), *, budget=0, admin=None, policy=None, respawn=("sleep", "30"), inbound_only=True):
    admin = admin or RecordingAdmin()
    restarts = []
    readiness = ReadinessProbe(admin, standalone=True, on_first_ready=lambda s: None, process_start=time.time())
    sup = Supervisor(Supervision(
        envoy=reaper.spawn(list(argv)), spawn=lambda: reaper.spawn(list(respawn)), admin=admin,
        readiness=readiness, on_restart=lambda: restarts.append(1),
        budget=envoy.RestartBudget(budget, 600, base_delay=0.05),
        drain_policy=policy or drain.DrainPolicy(termination_drain=0.2), inbound_only=inbound_only,
        reap_all=False, stop_grace=2.0))
    return sup, admin, readiness, restarts


async def _run(sup, *events, delay=0.2):
    task = asyncio.ensure_future(sup.run())
    for event in events:
        await asyncio.sleep(delay)
        sup.enqueue(*event)
    return await asyncio.wait_for(task, 20)


def test_sigterm_drains_inbound_then_stops_envoy():
    async def go():
        sup, admin, readiness, _ = make()
        started = time.monotonic()
        code = await _run(sup, ("signal", signal.SIGTERM))
        return code, admin.calls, await readiness.reason(), time.monotonic() - started
    code, calls, reason, took = asyncio.run(go())
    assert code == Exit.OK
    assert calls == [("drain_listeners", True, False)]
    assert reason == "server is terminated: received signal: SIGTERM"
    assert 0.4 <= took < 3  # 0.2 s before the signal + 0.2 s drain + sleep's quick exit on SIGTERM


def test_router_drains_all_listeners():
    async def go():
        sup, admin, _, _ = make(inbound_only=False)
        return await _run(sup, ("signal", signal.SIGINT)), admin.calls
    code, calls = asyncio.run(go())
    assert code == 0 and calls == [("drain_listeners", False, False)]


def test_second_signal_forces():
    async def go():
        sup, _, _, _ = make(policy=drain.DrainPolicy(termination_drain=30))
        started = time.monotonic()
        code = await _run(sup, ("signal", signal.SIGTERM), ("signal", signal.SIGTERM))
        return code, time.monotonic() - started
    code, took = asyncio.run(go())
    assert code == 0 and took < 5


def test_envoy_exiting_during_drain_ends_the_wait():
    async def go():
        sup, _, _, _ = make(argv=("sleep", "0.6"), policy=drain.DrainPolicy(termination_drain=30))
        started = time.monotonic()
        code = await _run(sup, ("signal", signal.SIGTERM))
        return code, time.monotonic() - started
    code, took = asyncio.run(go())
    assert code == 0 and took < 5


def test_quitquitquit_skips_the_drain():
    async def go():
        sup, admin, _, _ = make(policy=drain.DrainPolicy(termination_drain=30))
        code = await _run(sup, ("quit",))
        return code, admin.calls
    code, calls = asyncio.run(go())
    assert code == 0 and calls == []


def test_drain_endpoint_then_signal_stops_at_once():
    async def go():
        sup, admin, readiness, _ = make(policy=drain.DrainPolicy(termination_drain=30))
        started = time.monotonic()
        code = await _run(sup, ("drain_endpoint",), ("signal", signal.SIGTERM))
        return code, admin.calls, time.monotonic() - started
    code, calls, took = asyncio.run(go())
    assert code == 0 and calls == [("drain_listeners", True, True)] and took < 5


def test_exit_on_zero_polls_until_zero_and_survives_errors():
    async def go():
        admin = RecordingAdmin(active=[3, AdminError("refused"), 1, 0])
        policy = drain.DrainPolicy(exit_on_zero=True, minimum_drain=0.1, poll_interval=0.05)
        sup, _, _, _ = make(admin=admin, policy=policy)
        return await _run(sup, ("signal", signal.SIGTERM)), admin.calls
    code, calls = asyncio.run(go())
    assert code == 0 and calls.count(("active_connections",)) == 4


def test_budget_zero_exits_like_istio():
    sup, _, _, restarts = make(argv=("sh", "-c", "exit 3"), budget=0)
    assert asyncio.run(sup.run()) == Exit.OK and restarts == []


def test_restart_within_budget_then_give_up():
    async def go():
        sup, _, readiness, restarts = make(argv=("sh", "-c", "exit 3"), budget=1, respawn=("sh", "-c", "sleep 0.5; kill -9 $$"))
        code = await asyncio.wait_for(sup.run(), 20)
        return code, restarts, readiness.envoy_down
    code, restarts, down = asyncio.run(go())
    assert code == Exit.FAILURE and restarts == [1]
    assert down == "Envoy exited (signal=SIGKILL)"


def test_cannot_respawn_is_a_failure():
    async def go():
        sup, _, _, _ = make(argv=("sh", "-c", "exit 1"), budget=2, respawn=("/nonexistent/envoy",))
        return await asyncio.wait_for(sup.run(), 20)
    assert asyncio.run(go()) == Exit.FAILURE


def test_signal_while_waiting_to_restart_exits_at_once():
    async def go():
        sup, _, _, _ = make(argv=("sh", "-c", "exit 1"), budget=1)
        sup.s.budget.base_delay = 30
        return await _run(sup, ("signal", signal.SIGTERM), delay=0.3)
    assert asyncio.run(go()) == Exit.OK
