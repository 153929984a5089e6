"""Forwarded application probes and lifecycle hooks: `/app-health/<container>/{livez,readyz,startupz}`
and `/app-lifecycle/<container>/{prestopz,poststartz}` (Istio's `handleAppProbe` in
https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/server.go).

The injector moved the app's httpGet/tcpSocket/grpc probes and HTTP/TCP lifecycle hooks into
ISTIO_KUBE_APP_PROBERS and pointed kubelet at the agent. The agent probes the app at the pod IP
(INSTANCE_IP) from source 127.0.0.6: istio-iptables exempts that source on loopback, so the probe
reaches the app directly instead of looping through Envoy's inbound listener (and it still works
under STRICT mTLS, which kubelet's plain probe would not).

HTTP probes forward kubelet's request headers, every value of each, as Istio does: the injector
leaves the probe's `httpHeaders` (a `Host` included) on the rewritten kubelet probe, so kubelet
sends them. The copy in ISTIO_KUBE_APP_PROBERS is not added again (Istio's TestProbeHeader checks
that the agent sends only what it received).

A failure's body is a few words of our own (`http probe failed: connection refused`), never a
library's text. Results are logged on a change per probe, with a summary while a failure lasts
(agent.sidecar.statelog): the callers do not set the log rate.
"""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from agent.sidecar import logs
from agent.sidecar.http import plain_connector
from agent.sidecar.probe_config import Prober
from agent.sidecar.scrape import read_capped
from agent.sidecar.statelog import Note, StateLog

log = logs.get("probes")
BODY_LIMIT = 10 * 1024
MAX_REDIRECTS = 10
#: Not forwarded: hop-by-hop headers, and Accept-Encoding (the app's body is passed on as it comes,
#: so it must come uncompressed).
DROPPED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                     "upgrade", "content-length", "accept-encoding"})
UNCONFIGURED = "unconfigured"  # the one log state of every path that has no prober


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # why it failed, when the agent could not get an answer


def map_status(status: int | None, redirect_elsewhere: bool = False) -> int:
    """App answer -> what kubelet sees: transport error 500, a final 3xx 200, else verbatim."""
    if status is None:
        return 500
    if redirect_elsewhere or 300 <= status < 400:
        return 200
    return status


def forward_headers(incoming: Mapping[str, str], status_port: int, app_port: int) -> CIMultiDict[str]:
    """Kubelet's headers, every value; a Host naming the status port is pointed at the app port."""
    items = incoming.items()  # a multidict's items() has every value of a repeated header
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in items if k.lower() not in DROPPED)
    name, sep, port = out.get("Host", "").rpartition(":")
    if sep and port == str(status_port):
        out["Host"] = f"{name}:{app_port}"
    out["Connection"] = "close"
    return out


def describe(error: BaseException, timeout: float) -> str:
    """An error in a few words of our own: never the library's text (addresses, `ssl:default [...]`)."""
    if isinstance(error, TimeoutError):  # aiohttp's timeouts included
        return f"timed out after {timeout:g}s" if timeout else "timed out"
    if isinstance(error, (ssl.SSLError, aiohttp.ClientSSLError)):
        return "TLS handshake with the app failed"
    if isinstance(error, (socket.gaierror, aiohttp.ClientConnectorDNSError)):
        return "cannot resolve the probe's destination"
    if isinstance(error, (aiohttp.ServerDisconnectedError, asyncio.IncompleteReadError, ConnectionResetError)):
        return "the app closed the connection before answering"
    if isinstance(error, (aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):
        return "the app's answer is not valid HTTP"
    if isinstance(error, ValueError):  # a forwarded header the client refuses to send, a bad Location
        return "a header to forward or a redirect is not valid HTTP"
    if isinstance(error, OSError) and error.errno and error.errno > 0:
        return os.strerror(error.errno).lower()
    return "connection to the app failed"


def _linger(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 1))


class AppProber:
    """Runs the configured probes against the app. One instance per agent."""

    def __init__(self, probers: Mapping[str, Prober], *, pod_ip: str, status_port: int,
                 legacy_localhost: bool = False, states: StateLog | None = None):
        self.probers = dict(probers)
        self.dest = "localhost" if legacy_localhost else (pod_ip or "127.0.0.1")
        self.source = "::6" if ":" in self.dest else "127.0.0.6"
        self.status_port = status_port
        self.states = states or StateLog()

    async def probe(self, path: str, headers: Mapping[str, str]) -> ProbeResult:
        prober = self.probers.get(path)
        if prober is None:
            self._log_unconfigured(path)
            return ProbeResult(400, f"app prober config does not exists for {path}".encode())
        if prober.kind == "tcp":
            result = await self._tcp(prober)
        elif prober.kind == "http":
            result = await self._http(prober, headers)
        else:
            result = await self._grpc(prober, headers.get("User-Agent", ""))
        self._log(path, prober, result)
        return result

    def _log(self, path: str, prober: Prober, result: ProbeResult) -> None:
        failed = result.status >= 400
        report = self.states.observe(path, (result.status, result.reason), repeat=failed)
        if report is None:
            return
        fields = {"path": path, "kind": prober.kind, "port": prober.port, "status": result.status}
        if result.reason:
            fields["reason"] = result.reason
        if report.note is Note.STILL:
            log.error(f"app probe still failing for {report.seconds:.0f}s ({report.checks} probes)", **fields)
        elif failed:
            log.error("app probe failed", **fields)
        else:
            log.info("app probe succeeded", **fields)

    def _log_unconfigured(self, path: str) -> None:
        report = self.states.observe(UNCONFIGURED, 400, repeat=True)
        if report is None:
            return
        if report.note is Note.STILL:
            log.error(f"probes without a prober still asked for after {report.seconds:.0f}s "
                      f"({report.checks} requests)", path=path)
        else:
            log.error("Prober does not exist", path=path)

    def _failed(self, kind: str, error: BaseException, timeout: float) -> ProbeResult:
        why = describe(error, timeout)
        return ProbeResult(500, f"{kind} probe failed: {why}".encode(), reason=why)

    async def _grpc(self, prober: Prober, user_agent: str) -> ProbeResult:
        from agent.sidecar import grpc_health  # h2 is imported only where a gRPC probe is configured

        try:
            why = await asyncio.wait_for(
                grpc_health.check(self.dest, prober.port, self.source, prober.service, user_agent, prober.timeout),
                prober.timeout or None)
        except grpc_health.HealthError as e:
            why = str(e)
        except OSError as e:  # connecting; TimeoutError is one
            return self._failed("grpc", e, prober.timeout)
        return ProbeResult(200) if why is None else ProbeResult(500, f"grpc probe failed: {why}".encode(), reason=why)

    async def _tcp(self, prober: Prober) -> ProbeResult:
        try:
            conn = asyncio.open_connection(self.dest, prober.port, local_addr=(self.source, 0))
            _, writer = await asyncio.wait_for(conn, prober.timeout or None)
        except OSError as e:
            return self._failed("tcp", e, prober.timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _linger(sock)
        writer.close()
        return ProbeResult(200)

    async def _http(self, prober: Prober, incoming: Mapping[str, str]) -> ProbeResult:
        host = f"[{self.dest}]" if ":" in self.dest else self.dest
        url = f"{prober.scheme}://{host}:{prober.port}{prober.path}"
        headers = forward_headers(incoming, self.status_port, prober.port)
        connector = plain_connector(local_addr=(self.source, 0), force_close=True)
        timeout = aiohttp.ClientTimeout(total=prober.timeout or None)
        try:  # nothing of aiohttp's own is added: the app sees kubelet's headers
            async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                             skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent")) as session:
                return await self._follow(session, url, headers)
        except (aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: a Location yarl cannot parse
            return self._failed("http", e, prober.timeout)

    async def _follow(self, session: aiohttp.ClientSession, url: str, headers: CIMultiDict[str]) -> ProbeResult:
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
        why = f"stopped after {MAX_REDIRECTS} redirects"
        return ProbeResult(500, f"http probe failed: {why}".encode(), reason=why)
