"""Steady HTTP load for drain tests (stdlib only): one request per new connection, every `--period`.

    loadgen.py 198.18.0.10 8080 --period 0.02 --duration 10

Each request is classified: `ok` (200 read completely), `refused` (the connection was never
accepted: nobody listening any more) or `failed` (accepted, then reset or cut short: what a drain
must never cause). Prints one JSON summary line at the end (or when stdin closes).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def one(host: str, port: int, timeout: float) -> str:
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return "refused"
    try:
        with s:
            s.sendall(f"GET /ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return "failed"
    if not data:
        return "refused_after_connect"  # accepted by the kernel's queue, closed unread: not served
    head, _, body = data.partition(b"\r\n\r\n")
    return "ok" if head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0] and body.endswith(b"\n") else "failed"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--period", type=float, default=0.02)
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()
    counts: dict[str, int] = {}
    timeline: list[tuple[float, str]] = []
    start = time.monotonic()
    print("ready", flush=True)
    while time.monotonic() - start < args.duration:
        result = one(args.host, args.port, 2.0)
        counts[result] = counts.get(result, 0) + 1
        if not timeline or timeline[-1][1] != result:
            timeline.append((round(time.monotonic() - start, 3), result))
        time.sleep(args.period)
    print(json.dumps({"counts": counts, "timeline": timeline}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
