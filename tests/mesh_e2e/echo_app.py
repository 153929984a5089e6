"""The app of a mesh test pod (stdlib only): answers every GET with one JSON line naming itself, the
peer address and the request headers, so a test can see what the sidecars did to the request.

    echo_app.py --port 8080 [--tag b]

Prints `ready` once listening.
"""
from __future__ import annotations

import argparse
import http.server
import json


class Handler(http.server.BaseHTTPRequestHandler):
    tag = "app"
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"tag": self.tag, "peer": self.client_address[0], "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tag", default="app")
    args = ap.parse_args()
    Handler.tag = args.tag
    http.server.ThreadingHTTPServer.daemon_threads = True
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    print("ready", flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
