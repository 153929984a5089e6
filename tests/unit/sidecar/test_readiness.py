"""Istio's readiness logic (config received from xDS, not terminating, Envoy LIVE with workers started;
https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/ready/probe.go): reasons
from admin /stats text, caching, terminate, restart."""
import asyncio
import io

import pytest

from agent.sidecar import envoy, logs
from agent.sidecar.admin import AdminError, ReadinessProbe
from agent.sidecar.statelog import StateLog

CONFIG_OK = ("cluster_manager.cds.update_success: 1\ncluster_manager.cds.update_rejected: 0\n"
             "listener_manager.lds.update_success: 1\nlistener_manager.lds.update_rejected: 0\n")
LIVE = "server.state: 0\nlistener_manager.workers_started: 1\n"


@pytest.mark.parametrize("text, want", [
    (CONFIG_OK, None),
    ("", "config not received from XDS server (is Istiod running?): cds updates: 0 successful, 0 rejected; "
         "lds updates: 0 successful, 0 rejected"),
    ("cluster_manager.cds.update_rejected: 2\n", "config not received from XDS server"),
    ("cluster_manager.cds.update_success: 1\nlistener_manager.lds.update_rejected: 1\n",
     "config received from XDS server, but was rejected: cds updates: 1 successful, 0 rejected; "
     "lds updates: 0 successful, 1 rejected"),
    ("cluster_manager.cds.update_success: 3\n", "config not fully received from XDS server"),
])
def test_config_reason(text, want):
    got = envoy.config_reason(envoy.parse_stats(text))
    assert got == want if want is None else got.startswith(want)


@pytest.mark.parametrize("text, want", [
    (LIVE, None),
    ("listener_manager.workers_started: 1\n", "server.state is not yet updated"),
    ("server.state: 0\n", "listener_manager.workers_started is not yet updated"),
    ("server.state: 1\nlistener_manager.workers_started: 1\n", "server is not live, current state is: DRAINING"),
    ("server.state: 2\nlistener_manager.workers_started: 0\n", "server is not live, current state is: PRE_INITIALIZING"),
    ("server.state: 3\nlistener_manager.workers_started: 0\n", "server is not live, current state is: INITIALIZING"),
    ("server.state: 9\nlistener_manager.workers_started: 0\n", "server is not live, current state is: UNKNOWN"),
    ("server.state: 0\nlistener_manager.workers_started: 0\n", "workers have not yet started"),
])
def test_live_reason(text, want):
    got = envoy.live_reason(text)
    assert got == want if want is None else got.startswith(want)


def test_parse_stats_skips_garbage():
    assert envoy.parse_stats("a: 1\nnonsense\nb: x\nc.d: 22\n") == {"a": 1, "c.d": 22}


def test_active_connections_excludes_agent_listeners_and_workers():
    text = ("listener.0.0.0.0_15006.downstream_cx_active: 3\n"
            "listener.0.0.0.0_15006.worker_0.downstream_cx_active: 3\n"
            "listener.0.0.0.0_15001.downstream_cx_active: 2\n"
            "listener.0.0.0.0_15021.downstream_cx_active: 5\n"
            "listener.0.0.0.0_15090.downstream_cx_active: 7\n"
            "listener.admin.downstream_cx_active: 1\n"
            "listener.admin.main_thread.downstream_cx_active: 1\n"
            "listener.envoy_internal_x.downstream_cx_active: 4\n"
            "http.inbound.downstream_cx_active: 9\n")
    assert envoy.active_connections(text) == 5
    assert envoy.active_connections("") is None
    assert envoy.active_connections("listener.0.0.0.0_15006.downstream_cx_active: 0\n") == 0


class FakeAdmin:
    def __init__(self, config: str, live: str):
        self.answers = {envoy.CONFIG_STATS: config, envoy.LIVE_STATS: live}
        self.calls: list[str] = []

    async def stats(self, regex, timeout=1.0):
        self.calls.append(regex)
        answer = self.answers[regex]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _probe(admin, standalone=False):
    ready = []
    probe = ReadinessProbe(admin, standalone=standalone, on_first_ready=ready.append, process_start=100.0,
                           clock=lambda: 102.5)
    return probe, ready


async def test_ready_then_cached_forever():
    admin = FakeAdmin(CONFIG_OK, LIVE)
    probe, ready = _probe(admin)
    assert await probe.check() is None
    assert ready == [2.5]
    admin.answers = {envoy.CONFIG_STATS: "", envoy.LIVE_STATS: "server.state: 1\n"}
    assert await probe.check() is None  # both cached after the first success, as Istio does
    assert len(admin.calls) == 2


async def test_standalone_skips_the_xds_condition():
    admin = FakeAdmin("", LIVE)
    probe, _ = _probe(admin, standalone=True)
    assert await probe.check() is None
    assert admin.calls == [envoy.LIVE_STATS]


async def test_terminate_fails_at_once_after_config_check():
    probe, _ = _probe(FakeAdmin(CONFIG_OK, LIVE))
    assert await probe.check() is None
    probe.terminate("received signal: SIGTERM")
    assert await probe.check() == "server is terminated: received signal: SIGTERM"


async def test_admin_error_is_the_reason():
    probe, _ = _probe(FakeAdmin(AdminError("GET /stats: connection refused"), LIVE))
    assert await probe.check() == "GET /stats: connection refused"


async def test_envoy_down_and_restart_clear_caches():
    admin = FakeAdmin(CONFIG_OK, LIVE)
    probe, ready = _probe(admin)
    await probe.check()
    probe.envoy_down = "Envoy exited (signal=SIGKILL)"
    assert await probe.check() == "Envoy exited (signal=SIGKILL)"
    probe.envoy_restarted()
    admin.answers[envoy.CONFIG_STATS] = ""
    assert (await probe.check()).startswith("config not received")
    admin.answers[envoy.CONFIG_STATS] = CONFIG_OK
    assert await probe.check() is None
    assert ready == [2.5]  # startup duration recorded once only


class MeshStub:
    def __init__(self, control_plane=None, certificate=None, dns=None):
        self.control_plane, self.certificate, self.dns = control_plane, certificate, dns

    def dns_problem(self):
        return self.dns

    def control_plane_problem(self):
        return self.control_plane

    def certificate_problem(self):
        return self.certificate


@pytest.mark.parametrize("config, live, mesh, want", [
    # istiod unreachable: said instead of Envoy's "config not received"
    ("", LIVE, MeshStub(control_plane="control plane unreachable: refused"), "control plane unreachable: refused"),
    # no config for another reason, a certificate missing too: Envoy's reason (the certificate is not why)
    ("", LIVE, MeshStub(certificate="no certificate yet: CA down"), "config not received from XDS server"),
    # clusters in, listeners not, no certificate: the clusters wait on their secrets
    ("cluster_manager.cds.update_success: 1\n", LIVE, MeshStub(certificate="no certificate yet: CA down"),
     "no certificate yet: CA down"),
    # config in, Envoy not LIVE, no certificate
    (CONFIG_OK, "server.state: 3\nlistener_manager.workers_started: 0\n", MeshStub(certificate="no certificate yet"),
     "no certificate yet"),
    (CONFIG_OK, LIVE, MeshStub(certificate="no certificate yet"), None),  # LIVE wins: Envoy has what it needs
    (CONFIG_OK, LIVE, MeshStub(dns="istio DNS capture is turned ON and DNS lookup table is not ready yet"),
     "istio DNS capture is turned ON and DNS lookup table is not ready yet"),
])
async def test_mesh_reasons(config, live, mesh, want):
    probe = ReadinessProbe(FakeAdmin(config, live), standalone=False, on_first_ready=lambda s: None,
                           process_start=0.0, mesh=mesh)
    got = await probe.reason()
    assert got == want if want is None else got.startswith(want)


@pytest.mark.parametrize("mesh, want", [
    (MeshStub(), None), (MeshStub(certificate="no certificate yet"), "no certificate yet"),
    (MeshStub(control_plane="control plane unreachable: x"), "control plane unreachable: x")])
async def test_no_envoy_readiness_is_the_mesh_services(mesh, want):
    admin = FakeAdmin(None, None)
    probe = ReadinessProbe(admin, standalone=False, on_first_ready=lambda s: None, process_start=0.0, mesh=mesh,
                           no_envoy=True)
    assert await probe.reason() == want and admin.calls == []
    probe.terminate("received signal: SIGTERM")
    assert await probe.reason() == "server is terminated: received signal: SIGTERM"


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def lines():
    buf = io.StringIO()
    logs.configure("default:info", stream=buf)
    return lambda: [line.split("\t", 1)[1] for line in buf.getvalue().splitlines()]  # level, message


async def test_a_fast_poller_gets_changes_and_summaries_not_a_line_per_probe(lines):
    """A poller every 62.5 ms (exact in binary) for 5 s on an injected clock: 80 probes over three
    reasons and then ready. Every change is logged once; a long wait adds one summary per 30 s."""
    admin = FakeAdmin("", LIVE)
    clock = Clock()
    probe = ReadinessProbe(admin, standalone=False, on_first_ready=lambda s: None, process_start=0.0,
                           states=StateLog(every=30.0, clock=clock))
    schedule = {0: "", 20: "cluster_manager.cds.update_success: 1\n", 40: CONFIG_OK}
    for i in range(80):
        admin.answers[envoy.CONFIG_STATS] = schedule.get(i, admin.answers[envoy.CONFIG_STATS])
        if i == 40:
            admin.answers[envoy.LIVE_STATS] = "server.state: 2\nlistener_manager.workers_started: 0\n"
        if i == 60:
            admin.answers[envoy.LIVE_STATS] = LIVE
        await probe.check()
        clock.now += 0.0625
    assert [line.split(":")[0] if "NOT ready" in line else line for line in lines() if "Readiness" not in line] == [
        "warn\tEnvoy proxy is NOT ready", "warn\tEnvoy proxy is NOT ready", "warn\tEnvoy proxy is NOT ready",
        "info\tEnvoy proxy is ready"]
    got = lines()
    assert "config not received from XDS server" in got[0] and "config not fully received" in got[1]
    assert "server is not live, current state is: PRE_INITIALIZING" in got[2]
    # a terminating pod polled for a minute: the change, then a summary every 30 s
    probe.terminate("received signal: SIGTERM")
    for _ in range(961):
        await probe.check()
        clock.now += 0.0625
    tail = lines()[len(got):]
    assert tail == ["warn\tEnvoy proxy is NOT ready: server is terminated: received signal: SIGTERM",
                    "warn\tEnvoy proxy still not ready for 30s (481 probes): server is terminated: received signal: SIGTERM",
                    "warn\tEnvoy proxy still not ready for 60s (961 probes): server is terminated: received signal: SIGTERM"]


async def test_the_watch_records_the_startup_duration_without_a_probe():
    """Readiness is asked every interval until it first succeeds: the startup duration is the time to
    ready even if nobody probes (Istio's is taken by the first successful probe)."""
    clock = Clock(now=100.0)

    class SlowEnvoy(FakeAdmin):
        async def stats(self, regex, timeout=1.0):
            clock.now += 0.25  # each admin call: Envoy's start moves on
            if len(self.calls) == 6:
                self.answers = {envoy.CONFIG_STATS: CONFIG_OK, envoy.LIVE_STATS: LIVE}
            return await super().stats(regex, timeout)

    admin = SlowEnvoy("", LIVE)
    ready = []
    probe = ReadinessProbe(admin, standalone=False, on_first_ready=ready.append, process_start=100.0, clock=clock)
    await asyncio.wait_for(probe.watch(interval=0.001), 5)
    assert ready == [2.0]  # 8 admin calls of 0.25 s: 7 config checks, the last one passing, then LIVE
    assert probe.states._states == {}  # no probe was answered (nothing logged as a probe result)
    probe.start_watch()  # already ready: the task ends at once, and stopping it is harmless
    await probe.stop_watch()
    assert ready == [2.0]
