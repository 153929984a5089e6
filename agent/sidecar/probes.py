"""Forwarded application probes: `/app-health/<container>/{livez,readyz,startupz}` (spec §6.4).

The injector moved the app's httpGet/tcpSocket probes into ISTIO_KUBE_APP_PROBERS and pointed kubelet
at the agent. The agent probes the app at the pod IP from source 127.0.0.6: istio-iptables exempts
that source on loopback, so the probe reaches the app directly instead of looping through Envoy's
inbound listener (and it still works under STRICT mTLS, which kubelet's plain probe would not).

aiohttp is imported on first use: this module is also used at start-up (validation), before Envoy
is spawned, where import time counts.

gRPC probes speak just enough cleartext HTTP/2 (h2c, prior knowledge) to call the standard
`grpc.health.v1.Health/Check`: the request headers are sent as HPACK literals and only the DATA frame
of the answer is read (HealthCheckResponse field 1 = SERVING), so no HPACK decoder is needed. grpcio
stays a test-only dependency.
"""
from __future__ import annotations

import re
import socket
import struct
from collections.abc import Mapping

from agent.record import Default, Record
from agent.sidecar import logs

TYPE_CHECKING = False  # typing and aiohttp are not imported here at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    import aiohttp


log = logs.lazy("probes")

PATH_RE = re.compile(r"^/(app-health|app-lifecycle)/[^/]+/(livez|readyz|startupz|prestopz|poststartz)$")
BODY_LIMIT = 10 * 1024
MAX_REDIRECTS = 10


class ProbeConfigError(ValueError):
    """A malformed ISTIO_KUBE_APP_PROBERS entry; the message names the setting."""


class Prober(Record):
    kind: str  # "http", "tcp" or "grpc"
    port: int
    path: str = "/"
    scheme: str = "http"
    timeout: float = 1.0  # 0 = no timeout
    service: str = ""  # gRPC health service name


class ProbeResult(Record):
    status: int
    body: bytes = b""
    headers: dict = Default(dict)


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
            out[key] = Prober("grpc", _port(key, spec), timeout=timeout, service=str(spec.get("service") or ""))
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
            result = await self._grpc(prober, headers.get("User-Agent", ""))
        level = log.info if result.status < 400 else log.error
        level("app probe", path=path, kind=prober.kind, port=prober.port, status=result.status)
        return result

    async def _grpc(self, prober: Prober, user_agent: str) -> ProbeResult:
        import asyncio

        try:
            serving = await asyncio.wait_for(self._grpc_check(prober, user_agent), prober.timeout or None)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
            return ProbeResult(500, f"grpc probe failed: {e or type(e).__name__}".encode())
        return ProbeResult(200) if serving == 1 else ProbeResult(500, f"grpc health status {serving}".encode())

    async def _grpc_check(self, prober: Prober, user_agent: str) -> int:
        import asyncio

        reader, writer = await asyncio.open_connection(self.dest, prober.port, local_addr=(self.source, 0))
        try:
            host = f"[{self.dest}]" if ":" in self.dest else self.dest
            writer.write(grpc_health_request(f"{host}:{prober.port}", prober.service, user_agent))
            await writer.drain()
            return await read_grpc_health_status(reader, writer)
        finally:
            writer.close()

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
