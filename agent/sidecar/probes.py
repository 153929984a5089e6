"""Forwarded application probes: `/app-health/<container>/{livez,readyz,startupz}` (spec §6.4).

The injector moved the app's httpGet/tcpSocket probes into ISTIO_KUBE_APP_PROBERS and pointed kubelet
at the agent. The agent probes the app at the pod IP from source 127.0.0.6: istio-iptables exempts
that source on loopback, so the probe reaches the app directly instead of looping through Envoy's
inbound listener (and it still works under STRICT mTLS, which kubelet's plain probe would not).

aiohttp is imported on first use: this module is also used at start-up (validation), before Envoy
is spawned, where import time counts.

gRPC probes are accepted in the config but answered 500 with a reason: they need an HTTP/2 client,
which the agent does not carry (grpcio is a test-only dependency).
"""
from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

from agent.sidecar import logs

log = logs.lazy("probes")

PATH_RE = re.compile(r"^/(app-health|app-lifecycle)/[^/]+/(livez|readyz|startupz|prestopz|poststartz)$")
BODY_LIMIT = 10 * 1024
MAX_REDIRECTS = 10


class ProbeConfigError(ValueError):
    """A malformed ISTIO_KUBE_APP_PROBERS entry; the message names the setting."""


@dataclass(frozen=True)
class Prober:
    kind: str  # "http", "tcp" or "grpc"
    port: int
    path: str = "/"
    scheme: str = "http"
    timeout: float = 1.0  # 0 = no timeout


@dataclass(frozen=True)
class ProbeResult:
    status: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)


def _port(key: str, spec: Mapping[str, Any]) -> int:
    port = spec.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: the port must be int type, got {port!r}")
    return port


def _timeout(key: str, value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: timeoutSeconds must be a number, got {value!r}")
    return float(value)


def parse_probers(probers: Mapping[str, Any]) -> dict[str, Prober]:
    """The decoded ISTIO_KUBE_APP_PROBERS object -> {path: Prober}. Raises ProbeConfigError."""
    out: dict[str, Prober] = {}
    if not isinstance(probers, Mapping):
        raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: expected an object, got {probers!r}")
    for key, probe in probers.items():
        if not isinstance(key, str) or not PATH_RE.match(key):
            raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: invalid path {key!r}")
        kinds = [k for k in ("httpGet", "tcpSocket", "grpc") if isinstance(probe, Mapping) and probe.get(k) is not None]
        if len(kinds) != 1:
            raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: invalid prober type, "
                                   "must be one of type httpGet, tcpSocket or gRPC")
        spec = probe[kinds[0]]
        if not isinstance(spec, Mapping):
            raise ProbeConfigError(f"invalid ISTIO_KUBE_APP_PROBERS: {key}: {kinds[0]} must be an object, got {spec!r}")
        timeout = _timeout(key, probe.get("timeoutSeconds"))
        if kinds[0] == "httpGet":
            path = str(spec.get("path") or "/")
            out[key] = Prober("http", _port(key, spec), path if path.startswith("/") else "/" + path,
                              str(spec.get("scheme") or "HTTP").lower(), timeout)
        elif kinds[0] == "tcpSocket":
            out[key] = Prober("tcp", _port(key, spec), timeout=timeout)
        else:
            out[key] = Prober("grpc", _port(key, spec), timeout=timeout)
    return out


def map_status(status: int | None, redirect_elsewhere: bool = False) -> int:
    """App answer -> what kubelet sees: transport error 500, a final 3xx 200, else verbatim."""
    if status is None:
        return 500
    if redirect_elsewhere or 300 <= status < 400:
        return 200
    return status


def forward_headers(incoming: Mapping[str, str], status_port: int, app_port: int) -> dict[str, str]:
    """Copy kubelet's headers; a Host naming the status port is pointed at the app port instead."""
    out = {k: v for k, v in incoming.items() if k.lower() not in ("connection", "content-length", "accept-encoding")}
    host = incoming.get("Host", "")
    name, sep, port = host.rpartition(":")
    if sep and port == str(status_port):
        out["Host"] = f"{name}:{app_port}"
    out["Connection"] = "close"
    return out


def _linger(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 1))


class AppProber:
    """Runs the configured probes against the app. One instance per agent."""

    def __init__(self, probers: Mapping[str, Prober], *, pod_ip: str, status_port: int,
                 legacy_localhost: bool = False):
        self.probers = dict(probers)
        self.dest = "localhost" if legacy_localhost else (pod_ip or "127.0.0.1")
        self.source = "::6" if ":" in self.dest else "127.0.0.6"
        self.status_port = status_port

    async def probe(self, path: str, headers: Mapping[str, str]) -> ProbeResult:
        prober = self.probers.get(path)
        if prober is None:
            return ProbeResult(400, f"app prober config does not exists for {path}".encode())
        if prober.kind == "tcp":
            result = await self._tcp(prober)
        elif prober.kind == "http":
            result = await self._http(prober, headers)
        else:
            result = ProbeResult(500, b"gRPC probes are not supported by this agent")
        level = log.info if result.status < 400 else log.error
        level("app probe", path=path, kind=prober.kind, port=prober.port, status=result.status)
        return result

    async def _tcp(self, prober: Prober) -> ProbeResult:
        import asyncio

        try:
            conn = asyncio.open_connection(self.dest, prober.port, local_addr=(self.source, 0))
            _, writer = await asyncio.wait_for(conn, prober.timeout or None)
        except (OSError, TimeoutError) as e:
            return ProbeResult(500, f"tcp probe failed: {e or type(e).__name__}".encode())
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _linger(sock)
        writer.close()
        return ProbeResult(200)

    async def _http(self, prober: Prober, incoming: Mapping[str, str]) -> ProbeResult:
        import aiohttp

        host = f"[{self.dest}]" if ":" in self.dest else self.dest
        url = f"{prober.scheme}://{host}:{prober.port}{prober.path}"
        headers = forward_headers(incoming, self.status_port, prober.port)
        connector = aiohttp.TCPConnector(local_addr=(self.source, 0), force_close=True, ssl=False)
        timeout = aiohttp.ClientTimeout(total=prober.timeout or None)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                             auto_decompress=False) as session:
                return await self._follow(session, url, headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return ProbeResult(500, f"http probe failed: {e or type(e).__name__}".encode())

    async def _follow(self, session: "aiohttp.ClientSession", url: str, headers: dict) -> ProbeResult:
        from yarl import URL

        from agent.sidecar.metrics import read_capped

        origin = URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                body = await read_capped(resp.content, BODY_LIMIT)
                location = resp.headers.get("Location")
                if 300 <= resp.status < 400 and location:
                    target = origin.join(URL(location))
                    if target.host != origin.host:
                        return ProbeResult(map_status(resp.status, redirect_elsewhere=True))
                    url = str(target)
                    continue
                ctype = resp.headers.get("Content-Type")
                return ProbeResult(map_status(resp.status), body, {"Content-Type": ctype} if ctype else {})
        return ProbeResult(500, f"stopped after {MAX_REDIRECTS} redirects".encode())
