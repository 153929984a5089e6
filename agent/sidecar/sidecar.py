"""The running sidecar: `startup()`, `main_loop()`, `shutdown()`, in uvicorn's `Server` shape.

    code = asyncio.run(Sidecar(cfg, plan, envoy, process_t0=t0).serve())

- `startup()`, in this order:
  1. the mesh services Envoy needs before it starts: secret manager, SDS server, xDS proxy
     (agent.sidecar.mesh; not in standalone mode);
  2. Envoy is spawned (not with DISABLE_ENVOY);
  3. the status server, with the admin client, readiness, metrics and the supervisor.
  Each service registers its own cleanup once on one `AsyncExitStack` (`self.services`). A new
  start-up service goes here: start it, then `self.on_shutdown("what", its_stop)`.
  The imports follow the same order (grpc and Envoy's messages, then aiohttp and prometheus_client),
  inside `startup()`: Envoy is spawned as soon as the sockets it dials listen, and its own start
  overlaps the heaviest import, aiohttp's.
- `main_loop()` is the supervisor (agent.sidecar.supervisor): it returns once Envoy has stopped,
  drained or not, with the exit code.
- `shutdown()` unwinds the stack in reverse order of start; a failing step is logged and the rest
  still run. Envoy has stopped by then, so the services Envoy needs (SDS, xDS) outlive its drain.

Envoy's handle and the resources taken before `asyncio.run` (status socket, bootstrap file) belong
to the edge's `ExitStack` (agent.sidecar.command), which outlives this object.
"""
from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agent.sidecar import logs
from agent.sidecar.config_model import SidecarConfig
from agent.sidecar.reaper import EnvoyHandle
from agent.sidecar.startup import StartupError, StartupPlan

if TYPE_CHECKING:
    import aiohttp

    from agent.sidecar.admin import AdminClient
    from agent.sidecar.mesh import Mesh
    from agent.sidecar.status import StatusDeps

log = logs.get()


class Sidecar:
    def __init__(self, cfg: SidecarConfig, plan: StartupPlan, envoy_handle: EnvoyHandle, *,
                 process_t0: float) -> None:
        self.cfg = cfg
        self.plan = plan
        self.envoy = envoy_handle
        self.process_t0 = process_t0  # when the agent's process started, on the monotonic clock
        self.process_start = time.time() - (time.monotonic() - process_t0)  # the same, wall clock
        self.services = contextlib.AsyncExitStack()
        self.mesh: Mesh | None = None

    async def serve(self) -> int:
        try:
            await self.startup()
            return await self.main_loop()
        finally:
            await self.shutdown()

    def on_shutdown(self, what: str, stop: Callable[[], Awaitable[object]]) -> None:
        """Register a service's cleanup; it runs in reverse order of registration, failures logged."""
        async def quietly() -> None:
            try:
                await stop()
            except Exception as e:  # keep cleaning up
                log.warning("cleanup step failed", step=what, error=repr(e))

        self.services.push_async_callback(quietly)

    async def startup(self) -> None:
        if not self.cfg.standalone:
            from agent.sidecar.mesh import start_mesh

            self.mesh = await start_mesh(self.cfg, self.on_shutdown)
        if not self.cfg.mesh.disable_envoy:
            self._spawn_envoy()
        elif path := self.cfg.mesh.grpc_xds_bootstrap:
            from agent.sidecar import grpc_bootstrap

            try:
                grpc_bootstrap.write(self.cfg, path)
            except OSError as e:
                raise StartupError(f"GRPC_XDS_BOOTSTRAP: cannot write {path}: {e.strerror or e}") from None
            log.info("gRPC xDS bootstrap written", path=path)
        await self._start_status()
        # The edge turned the cyclic collector off for start-up. What start-up built lives as long as
        # the agent: frozen, the collector never scans it again (the first collection would walk all of it).
        gc.freeze()
        gc.enable()

    def _spawn_envoy(self) -> None:
        try:
            proc = self.envoy.spawn()
        except OSError as e:
            raise StartupError(f"--binaryPath: cannot start Envoy {self.cfg.binary_path!r}: {e.strerror or e}") from None
        log.info("Envoy started", pid=proc.pid, argv=" ".join(self.plan.envoy_argv),
                 seconds_since_start=round(time.monotonic() - self.process_t0, 3))

    async def _start_status(self) -> None:
        from agent.sidecar.http import import_aiohttp

        import_aiohttp()  # before anything else imports it (see agent.sidecar.http)
        import aiohttp

        from agent.sidecar import drain, envoy
        from agent.sidecar.admin import AdminClient, ReadinessProbe
        from agent.sidecar.drainer import Drainer, MonotonicClock
        from agent.sidecar.http import plain_connector
        from agent.sidecar.metrics import AgentMetrics
        from agent.sidecar.status import StatusServer
        from agent.sidecar.supervisor import Supervision, Supervisor

        cfg = self.cfg
        session = aiohttp.ClientSession(connector=plain_connector(), auto_decompress=True)
        self.on_shutdown("HTTP session", session.close)
        self.metrics = AgentMetrics(envoy_pid=lambda: self.envoy.pid, mesh=self.mesh)
        admin = AdminClient(cfg.admin_port, session)
        self.readiness = ReadinessProbe(admin, standalone=cfg.standalone, process_start=self.process_start,
                                        on_first_ready=self.metrics.set_startup_duration, mesh=self.mesh,
                                        no_envoy=cfg.mesh.disable_envoy)
        self.readiness.start_watch()  # the startup duration is the time to ready, probed or not
        self.on_shutdown("readiness watch", self.readiness.stop_watch)
        self.supervisor = Supervisor(Supervision(
            envoy=self.envoy, admin=admin, readiness=self.readiness,
            drainer=Drainer(admin, drain.DrainPolicy.from_config(cfg), inbound_only=cfg.proxy_type == "sidecar",
                            excluded_ports=(cfg.envoy_status_port, cfg.envoy_prometheus_port),
                            clock=MonotonicClock()),
            on_restart=self.metrics.envoy_restarts.inc,
            budget=envoy.RestartBudget(cfg.restart_budget, cfg.restart_window, base_delay=cfg.restart_backoff)))
        if self.plan.status_sock is not None:
            server = StatusServer(self._status_deps(session, admin), self.plan.status_sock)
            await server.start()
            self.on_shutdown("status server", server.stop)
            log.info("status server listening", port=cfg.status_port)

    def _status_deps(self, session: aiohttp.ClientSession, admin: AdminClient) -> StatusDeps:
        """The status server gets the readiness probe, the prober, the metrics and two callbacks; no more."""
        from agent.sidecar.metrics import MetricsMerger
        from agent.sidecar.probes import AppProber
        from agent.sidecar.status import StatusDeps

        cfg = self.cfg
        merger = MetricsMerger(self.metrics, session, log=log,
                               envoy_port=cfg.envoy_prometheus_port if cfg.merge_envoy_stats and not
                               cfg.mesh.disable_envoy else None, targets=self.plan.targets)
        prober = AppProber(self.plan.probers, pod_ip=cfg.instance_ip, status_port=cfg.status_port,
                           legacy_localhost=cfg.probe_legacy_localhost)
        return StatusDeps(self.readiness.check, prober, merger, self.supervisor.request_drain,
                          self.supervisor.request_quit, cfg.metrics_localhost_access_only)

    async def main_loop(self) -> int:
        return await self.supervisor.run()

    async def shutdown(self) -> None:
        await self.services.aclose()
