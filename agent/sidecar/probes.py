"""Forwarded application probes: `/app-health/<container>/{livez,readyz,startupz}`.

The injector moved the app's httpGet/tcpSocket probes into ISTIO_KUBE_APP_PROBERS and pointed kubelet
at the agent. The agent probes the app at the pod IP from source 127.0.0.6: istio-iptables exempts
that source on loopback, so the probe reaches the app directly instead of looping through Envoy's
inbound listener (and it still works under STRICT mTLS, which kubelet's plain probe would not).

gRPC probes speak just enough cleartext HTTP/2 (h2c, prior knowledge) to call the standard
`grpc.health.v1.Health/Check`: the request headers are sent as HPACK literals and only the DATA frame
of the answer is read (HealthCheckResponse field 1 = SERVING), so no HPACK decoder is needed. Not
grpcio: its channels cannot bind the source address 127.0.0.6 that keeps the probe out of Envoy.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from agent.sidecar import logs
from agent.sidecar.http import plain_connector
from agent.sidecar.probe_config import Prober
from agent.sidecar.scrape import read_capped

log = logs.get("probes")
BODY_LIMIT = 10 * 1024
MAX_REDIRECTS = 10


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


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
            result = await self._grpc(prober, headers.get("User-Agent", ""))
        level = log.info if result.status < 400 else log.error
        level("app probe", path=path, kind=prober.kind, port=prober.port, status=result.status)
        return result

    async def _grpc(self, prober: Prober, user_agent: str) -> ProbeResult:
        try:
            serving = await asyncio.wait_for(self._grpc_check(prober, user_agent), prober.timeout or None)
        # IndexError: an answer too short for the frame it announces (the app's bytes, not ours).
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
            return ProbeResult(500, f"grpc probe failed: {e or type(e).__name__}".encode())
        return ProbeResult(200) if serving == 1 else ProbeResult(500, f"grpc health status {serving}".encode())

    async def _grpc_check(self, prober: Prober, user_agent: str) -> int:
        reader, writer = await asyncio.open_connection(self.dest, prober.port, local_addr=(self.source, 0))
        try:
            host = f"[{self.dest}]" if ":" in self.dest else self.dest
            writer.write(grpc_health_request(f"{host}:{prober.port}", prober.service, user_agent))
            await writer.drain()
            return await read_grpc_health_status(reader, writer)
        finally:
            writer.close()

    async def _tcp(self, prober: Prober) -> ProbeResult:
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
        host = f"[{self.dest}]" if ":" in self.dest else self.dest
        url = f"{prober.scheme}://{host}:{prober.port}{prober.path}"
        headers = forward_headers(incoming, self.status_port, prober.port)
        connector = plain_connector(local_addr=(self.source, 0), force_close=True)
        timeout = aiohttp.ClientTimeout(total=prober.timeout or None)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                             auto_decompress=False) as session:
                return await self._follow(session, url, headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return ProbeResult(500, f"http probe failed: {e or type(e).__name__}".encode())

    async def _follow(self, session: "aiohttp.ClientSession", url: str, headers: dict) -> ProbeResult:
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


# ---------------------------------------------------------------------------------------------
# Minimal gRPC health check over h2c (RFC 9113 frames, RFC 7541 literal header fields)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _literal(name: str, value: str) -> bytes:
    """HPACK 'literal header field without indexing, new name', no Huffman coding."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n)) + n + _hpack_int(len(v)) + v


def _varint(value: int) -> bytes:
    out = []
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + [value])


def _protobuf_string(field_no: int, text: str) -> bytes:
    data = text.encode()
    return (bytes([field_no << 3 | 2]) + _varint(len(data)) + data) if data else b""


def grpc_health_request(authority: str, service: str, user_agent: str = "") -> bytes:
    """Connection preface + SETTINGS + HEADERS + DATA(END_STREAM) for Health/Check on stream 1."""
    headers = b"".join(_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Check"),
        (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
        ("user-agent", user_agent or "istio-agent-probe")))
    message = _protobuf_string(1, service)
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    return (H2_PREFACE + _frame(SETTINGS, 0, 0) + _frame(HEADERS, END_HEADERS, 1, headers)
            + _frame(DATA, END_STREAM, 1, body))


def health_status(data: bytes) -> int:
    """gRPC-framed HealthCheckResponse -> its status (0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN)."""
    if len(data) < 5:
        raise ValueError("no health response message (not implemented or failed)")
    message, status, i = data[5:5 + int.from_bytes(data[1:5], "big")], 0, 0
    while i < len(message):
        key = message[i]
        i += 1
        if key == 0x08:  # field 1, varint
            status = message[i]
            i += 1
        else:
            break
    return status


async def read_grpc_health_status(reader, writer) -> int:
    """Read frames until stream 1 ends; the DATA payload carries the answer, headers are skipped."""
    data = b""
    while True:
        head = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == SETTINGS and not flags & ACK:
            writer.write(_frame(SETTINGS, ACK, 0))
        elif kind == DATA and stream == 1:
            data += payload[1 + payload[0]:] if flags & 0x8 else payload  # PADDED: pad length first
        elif kind in (RST_STREAM, GOAWAY) and stream in (0, 1):
            raise ValueError("stream reset by the server")
        if stream == 1 and kind in (DATA, HEADERS) and flags & END_STREAM:
            return health_status(data)
