"""`pilot-agent proxy [sidecar]`: the edge of the sidecar path.

Phases, in order (each failure before Envoy starts is one line on stderr and exit 255, with no Envoy
running and no bootstrap left behind):

1. startup:  load the config, configure logs, validate probes/metrics targets, check the Envoy binary,
             bind the status port and check Envoy's ports, write the bootstrap, spawn Envoy.
             Envoy is spawned *before* aiohttp/prometheus_client are imported: Envoy's own start-up
             then overlaps the agent's imports (start-up time is what a pod waits for). structlog
             is adopted only once the pod is ready (the first lines go through the same processors
             without it, see agent.sidecar.logs); prometheus_client/psutil at the first scrape.
2. serve:    build the adapters (admin client, readiness, metrics, status server) and hand them to
             the supervisor (agent.sidecar.run), which runs until an exit path is taken.
3. cleanup:  in reverse order, each step surviving the previous one's failure: status server, HTTP
             session, Envoy (killed if still there), bootstrap file.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import time

from agent.exitcodes import Exit

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence


def _process_age() -> float:
    """Seconds since this process started (kernel start time), not since this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


#: monotonic clock value at process start: start-up durations are measured from here (as Istio does).
_T0 = time.monotonic() - _process_age()


class StartupError(Exception):
    """A start-up failure; the message is the one line printed to stderr."""


def _fail(message: str) -> int:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return Exit.USAGE


def _host_ips() -> list[str]:
    """Interface addresses of the pod's network namespace (spec §4.1): one rtnetlink dump, no process."""
    from agent.iptables.host import usable_addresses

    return usable_addresses()


def _listener_addresses(data: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(address, port, what) of every socket Envoy will bind per the bootstrap."""
    out = []
    admin = data.get("admin", {}).get("address", {}).get("socket_address", {})
    if admin.get("port_value"):
        out.append((admin.get("address", "127.0.0.1"), int(admin["port_value"]), "proxyAdminPort"))
    for lis in data.get("static_resources", {}).get("listeners", []):
        sa = lis.get("address", {}).get("socket_address", {})
        if sa.get("port_value"):
            out.append((sa.get("address", "0.0.0.0"), int(sa["port_value"]), f"listener {lis.get('name', '?')}"))
    return out


def check_port_free(address: str, port: int, what: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            raise StartupError(f"{what}: port {port} on {address} is not available: {e.strerror}") from None


def _check_binary(path: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise StartupError(f"--binaryPath: Envoy binary {path!r} not found or not executable")


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    # Start-up is mostly imports: many objects are allocated, hardly any cycle is garbage. Without the
    # cyclic collector running on every few hundred allocations the path to ready is ~5 % shorter;
    # it is back on as soon as the status server serves (_serve), and in any case on return.
    gc.disable()
    try:
        return _run(argv, environ)
    finally:
        gc.enable()


def _run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from agent import flags
    from agent.sidecar import config as sidecar_config

    args = list(argv)
    if "-h" in args or "--help" in args:
        sys.stdout.write(flags.usage("pilot-agent proxy [sidecar|router] [flags]", sidecar_config.PROXY_FLAGS))
        return Exit.OK
    try:
        cfg = sidecar_config.load(args, environ, host_ips=_host_ips())
    except (sidecar_config.ConfigError, flags.UsageError) as e:
        return _fail(str(e))
    except Exception as e:  # a config bug must still be one line and exit 255, not a traceback
        return _fail(f"invalid configuration: {type(e).__name__}: {e}")
    from agent.sidecar import logs

    # From the first side effect (the bootstrap file) on, SIGTERM/SIGINT are only recorded; the
    # supervisor replays them once its loop runs, so a pod deleted during start-up still drains and
    # cleans up instead of dying half-way (a signal before Envoy is spawned just undoes the writes).
    early: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _f: early.append(n))
    try:
        logs.parse_levels(cfg.log_output_level)  # validated now, configured once Envoy is on its way
        plan = _prepare(cfg, environ)
    except (logs.LogConfigError, StartupError) as e:
        return _fail(str(e))
    except Exception as e:  # e.g. a bootstrap the builder cannot render from odd settings
        return _fail(f"invalid configuration: {type(e).__name__}: {e}")
    if early:
        _remove(plan["bootstrap"])
        if plan["status_sock"] is not None:
            plan["status_sock"].close()
        try:
            logs.configure(cfg.log_output_level, cfg.log_as_json, cfg.log_target)
            logs.get().info("received signal before Envoy started: nothing to drain",
                            signal=signal.Signals(early[0]).name)
            logs.get().info("Agent has successfully terminated")
        except OSError:
            pass
        return Exit.OK
    return _start_and_serve(cfg, plan, early)


def _status_inputs(cfg: Any) -> tuple[dict, Any]:
    """App probers and metrics targets, validated by Istio's rules (§6.4, §6.5)."""
    from agent.sidecar import probes
    from agent.sidecar.metrics import MetricsConfigError, scrape_targets

    try:
        probers = probes.parse_probers(cfg.app_probers)
        # App metrics are merged for sidecars only, as in Istio.
        targets = scrape_targets(cfg.prometheus_annotations, cfg.status_port) \
            if cfg.proxy_type == "sidecar" else None
    except (probes.ProbeConfigError, MetricsConfigError) as e:
        raise StartupError(str(e)) from None
    return probers, targets


def _prepare(cfg: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    """Everything that can fail cleanly, in order: pure checks, then ports, then the one write."""
    from agent.sidecar import bootstrap, envoy

    probers, targets = _status_inputs(cfg)
    _check_binary(cfg.binary_path)
    data = None if cfg.custom_config_file else bootstrap.build_bootstrap(cfg)
    path = bootstrap.bootstrap_path(cfg)
    argv = envoy.envoy_args(
        cfg.binary_path, path, drain_duration=cfg.drain_duration, node_ips=cfg.instance_ips,
        file_flush_interval_ms=cfg.file_flush_interval_ms, proxy_log_level=cfg.proxy_log_level,
        proxy_component_log_level=cfg.proxy_component_log_level,
        skip_deprecated_logs=cfg.skip_deprecated_logs, enable_core_dump=cfg.enable_core_dump,
        concurrency=cfg.concurrency)
    status_sock = None
    if cfg.status_port:
        from agent.sidecar.status import bind

        try:
            status_sock = bind(cfg.status_port)
        except OSError as e:
            raise StartupError(f"--statusPort: port {cfg.status_port} is not available: {e.strerror}") from None
    try:
        addresses = _listener_addresses(data) if data else [("127.0.0.1", cfg.admin_port, "proxyAdminPort")]
        for address, port, what in addresses:
            check_port_free(address, port, what)
        if data is not None:
            bootstrap.write_bootstrap(cfg, data)
    except BaseException as e:
        if status_sock:
            status_sock.close()
        if isinstance(e, OSError):
            raise StartupError(f"--configPath: cannot write bootstrap {path}: {e.strerror or e}") from None
        raise
    return {"probers": probers, "targets": targets, "status_sock": status_sock, "argv": argv,
            "bootstrap": None if cfg.custom_config_file else path}


def _start_and_serve(cfg: Any, plan: dict[str, Any], early: list[int]) -> int:
    from agent.sidecar import logs, reaper

    try:
        proc = reaper.spawn(plan["argv"])
    except OSError as e:
        _remove(plan["bootstrap"])
        return _fail(f"--binaryPath: cannot start Envoy {cfg.binary_path!r}: {e.strerror or e}")
    try:  # structlog itself is adopted once the pod is ready (_adopt_structlog_soon)
        logs.configure(cfg.log_output_level, cfg.log_as_json, cfg.log_target, defer_structlog=True)
    except OSError as e:  # an unwritable --log_target file
        _kill_leftover(proc)
        _remove(plan["bootstrap"])
        return _fail(f"--log_target: {e}")
    log = logs.get()
    log.info("Envoy started", pid=proc.pid, argv=" ".join(plan["argv"]),
             seconds_since_start=round(time.monotonic() - _T0, 3))
    envoy_ref = [proc]
    try:
        _log_config(cfg)
        import asyncio

        code = asyncio.run(_serve(cfg, plan, envoy_ref, early))
    except BaseException as e:
        log.error("agent failed", error=repr(e))
        code = Exit.FAILURE
    finally:
        _kill_leftover(envoy_ref[0])
        _remove(plan["bootstrap"])
    return code


def _log_config(cfg: Any) -> None:
    from agent.sidecar import config as sidecar_config
    from agent.sidecar import logs

    from agent import __version__

    log = logs.get()
    for name, value in sorted(cfg.flag_values.items()):  # as Istio's proxy command does, one per flag
        log.info(f'FLAG: --{name}="{value}"')
    log.info(f"Version {__version__}")
    for warning in cfg.warnings:
        log.warning(warning)
    if cfg.unknown_flags:
        log.warning("unknown flags ignored", flags=" ".join(cfg.unknown_flags))
    log.info("Effective config", config=sidecar_config.effective_config_summary(cfg))


def _kill_leftover(proc: Any) -> None:
    """Whatever happened, no Envoy outlives the agent's return."""
    if proc is None or proc.returncode is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGKILL)
        os.waitpid(proc.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    proc.returncode = -9


def _import_aiohttp() -> None:
    """Import aiohttp without loading the system CA bundle twice (~60 ms on the start-up path).

    aiohttp.connector builds two default SSL contexts at import time, each reading the CA store.
    The agent makes no certificate-verified connection (admin, metrics and app probes are plain
    HTTP; HTTPS probes skip verification, as Istio's do), so during this one import the store is
    pointed at an empty file. The environment is restored right after.
    """
    saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    os.environ.update(SSL_CERT_FILE=os.devnull, SSL_CERT_DIR=os.devnull)
    try:
        import aiohttp.web  # noqa: F401
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _serve(cfg: Any, plan: dict[str, Any], envoy_ref: list, early_signals: list[int]) -> int:
    """Build the adapters and run the supervisor. The heavy imports happen here, while Envoy starts."""
    _import_aiohttp()
    import aiohttp

    from agent.sidecar import drain, envoy, logs, reaper
    from agent.sidecar.admin import AdminClient, ReadinessProbe
    from agent.sidecar.metrics import AgentMetrics
    from agent.sidecar.run import Supervision, Supervisor

    process_start = time.time() - (time.monotonic() - _T0)
    # The first scrape loads prometheus_client and psutil; it also finishes the logging hand-over, so
    # that a scrape right after the first ready does not overlap structlog's import.
    metrics = AgentMetrics(envoy_pid=lambda: envoy_ref[0].pid if envoy_ref[0] and envoy_ref[0].returncode is None else None,
                           on_first_use=logs.adopt_structlog)
    session = aiohttp.ClientSession(auto_decompress=True)
    admin = AdminClient(cfg.admin_port, session)
    adopt_structlog = _adopt_structlog_soon()

    def first_ready(seconds: float) -> None:
        metrics.set_startup_duration(seconds)
        adopt_structlog(0.05)  # once the 200 has gone out and its connection is closed

    readiness = ReadinessProbe(admin, standalone=cfg.standalone, process_start=process_start,
                               on_first_ready=first_ready)

    def spawn() -> reaper.EnvoyProcess:
        envoy_ref[0] = reaper.spawn(plan["argv"])
        return envoy_ref[0]

    sup = Supervisor(Supervision(
        envoy=envoy_ref[0], spawn=spawn, admin=admin, readiness=readiness,
        on_restart=lambda: metrics.envoy_restarts.inc(),  # not metrics.envoy_restarts.inc: that builds the registry now
        budget=envoy.RestartBudget(cfg.restart_budget, cfg.restart_window, base_delay=cfg.restart_backoff),
        drain_policy=drain.DrainPolicy.from_config(cfg), inbound_only=cfg.proxy_type == "sidecar",
        excluded_ports=(cfg.envoy_status_port, cfg.envoy_prometheus_port), early_signals=early_signals))
    server = None
    try:
        if plan["status_sock"] is not None:
            server = _status_server(cfg, plan, metrics, session, readiness, sup)
            await server.start()
            logs.get().info("status server listening", port=cfg.status_port)
        # The collector was off for the start-up (run). What start-up built lives as long as the agent:
        # frozen, it is not scanned again (else the first collection walks all of it, ~20 ms here).
        gc.freeze()
        gc.enable()
        adopt_structlog(STRUCTLOG_AT_THE_LATEST)
        return await sup.run()
    finally:
        for step in ((server.stop if server else None), session.close):
            if step is not None:
                try:
                    await step()
                except Exception as e:  # keep cleaning up
                    logs.get().warning("cleanup step failed", error=repr(e))


#: Seconds after the status server started by which structlog is adopted even if Envoy is not ready.
STRUCTLOG_AT_THE_LATEST = 2.0


def _adopt_structlog_soon():
    """`adopt(delay)`: hand logging over to structlog `delay` seconds from now (the earliest call wins).

    Importing structlog takes tens of milliseconds that would otherwise sit between Envoy's spawn and
    the status server's first answer; the early writer in agent.sidecar.logs prints the same lines.
    """
    import asyncio

    from agent.sidecar import logs

    loop = asyncio.get_running_loop()
    pending: list = []

    def adopt(delay: float) -> None:
        if pending and pending[0].when() <= loop.time() + delay:
            return
        if pending:
            pending.pop().cancel()
        pending.append(loop.call_later(delay, logs.adopt_structlog))

    return adopt


def _status_server(cfg: Any, plan: dict[str, Any], metrics: Any, session: Any, readiness: Any, sup: Any) -> Any:
    """The status server gets the readiness probe, the prober, the metrics and two callbacks; no more."""
    from agent.sidecar import logs
    from agent.sidecar.metrics import MetricsMerger
    from agent.sidecar.probes import AppProber
    from agent.sidecar.status import StatusDeps, StatusServer

    merger = MetricsMerger(metrics, session, log=logs.get(),
                           envoy_port=cfg.envoy_prometheus_port if cfg.merge_envoy_stats else None,
                           targets=plan["targets"])
    prober = AppProber(plan["probers"], pod_ip=cfg.instance_ip, status_port=cfg.status_port,
                       legacy_localhost=cfg.probe_legacy_localhost)
    deps = StatusDeps(readiness.check, prober, merger, sup.request_drain, sup.request_quit,
                      cfg.metrics_localhost_access_only)
    return StatusServer(deps, plan["status_sock"])
