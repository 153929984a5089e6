"""Envoy's admin API (adapter) and Istio's readiness prober built on it (Istio's is
https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/ready/probe.go).

The readiness reasons and stats parsing are pure functions in agent.sidecar.envoy; this module only
fetches text over HTTP and keeps the prober's small amount of state (what is cached forever, what
the agent's lifecycle says).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Callable, Protocol

import aiohttp

from agent.sidecar import envoy, in_flight, logs
from agent.sidecar.statelog import Note, StateLog

log = logs.get()


class MeshStatus(Protocol):
    """What readiness asks the mesh services (agent.sidecar.mesh.Mesh)."""

    def control_plane_problem(self) -> str | None: ...

    def certificate_problem(self) -> str | None: ...

    def dns_problem(self) -> str | None: ...


class AdminError(Exception):
    """Envoy's admin API did not answer, or answered non-200."""


class AdminClient:
    """HTTP client for Envoy's admin listener on 127.0.0.1:<proxyAdminPort>."""

    def __init__(self, port: int, session: aiohttp.ClientSession, host: str = "127.0.0.1"):
        self.base = f"http://{host}:{port}"
        self.session = session

    async def _call(self, method: str, path: str, timeout: float) -> str:
        try:
            async with self.session.request(method, self.base + path,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.text()
                if resp.status != 200:
                    raise AdminError(f"{method} {path}: HTTP status code {resp.status}")
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise AdminError(f"{method} {path}: {e or type(e).__name__}") from None

    async def stats(self, regex: str, timeout: float = 1.0) -> str:
        return await self._call("GET", f"/stats?usedonly&filter={regex}", timeout)

    async def drain_listeners(self, inbound_only: bool, skip_exit: bool = False, timeout: float = 5.0) -> None:
        query = "&".join(q for q in ("inboundonly" if inbound_only else "", "graceful",
                                     "skip_exit" if skip_exit else "") if q)
        await self._call("POST", f"/drain_listeners?{query}", timeout)

    async def active_connections(self, excluded_ports: tuple[int, ...], timeout: float = 2.0) -> int | None:
        return envoy.active_connections(await self.stats(envoy.ACTIVE_CX_STATS, timeout), excluded_ports)

    async def stop_listeners(self, inbound_only: bool, timeout: float = 5.0) -> None:
        """Close Envoy's (inbound) listeners now: nothing new is accepted, what was accepted goes on."""
        await self._call("POST", "/drain_listeners?inboundonly" if inbound_only else "/drain_listeners", timeout)

    async def in_flight_plan(self, inbound_only: bool, excluded_ports: tuple[int, ...],
                             timeout: float = 5.0) -> in_flight.Plan:
        """Which stats count what the listeners `stop_listeners` stops still serve (agent.sidecar.in_flight)."""
        configs = []
        for resource in in_flight.DUMPS:
            path = f"/config_dump?resource={resource}&mask={in_flight.mask(resource)}"
            try:
                configs += in_flight.listeners(resource, json.loads(await self._call("GET", path, timeout)))
            except ValueError as e:  # not JSON
                raise AdminError(f"GET {path}: {e}") from None
        return in_flight.plan(configs, inbound_only, excluded_ports)

    async def listener_counts(self, plan: in_flight.Plan, timeout: float = 2.0) -> in_flight.Counts:
        return in_flight.count(envoy.parse_stats(await self.stats(in_flight.STATS, timeout)), plan)


class ReadinessProbe:
    """`await check()` -> None when ready, else Istio's reason text. Probers in Istio's order:

    1. config received from xDS (skipped in standalone mode; cached forever after the first success);
    2. the agent is not terminating (`server is terminated: <cause>`) and Envoy is running;
    3. Envoy LIVE with workers started (cached forever after the first success).
    `envoy_restarted()` clears both caches: a new Envoy must get its config and go LIVE again.

    With the mesh services (`mesh`), a failing step says why when the agent knows better than Envoy's
    stats: `control plane unreachable: <why>` while Envoy waits for config, `no certificate yet: <why>`
    while it waits on its secrets (beyond Istio, whose reasons only quote Envoy's stats). With
    `no_envoy` (DISABLE_ENVOY) the agent is ready when it has a certificate and reaches istiod.

    `check()` (the status server's) logs a change of state once and, while not ready, a summary every
    30 s (`states`), whatever the callers' rate. `watch()` asks until the first success, so the
    startup duration is the time to ready, not to the first probe after it (Istio records it in the
    probe, to within kubelet's probe period).
    """

    def __init__(self, admin: AdminClient, *, standalone: bool, on_first_ready: Callable[[float], None],
                 process_start: float, clock: Callable[[], float] = time.time, mesh: MeshStatus | None = None,
                 no_envoy: bool = False, states: StateLog | None = None):
        self.admin = admin
        self.standalone = standalone
        self.on_first_ready = on_first_ready
        self.process_start = process_start
        self.clock = clock
        self.mesh = mesh
        self.no_envoy = no_envoy
        self.terminated: str | None = None
        self.envoy_down: str | None = None
        self._config_ok = standalone
        self._live_ok = False
        self._ever_ready = False
        self.states = states or StateLog()
        self._watch: asyncio.Task | None = None

    def terminate(self, cause: str) -> None:
        self.terminated = cause

    def envoy_restarted(self) -> None:
        self._config_ok = self.standalone
        self._live_ok = False
        self.envoy_down = None

    def _mesh_problem(self, which: str) -> str | None:
        if self.mesh is None:
            return None
        return self.mesh.control_plane_problem() if which == "config" else self.mesh.certificate_problem()

    async def reason(self) -> str | None:
        if self.no_envoy:
            why = (f"server is terminated: {self.terminated}" if self.terminated else
                   self._mesh_problem("certificate") or self._mesh_problem("config") or
                   (self.mesh.dns_problem() if self.mesh else None))
            return why or self._ready()
        if not self._config_ok:
            try:
                why = envoy.config_reason(envoy.parse_stats(await self.admin.stats(envoy.CONFIG_STATS, 1.0)))
            except AdminError as e:
                return str(e)
            if why:
                problem = self._mesh_problem("config")
                if problem is None and why.startswith("config not fully received"):
                    # clusters in, listeners not: Envoy asks for listeners once its clusters have their secrets
                    problem = self._mesh_problem("certificate")
                return problem or why
            self._config_ok = True
        if self.terminated:
            return f"server is terminated: {self.terminated}"
        if self.envoy_down:
            return self.envoy_down
        if not self._live_ok:
            try:
                why = envoy.live_reason(await self.admin.stats(envoy.LIVE_STATS, 3.0))
            except AdminError as e:
                return str(e)
            if why:
                return self._mesh_problem("certificate") or why
            self._live_ok = True
        if self.mesh is not None and (why := self.mesh.dns_problem()):
            return why
        return self._ready()

    def _ready(self) -> None:
        if not self._ever_ready:
            self._ever_ready = True
            took = self.clock() - self.process_start
            self.on_first_ready(took)
            log.info(f"Readiness succeeded in {took:.3f}s", startup_duration_seconds=round(took, 3))
        return None

    async def check(self) -> str | None:
        why = await self.reason()
        report = self.states.observe("readiness", why, repeat=why is not None)
        if report is None:
            return why
        if report.note is Note.STILL:
            log.warning(f"Envoy proxy still not ready for {report.seconds:.0f}s ({report.checks} probes): {why}")
        elif why:
            log.warning(f"Envoy proxy is NOT ready: {why}")
        else:
            log.info("Envoy proxy is ready")
        return why

    async def watch(self, interval: float = 0.1, slow_after: float = 30.0) -> None:
        """Ask every `interval` seconds until the first success (which records the startup duration);
        every second once `slow_after` seconds have passed (a pod that stays unready for long, its
        control plane down, should not cost ten admin requests a second)."""
        loop = asyncio.get_running_loop()
        slow_at = loop.time() + slow_after
        while not self._ever_ready:
            await self.reason()
            if not self._ever_ready:
                await asyncio.sleep(interval if loop.time() < slow_at else max(interval, 1.0))

    def start_watch(self) -> None:
        self._watch = asyncio.create_task(self.watch(), name="readiness watch")

    async def stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
