"""`pilot-agent proxy [sidecar]`: the edge of the sidecar path, read top to bottom.

1. Load the config (one line on stderr and exit 255 on bad input; nothing touched yet).
2. `prepare(cfg, stack)` (agent.sidecar.startup): checks, the status socket, the bootstrap file.
3. Envoy's handle, on the same `ExitStack`: the stack owns the status socket, the bootstrap and
   Envoy, and undoes them in reverse order however the run ends.
4. Configure logging, then `asyncio.run(Sidecar(...).serve())` (agent.sidecar.sidecar): it starts
   the mesh services, spawns Envoy, starts the status server, and runs until an exit path of the
   supervisor is taken.

Nothing here imports aiohttp, grpc or prometheus_client: the sidecar imports each when its part of
start-up comes, so Envoy's own start overlaps what follows its spawn.
From the first side effect on, SIGTERM/SIGINT are blocked; the supervisor unblocks them once its loop
has its handlers, so a pod deleted during start-up still drains and cleans up instead of dying half-way.
"""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent import flags
from agent.exitcodes import Exit
from agent.sidecar import config as sidecar_config
from agent.sidecar import stop_signals
from agent.sidecar.config_model import SidecarConfig
from agent.sidecar.config_parse import ConfigError
from agent.sidecar.reaper import EnvoyHandle
from agent.sidecar.startup import StartupError, StartupPlan, prepare


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


def _fail(message: str) -> int:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return Exit.USAGE


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> SidecarConfig:
    from agent.iptables.host import usable_addresses  # one rtnetlink dump of the pod's addresses

    return sidecar_config.load(list(argv), environ, host_ips=usable_addresses())


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    # Start-up is mostly imports: many objects are allocated and hardly any cycle is garbage, so the
    # cyclic collector is off until the status server serves (Sidecar.startup freezes what start-up
    # built and turns it back on): 5 % of the path to ready, measured with bench/sidecar_start.py.
    gc.disable()
    try:
        return _run(argv, environ)
    finally:
        gc.enable()


def _run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(sidecar_config.usage())
        return Exit.OK
    try:
        cfg = load_config(argv, environ)
    except (ConfigError, flags.UsageError) as e:
        return _fail(str(e))
    except Exception as e:  # a config bug must still be one line and exit 255, not a traceback
        return _fail(f"invalid configuration: {type(e).__name__}: {e}")
    mask = stop_signals.hold()
    try:
        return _start(cfg)
    finally:
        stop_signals.release(mask)


def _start(cfg: SidecarConfig) -> int:
    with contextlib.ExitStack() as stack:
        try:
            plan = prepare(cfg, stack)
        except StartupError as e:
            return _fail(str(e))
        except Exception as e:  # e.g. a bootstrap the builder cannot render from odd settings
            return _fail(f"invalid configuration: {type(e).__name__}: {e}")
        if (signum := stop_signals.pending()) is not None:
            return _stopped_before_start(cfg, signum)
        envoy = stack.enter_context(EnvoyHandle(plan.envoy_argv, plan.envoy_user))
        return _serve(cfg, plan, envoy)


def _serve(cfg: SidecarConfig, plan: StartupPlan, envoy: EnvoyHandle) -> int:
    """Configure logging, then run the sidecar (agent.sidecar.sidecar spawns Envoy in its start-up)."""
    import asyncio

    # The agent forks only to exec Envoy at once; grpc's fork handlers are for children that go on
    # using grpc, and print a line on every fork while its threads run.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

    from agent.sidecar import logs
    from agent.sidecar.sidecar import Sidecar

    try:
        logs.configure(cfg.log_output_level, cfg.log_as_json, cfg.log_target)
    except OSError as e:  # an unwritable --log_target file
        return _fail(f"--log_target: {e}")
    log = logs.get()
    _log_config(cfg, log)
    _log_users(plan, log)
    sidecar = Sidecar(cfg, plan, envoy, process_t0=_T0)
    try:
        return asyncio.run(sidecar.serve())
    except StartupError as e:  # the mesh services or Envoy could not start: nothing is left running
        return _fail(str(e))
    except Exception as e:
        log.error("agent failed", error=repr(e))
        return Exit.FAILURE


def _log_users(plan: StartupPlan, log: Any) -> None:
    """What a root start decided (agent.sidecar.proxy_user): who Envoy runs as, the agent's gid."""
    user = plan.envoy_user
    if user is not None and user.why_root:
        log.warning(f"the agent runs as root: Envoy keeps uid 0 with the proxy's gid, whose connections the "
                    f"pod's capture rules let out: {user.why_root}", **user.describe())
    elif user is not None:
        log.info("the agent runs as root: Envoy runs as the proxy user, whose connections the pod's "
                 "capture rules let out", **user.describe())
    if plan.agent_gid_was is not None:
        log.info("the agent runs as root: it takes the proxy's gid, whose connections (istiod, the CA, DNS "
                 "upstreams) the pod's capture rules let out", gid=os.getgid(), gid_was=plan.agent_gid_was)


def _stopped_before_start(cfg: SidecarConfig, signum: int) -> int:
    """A signal before Envoy was spawned: nothing to drain; the stack undoes the writes."""
    from agent.sidecar import logs

    with contextlib.suppress(OSError):
        logs.configure(cfg.log_output_level, cfg.log_as_json, cfg.log_target)
        logs.get().info("received signal before Envoy started: nothing to drain", signal=signal.Signals(signum).name)
        logs.get().info("Agent has successfully terminated")
    return Exit.OK


def _log_config(cfg: SidecarConfig, log: Any) -> None:
    from agent import __version__

    for name, value in sorted(cfg.flag_values.items()):  # as Istio's proxy command does, one per flag
        log.info(f'FLAG: --{name}="{value}"')
    log.info(f"Version {__version__}")
    if cfg.binary_path != cfg.flag_values.get("binaryPath", cfg.binary_path):
        # The FLAG line shows what was asked for; say which Envoy actually runs.
        log.info(f"Envoy binary {cfg.binary_path} (the default {cfg.flag_values['binaryPath']} does not exist)")
    for warning in cfg.warnings:
        log.warning(warning)
    if cfg.unknown_flags:
        log.warning("unknown flags ignored", flags=" ".join(cfg.unknown_flags))
    log.info("Effective config", config=sidecar_config.effective_config_summary(cfg))
