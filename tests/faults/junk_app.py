"""A misbehaving application for the fault matrix (stdlib only); prints `ready` once listening.

    junk_app.py --http 8090

/ok 200; /garbage 200 with binary junk and no final newline; /huge 200 with 11 MiB of valid-looking
metric lines; /hang never answers (holds the connection 60 s); /bad-status 503.
"""
from __future__ import annotations

import argparse
import http.server
import os
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        if self.path == "/hang":
            time.sleep(60)
            return
        if self.path == "/garbage":
            body = b"\x00\xff{not prometheus\x1b[31m" + os.urandom(2048) + b"app_junk_total 1 2 3 ???"
            return self._send(200, body)
        if self.path == "/huge":
            line = b"app_huge_series_total{label=\"%s\"} 1\n" % (b"x" * 60)
            return self._send(200, line * (11 * 2**20 // len(line) + 1))
        if self.path == "/bad-status":
            return self._send(503, b"unavailable\n")
        return self._send(200, b"ok\n")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", type=int, required=True)
    args = ap.parse_args()
    http.server.ThreadingHTTPServer.daemon_threads = True
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", args.http), Handler)
    print("ready", flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
