"""A tiny HTTP app for the pod tests (stdlib only): the "app" container and the remote peer.

    httpapp.py --port 8080 --tag app

GET /health -> 200 "ok"; GET /fail -> 500; any other GET -> 200 with JSON
{"tag": ..., "client": <peer address>, "path": ...}: the peer address shows whether a connection
came through Envoy's inbound passthrough (127.0.0.6) or straight from the remote. Prints "ready"
once listening. HTTP/1.0 replies, one request per connection.
"""
from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tag", default="app")
    ap.add_argument("--bind", default="0.0.0.0")
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                status, body, ctype = 200, b"ok\n", "text/plain"
            elif self.path == "/fail":
                status, body, ctype = 500, b"failing\n", "text/plain"
            else:
                status, ctype = 200, "application/json"
                body = json.dumps({"tag": args.tag, "client": self.client_address[0],
                                   "path": self.path}).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
