"""Connect (TCP) or send one datagram (UDP) and print the listener's JSON reply (stdlib only).

    netclient.py tcp 198.18.0.20 9090 [--timeout 3] [--source 127.0.0.1]

Always prints exactly one JSON line and exits 0: the reply, or {"error": "..."} when the
connection is refused, times out or gets no answer, so tests compare data, not exit codes.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("proto", choices=["tcp", "udp"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--timeout", type=float, default=3)
    ap.add_argument("--source", default=None)
    args = ap.parse_args()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(family, kind) as s:
            s.settimeout(args.timeout)
            if args.source:
                s.bind((args.source, 0))
            if kind == socket.SOCK_STREAM:
                s.connect((args.host, args.port))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            else:
                s.sendto(b"query", (args.host, args.port))
                data, _ = s.recvfrom(4096)
        reply = json.loads(data.decode()) if data.strip() else {"error": "empty reply"}
    except (OSError, ValueError) as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
