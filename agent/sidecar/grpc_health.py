"""The standard gRPC health check (`grpc.health.v1.Health/Check`) over cleartext HTTP/2, from a
chosen source address, as kubelet's gRPC probe asks it
(https://github.com/kubernetes/kubernetes/blob/master/pkg/probe/grpc/grpc.go).

The HTTP/2 framing and header compression are the `h2` library's, the messages gRPC's own
(`grpc_health.v1.health_pb2`, grpcio-health-checking); only gRPC's 5-byte message prefix is written
here. Not grpcio's channels: they cannot bind the source address (127.0.0.6) that keeps an app
probe out of Envoy's inbound capture.

`check()` returns None when the service is SERVING, else why, in words of our own: the gRPC status
of the call (from the trailers, or the headers of a trailers-only answer) before the message, so
an unknown service is `NOT_FOUND`, not the empty message's default status.
"""
from __future__ import annotations

import asyncio
import urllib.parse

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
MESSAGE_LIMIT = 64 * 1024  # a health answer is a few bytes; more is not a health answer
SHOWN_MESSAGE = 200  # characters of the app's grpc-message repeated in our answer
NOT_H2 = "the app did not answer in HTTP/2 (is it a gRPC server?)"


class HealthError(Exception):
    """The check could not be made or the answer was not a health answer (message: our words)."""


def encode_request(service: str) -> bytes:
    """A gRPC-framed HealthCheckRequest (`service` empty: the server's own health)."""
    message = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def decode_status(body: bytes) -> int:
    """A gRPC-framed HealthCheckResponse -> its status field (0 when absent, as protobuf says)."""
    if len(body) < 5:
        raise HealthError("no health answer in the response")
    if body[0] != 0:
        raise HealthError("compressed health answer (none was asked for)")
    try:
        return health_pb2.HealthCheckResponse.FromString(body[5:5 + int.from_bytes(body[1:5], "big")]).status
    except DecodeError:
        raise HealthError("malformed health answer") from None


def verdict(headers: dict[str, str], trailers: dict[str, str], body: bytes) -> str | None:
    """None for SERVING, else why (an HTTP answer that is not gRPC, a failed call, another status)."""
    if headers.get(":status") != "200":
        return f"HTTP status {headers.get(':status', 'missing')} from the app (is it a gRPC server?)"
    code = trailers.get("grpc-status", headers.get("grpc-status"))
    if code is None:
        return "no gRPC status in the app's answer"
    if code != "0":
        name = CODES[int(code)] if code.isdigit() and int(code) < len(CODES) else f"code {code[:8]}"
        if name == "UNIMPLEMENTED":
            return "the app does not implement the gRPC health protocol (grpc.health.v1.Health)"
        text = urllib.parse.unquote(trailers.get("grpc-message", headers.get("grpc-message", "")))
        text = "".join(c if c.isprintable() else " " for c in text[:SHOWN_MESSAGE])
        return f"health check failed: {name}" + (f": {text}" if text else "")
    status = decode_status(body)
    if status == health_pb2.HealthCheckResponse.SERVING:
        return None
    try:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    except ValueError:  # a status this version of the protocol does not know
        name = str(status)
    return f"service unhealthy (responded with {name})"


def _request_headers(authority: str, user_agent: str, timeout: float) -> list[tuple[str, str]]:
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Check"),
               (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
               ("user-agent", user_agent or "istio-agent-probe")]
    if timeout:  # the app learns the deadline, as from kubelet's client
        headers.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
    return headers


async def check(host: str, port: int, source: str, service: str, user_agent: str = "",
                timeout: float = 0.0) -> str | None:
    """One Health/Check on a new connection from `source`; the caller bounds the time."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        conn.send_headers(1, _request_headers(authority, user_agent, timeout))
        conn.send_data(1, encode_request(service), end_stream=True)
        writer.write(conn.data_to_send())
        return await _answer(conn, reader, writer)
    except h2.exceptions.H2Error:  # not HTTP/2, or HTTP/2 the library refuses
        raise HealthError(NOT_H2) from None
    finally:
        writer.close()


async def _answer(conn: h2.connection.H2Connection, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> str | None:
    headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    body = b""
    spoke_h2 = False  # a server that answers HTTP/2 sends its SETTINGS first
    while True:
        data = await reader.read(65536)
        if not data or (not spoke_h2 and data.startswith(b"HTTP/")):
            raise HealthError("the app closed the connection before answering" if spoke_h2 else NOT_H2)
        events = conn.receive_data(data)
        spoke_h2 = spoke_h2 or bool(events)
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if len(body) > MESSAGE_LIMIT:
                    raise HealthError("health answer too long")
            elif isinstance(event, h2.events.StreamReset):
                raise HealthError(f"the app reset the call (HTTP/2 error {int(event.error_code)})")
            elif isinstance(event, h2.events.ConnectionTerminated) and (
                    event.error_code or (event.last_stream_id or 0) < 1):  # a graceful GOAWAY still answers
                raise HealthError("the app closed the connection before answering")
            elif isinstance(event, h2.events.StreamEnded):
                return verdict(headers, trailers, body)
        writer.write(conn.data_to_send())
