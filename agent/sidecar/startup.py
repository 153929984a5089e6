"""Everything before Envoy is spawned: the checks that can fail cleanly, and the start-up plan.

`prepare(cfg, stack)` validates what Envoy and the status server will need, binds the status port,
checks Envoy's ports, decides who Envoy runs as (the proxy user when the agent is root:
agent.sidecar.proxy_user) and that this user reaches what Envoy opens (in mesh mode a root agent
takes the proxy's gid itself), and writes the bootstrap;
each resource it takes is registered on the caller's
`ExitStack`, so a failure at any step (or the end of the run) undoes exactly what was done. A
failure is a `StartupError` whose message is the one line the edge prints.

This module runs on the path from `exec` to Envoy's spawn: it imports only what that path needs
(no aiohttp, structlog or prometheus_client), so that Envoy's own start overlaps their imports.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.logformat import LogConfigError, parse_levels
from agent.sidecar import bootstrap, envoy, proxy_user
from agent.sidecar.config_env import WORKLOAD_IDENTITY_DIR
from agent.sidecar.config_model import SidecarConfig
from agent.sidecar.probe_config import ProbeConfigError, Prober, parse_probers
from agent.sidecar.proxy_user import ProxyUser
from agent.sidecar.scrape import MetricsConfigError, Target, scrape_targets


class StartupError(Exception):
    """A start-up failure; the message is the one line printed to stderr."""


@dataclass(frozen=True, slots=True)
class StartupPlan:
    """What start-up decided, for the running sidecar."""

    envoy_argv: list[str]
    probers: dict[str, Prober]
    targets: list[Target] | None  # app metrics to merge; None: none
    status_sock: socket.socket | None  # bound and listening; None with --statusPort 0
    envoy_user: ProxyUser | None = None  # who Envoy runs as; None: the agent's own user
    agent_gid_was: int | None = None  # the agent (root, mesh mode) took the proxy's gid instead of this one


def prepare(cfg: SidecarConfig, stack: contextlib.ExitStack) -> StartupPlan:
    """Pure checks first, then the status port, then Envoy's: binary, ports, the one write (the bootstrap)."""
    try:
        parse_levels(cfg.log_output_level)
        probers = parse_probers(cfg.app_probers)
        # App metrics are merged for sidecars only, as in Istio.
        targets = scrape_targets(cfg.prometheus_annotations, cfg.status_port) if cfg.proxy_type == "sidecar" else None
    except (LogConfigError, ProbeConfigError, MetricsConfigError) as e:
        raise StartupError(str(e)) from None
    status_sock = None
    if cfg.status_port:
        try:
            status_sock = stack.enter_context(bind_status(cfg.status_port))
        except OSError as e:
            raise StartupError(f"--statusPort: port {cfg.status_port} is not available: {e.strerror}") from None
    path = bootstrap.bootstrap_path(cfg)
    user = gid_was = None
    if not cfg.mesh.disable_envoy:  # proxyless (DISABLE_ENVOY): no binary, no bootstrap, no ports of Envoy's
        user = proxy_user.for_agent()
        if user is not None and not cfg.standalone:  # before anything is written: it can fail
            try:
                gid_was = proxy_user.take_gid(user.gid)
            except OSError as e:  # no CAP_SETGID: Envoy could not be given the proxy's ids either
                raise StartupError(f"the agent runs as root with gid {os.getgid()} and cannot take the proxy's "
                                   f"gid {user.gid}: {e.strerror}; run it with gid {user.gid}") from None
        user = _prepare_envoy(cfg, path, stack, user)
    return StartupPlan(envoy.envoy_args(
        cfg.binary_path, path, drain_duration=cfg.drain_duration, node_ips=cfg.instance_ips,
        file_flush_interval_ms=cfg.file_flush_interval_ms, proxy_log_level=cfg.proxy_log_level,
        proxy_component_log_level=cfg.proxy_component_log_level,
        skip_deprecated_logs=cfg.skip_deprecated_logs, enable_core_dump=cfg.enable_core_dump,
        concurrency=cfg.concurrency), probers, targets, status_sock, user, gid_was)


def _prepare_envoy(cfg: SidecarConfig, path: str, stack: contextlib.ExitStack,
                   user: ProxyUser | None) -> ProxyUser | None:
    """Checks and writes for Envoy; returns who it runs as (None: the agent's own user)."""
    _check_binary(cfg.binary_path)
    data = None if cfg.custom_config_file else bootstrap.build_bootstrap(cfg)
    for address, port, what in listener_addresses(data) if data else [("127.0.0.1", cfg.admin_port, "proxyAdminPort")]:
        check_port_free(address, port, what)
    if user is not None:
        user = _prepare_for_user(cfg, user, stack)
    if data is not None:
        try:
            bootstrap.write_bootstrap(cfg, data)
        except OSError as e:
            raise StartupError(f"--configPath: cannot write bootstrap {path}: {e.strerror or e}") from None
        stack.callback(_remove, path)
    return user


def _check_binary(path: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise StartupError(f"--binaryPath: Envoy binary {path!r} not found or not executable")


def _prepare_for_user(cfg: SidecarConfig, user: ProxyUser, stack: contextlib.ExitStack) -> ProxyUser:
    """Envoy is to run as `user`: what it opens by path must be reachable by that uid. The
    directories the agent writes Envoy's files and sockets into are created owned by it (as the
    pod's emptyDirs are the proxy's); existing paths are checked, never changed. Where the uid
    cannot reach one (a root-only directory), Envoy keeps uid 0 with the proxy's gid instead
    (`ProxyUser.keeping_root`), which the capture rules exempt too, and nothing is created."""
    files = [(cfg.binary_path, os.X_OK, "--binaryPath")]
    if cfg.custom_config_file:
        files.append((cfg.custom_config_file, os.R_OK, "--customConfigFile"))
    dirs = [] if cfg.custom_config_file else [(cfg.config_path, "--configPath")]
    if not cfg.standalone:  # the mesh services' sockets: the xDS proxy's and the SDS server's
        dirs += [(os.path.dirname(cfg.xds_socket_path) or ".", "--configPath (XDS socket)"),
                 (WORKLOAD_IDENTITY_DIR, "the SDS socket directory")]
    for path, want, what in files + [(_missing_dirs(d)[0], os.X_OK, what) for d, what in dirs]:
        if (why := proxy_user.reachable(path, user.uid, user.gid, want)) is not None:
            return user.keeping_root(f"uid {user.uid} cannot reach {what} {path}: {why}")
    for path, what in dirs:
        _make_dirs(user, path, what, stack)
    stack.callback(proxy_user.give_back_stdio, proxy_user.hand_over_stdio(user))
    return user


def _missing_dirs(path: str) -> tuple[str, list[str]]:
    """The part of `path` that exists, and the directories below it still to make, top down."""
    missing, base = [], os.path.abspath(path)
    while not os.path.exists(base):
        missing.append(base)
        base = os.path.dirname(base)
    return base, missing[::-1]


def _make_dirs(user: ProxyUser, path: str, what: str, stack: contextlib.ExitStack) -> None:
    """The missing part of `path` made, owned by the proxy's uid (its existing part is reachable);
    each removed again on the way out if it is empty then (a failed start leaves none behind)."""
    for directory in _missing_dirs(path)[1]:
        try:
            os.mkdir(directory, 0o700)
        except OSError as e:
            raise StartupError(f"{what}: cannot create {directory}: {e.strerror or e}") from None
        stack.callback(_rmdir, directory)
        try:
            os.chown(directory, user.uid, user.gid)
        except OSError as e:
            raise StartupError(f"{what}: cannot give {directory} to uid {user.uid}: {e.strerror or e}") from None


def _rmdir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def listener_addresses(data: Mapping[str, Any]) -> list[tuple[str, int, str]]:
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
    """Envoy fails late and obscurely on a taken port; the agent says which one, before spawning it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            raise StartupError(f"{what}: port {port} on {address} is not available: {e.strerror}") from None


def bind_status(port: int) -> socket.socket:
    """Bind the status port before Envoy starts, so 'port in use' fails start-up cleanly.

    Dual-stack (`[::]:port` with IPV6_V6ONLY off) like Go's `:15020`; IPv4-only hosts fall back.
    """
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        addr = ("0.0.0.0", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
