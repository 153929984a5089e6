"""What the agent knows about Envoy, as pure functions (no processes, sockets or environment).

- `envoy_args()`: Envoy's argv, exactly as Istio builds it (https://github.com/istio/istio/blob/master/pkg/envoy/proxy.go).
- `parse_stats()` / `config_reason()` / `live_reason()`: Istio's readiness checks over admin `/stats`
  text (https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/ready/probe.go).
- `active_connections()`: the exit-on-zero sum over `downstream_cx_active` (https://github.com/istio/istio/blob/master/pkg/envoy/agent.go).
- `describe_exit()`: how an Envoy exit status is logged (SIGKILL probably means out of memory, as
  Istio's agent says).
- `RestartBudget`: beyond Istio, at most N restarts in a sliding window, with exponential backoff.
"""
from __future__ import annotations

import ipaddress
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Admin /stats filters Istio's readiness prober uses.
CONFIG_STATS = r"^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)$"
LIVE_STATS = r"^(server\.state|listener_manager\.workers_started)"
ACTIVE_CX_STATS = r"downstream_cx_active$"

SERVER_STATES = {1: "DRAINING", 2: "PRE_INITIALIZING", 3: "INITIALIZING"}


def split_log_level(proxy_log_level: str, component_log_level: str = "") -> tuple[str, str]:
    """'info,misc:error,upstream:debug' -> ('info', 'misc:error,upstream:debug').

    The last plain level wins; component parts of --proxyLogLevel take precedence over the
    deprecated --proxyComponentLogLevel, which is used only when there are none.
    """
    level, components = "", []
    for part in filter(None, (p.strip() for p in proxy_log_level.split(","))):
        if ":" in part:
            components.append(part)
        else:
            level = part
    return level, ",".join(components) if components else component_log_level


def _all_ipv6(ips: Iterable[str]) -> bool:
    parsed = []
    for ip in ips:
        try:
            parsed.append(ipaddress.ip_address(ip))
        except ValueError:
            continue
    return bool(parsed) and all(p.version == 6 for p in parsed)


def envoy_args(
    binary: str,
    bootstrap_path: str,
    *,
    drain_duration: float = 45.0,
    node_ips: Sequence[str] = (),
    file_flush_interval_ms: int = 1000,
    proxy_log_level: str = "warning",
    proxy_component_log_level: str = "",
    skip_deprecated_logs: bool = True,
    enable_core_dump: bool = False,
    concurrency: int = 0,
) -> list[str]:
    """Envoy's command line in Istio's exact order (pkg/envoy/proxy.go). No `--config-yaml`: the
    ISTIO_BOOTSTRAP_OVERRIDE file is merged into the bootstrap itself (agent.sidecar.bootstrap)."""
    args = [binary, "-c", bootstrap_path,
            "--drain-time-s", str(int(drain_duration)),
            "--drain-strategy", "immediate",
            "--local-address-ip-version", "v6" if _all_ipv6(node_ips) else "v4",
            "--file-flush-interval-msec", str(int(file_flush_interval_ms)),
            "--disable-hot-restart",
            "--allow-unknown-static-fields"]
    level, components = split_log_level(proxy_log_level, proxy_component_log_level)
    if level:
        args += ["-l", level]
    if components:
        args += ["--component-log-level", components]
    if skip_deprecated_logs:
        args.append("--skip-deprecated-logs")
    if enable_core_dump:
        args.append("--enable-core-dump")
    if concurrency > 0:
        args += ["--concurrency", str(concurrency)]
    return args


# ---------------------------------------------------------------------------------------------
# Admin /stats parsing and Istio's readiness reasons


def parse_stats(text: str) -> dict[str, int]:
    """'name: value' lines -> {name: value}; lines that do not parse are skipped (as Istio does)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            out[name.strip()] = int(value.strip())
        except ValueError:
            continue
    return out


def config_reason(stats: dict[str, int]) -> str | None:
    """None when CDS and LDS have both been accepted at least once; else Istio's reason text."""
    cds_ok = stats.get("cluster_manager.cds.update_success", 0)
    cds_bad = stats.get("cluster_manager.cds.update_rejected", 0)
    lds_ok = stats.get("listener_manager.lds.update_success", 0)
    lds_bad = stats.get("listener_manager.lds.update_rejected", 0)
    if cds_ok > 0 and lds_ok > 0:
        return None
    summary = (f"cds updates: {cds_ok} successful, {cds_bad} rejected; "
               f"lds updates: {lds_ok} successful, {lds_bad} rejected")
    if cds_ok == 0 and lds_ok == 0:
        return f"config not received from XDS server (is Istiod running?): {summary}"
    if cds_bad > 0 or lds_bad > 0:
        return f"config received from XDS server, but was rejected: {summary}"
    return f"config not fully received from XDS server: {summary}"


def live_reason(text: str) -> str | None:
    """None when server.state is LIVE (0) and workers have started; else Istio's reason text."""
    if "server.state" not in text:
        return f"server.state is not yet updated: {text.strip()}"
    if "listener_manager.workers_started" not in text:
        return f"listener_manager.workers_started is not yet updated: {text.strip()}"
    stats = parse_stats(text)
    state = stats.get("server.state", -1)
    if state != 0:
        return f"server is not live, current state is: {SERVER_STATES.get(state, 'UNKNOWN')}"
    if stats.get("listener_manager.workers_started", 0) != 1:
        return "workers have not yet started"
    return None


def active_connections(text: str, excluded_ports: Iterable[int] = (15021, 15090)) -> int | None:
    """Sum of listener downstream_cx_active, minus the agent's own listeners (15021, 15090, admin).

    Returns None when the stat is absent altogether (an empty body): the caller stops waiting.
    """
    if not text.strip():
        return None
    excluded = {f"listener.0.0.0.0_{p}.downstream_cx_active" for p in excluded_ports}
    excluded |= {"listener.admin.downstream_cx_active", "listener.admin.main_thread.downstream_cx_active"}
    total = 0
    for name, value in parse_stats(text).items():
        if (not name.startswith("listener.") or "worker_" in name or name in excluded
                or name.startswith("listener.envoy_internal_")):
            continue
        total += value
    return total


# ---------------------------------------------------------------------------------------------
# Exits and restarts (beyond Istio)


def describe_exit(exit_code: int) -> dict[str, Any]:
    """os.waitstatus_to_exitcode() result -> log fields: code or signal, with Istio's OOM hint."""
    if exit_code >= 0:
        return {"code": exit_code}
    signum = -exit_code
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = str(signum)
    fields: dict[str, Any] = {"signal": name}
    if signum == signal.SIGKILL:
        fields["hint"] = "Envoy may have been out of memory killed. Check memory usage and limits."
    return fields


@dataclass(slots=True)
class RestartBudget:
    """At most `limit` restarts within `window` seconds. limit 0 = Istio's behaviour (never restart).

    Each restart waits `base_delay` doubled per restart already in the window, at most `max_delay`.
    """

    limit: int = 3
    window: float = 600.0
    base_delay: float = 0.5
    max_delay: float = 10.0
    history: list[float] = field(default_factory=list)  # times of the restarts within the window

    def allow(self, now: float) -> bool:
        self.history = [t for t in self.history if now - t < self.window]
        return len(self.history) < self.limit

    def record(self, now: float) -> float:
        """Record a restart at `now`; returns the backoff delay to wait before it."""
        self.history.append(now)
        return min(self.max_delay, self.base_delay * 2 ** (len(self.history) - 1))
