"""Send requests byte for byte, nothing normalised on the way (stdlib only), and print what came back.

    raw_http.py < requests.json > answers.json

stdin: a JSON list of {"host", "port", "data", "expect"} (`data` is the request as a latin-1
string, sent as is on a fresh connection; `expect`, default 1, how many responses to wait for) or
{"host", "port", "h2": {"method", "path", "authority"}} (one HTTP/2 request with prior knowledge,
h2c). stdout: one JSON list, one answer per request in order: {"status": int | null, "head": str,
"body": str, "error": str | null, "responses": [...], "seconds": float}: the first response's
status, head and de-chunked body, every response that came back (pipelined requests get several),
and the time it took. `status` is null when no HTTP answer came (refused, reset, closed, silent).
Requests run a few at a time; each waits for its responses, for the server to close or to go quiet
for `--idle` seconds.
Exits 0 whatever the answers.

The HTTP/2 client reads the status only from a HEADERS block that starts with a static-table
index (how servers send 200, 204, 206, 304, 400, 404 and 500); any other status is -1. DATA frames
are returned as the body.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

CAP = 256 * 1024
#: HPACK static table entries for :status (RFC 7541, appendix A).
H2_STATUS = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((host, port))
    return sock


def http1(req: dict, idle: float) -> dict:
    """Reads until `expect` whole responses are in (1 unless the request says), the server closes
    or goes quiet: Envoy waits a second for the client to close first after a `Connection: close`."""
    expect = req.get("expect", 1)
    try:
        with _connect(req["host"], req["port"], idle) as sock:
            sock.sendall(req["data"].encode("latin-1"))
            data, error = b"", None
            while len(data) < CAP and sum(r["complete"] for r in _responses(data)) < expect:
                try:
                    chunk = sock.recv(65536)
                except OSError as e:
                    error = None if data else type(e).__name__
                    break
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return _answer([], type(e).__name__)
    return _answer(_responses(data), error)


def _answer(responses: list[dict], error: str | None) -> dict:
    responses = [{k: v for k, v in r.items() if k != "complete"} for r in responses]
    first = responses[0] if responses else {"status": None, "head": "", "body": ""}
    return {**first, "error": error, "responses": responses}


def _responses(data: bytes) -> list[dict]:
    """Every response in `data` (pipelined requests get several), bodies de-chunked, each marked
    `complete` when its whole body is in; bytes that are not HTTP end the list as a response with
    status None."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            out.append({"status": None, "head": "", "body": data.decode("latin-1"), "complete": False})
            break
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in head.split(b"\r\n")[1:])}
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, complete, data = _dechunk(rest)
        elif (length := headers.get(b"content-length", b"")).isdigit():
            body, complete, data = rest[:int(length)], len(rest) >= int(length), rest[int(length):]
        else:
            body, complete, data = rest, False, b""
        out.append({"status": int(parts[1]), "head": head.decode("latin-1"), "body": body.decode("latin-1"),
                    "complete": complete})
    return out


def _dechunk(data: bytes) -> tuple[bytes, bool, bytes]:
    """(body, whether the last chunk came, what follows it); a malformed chunk ends the body there."""
    body = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return body + data, False, b""
        if not sep:
            return body, False, b""
        if size == 0:
            _trailers, sep, after = rest.partition(b"\r\n")
            return body, bool(sep), after
        if len(rest) < size + 2:
            return body + rest[:size], False, b""
        body, data = body + rest[:size], rest[size + 2:]


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (lengths under 127)."""
    n, v = name.encode("latin-1"), value.encode("latin-1")
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _frames(data: bytes):
    while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):  # whole frames only
        size = int.from_bytes(data[:3], "big")
        kind, flags, stream = data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        yield kind, flags, stream, data[9:9 + size]
        data = data[9 + size:]


def http2(req: dict, idle: float) -> dict:
    h = req["h2"]
    block = b"".join(_literal(k, v) for k, v in ((":method", h["method"]), (":scheme", "http"),
                                                  (":authority", h["authority"]), (":path", h["path"])))
    # SETTINGS with the largest stream window, the same for the connection (a scrape is bigger
    # than the default 64 KiB and this client sends no WINDOW_UPDATE later), then HEADERS with
    # END_STREAM|END_HEADERS.
    window = 2**31 - 1
    out = (PREFACE + _frame(4, 0, 0, struct.pack(">HI", 4, window))
           + _frame(8, 0, 0, struct.pack(">I", window - 65535)) + _frame(1, 0x05, 1, block))
    try:
        with _connect(req["host"], req["port"], idle) as sock:
            sock.sendall(out)
            data, error = _read_h2(sock)
    except OSError as e:
        return _answer([], type(e).__name__)
    status, body = None, b""
    for kind, _flags, stream, payload in _frames(data):
        if stream == 1 and kind == 1 and status is None:
            status = H2_STATUS.get(payload[0], -1) if payload else -1
        elif stream == 1 and kind == 0:
            body += payload
    return _answer([{"status": status, "head": "", "body": body.decode("latin-1")}] if data else [], error)


def _read_h2(sock: socket.socket) -> tuple[bytes, str | None]:
    """Frames until stream 1 ends (END_STREAM, RST_STREAM) or the connection does (GOAWAY, close):
    an HTTP/2 server keeps the connection open after the answer."""
    data = b""
    while len(data) < CAP:
        for kind, flags, stream, _payload in _frames(data):
            if kind == 7 or (stream == 1 and (kind == 3 or (kind in (0, 1) and flags & 0x1))):
                return data, None
        try:
            chunk = sock.recv(65536)
        except OSError as e:
            return data, None if data else type(e).__name__
        if not chunk:
            return data, None
        data += chunk
    return data, None


def _timed(req: dict, idle: float) -> dict:
    started = time.monotonic()
    answer = (http2 if "h2" in req else http1)(req, idle)
    return {**answer, "seconds": round(time.monotonic() - started, 3)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    requests = json.load(sys.stdin)
    with ThreadPoolExecutor(args.parallel) as pool:
        answers = list(pool.map(lambda r: _timed(r, args.idle), requests))
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
