"""A stand-in application for the pod (stdlib only): HTTP on one port, a connection holder on another.

    app_server.py --http 8080 [--hold 7070] [--tag app]

HTTP routes: /ok (200, body `<tag> peer=<ip>`), /fail (500), /slow (sleeps 5 s), /metrics
(OpenMetrics when the Accept header names it, else Prometheus text, as client libraries answer),
/headers (`local: <ip>`, then the request's headers as `Name: value` lines), anything else 200 with
the peer. `--hold` accepts TCP connections and keeps them open until the client closes (for
exit-on-zero drain tests). Prints `ready` once listening.
"""
from __future__ import annotations

import argparse
import http.server
import socket
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    tag = "app"
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        peer = self.client_address[0]
        if self.path == "/fail":
            self._send(500, b"failing on purpose\n")
        elif self.path == "/slow":
            time.sleep(5)
            self._send(200, b"slow\n")
        elif self.path == "/metrics" and "application/openmetrics-text" in self.headers.get("Accept", ""):
            body = (b"# TYPE app_requests counter\napp_requests_total 42\n"  # info: a type only OpenMetrics has
                    b"# TYPE app_build info\napp_build_info{v=\"1\"} 1\n# EOF\n")
            self._send(200, body, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        elif self.path == "/metrics":
            self._send(200, b"# TYPE app_requests_total counter\napp_requests_total 42\n", "text/plain; version=0.0.4")
        elif self.path == "/headers":  # and the address the request came to
            lines = [f"local: {self.connection.getsockname()[0]}", *(f"{k}: {v}" for k, v in self.headers.items())]
            self._send(200, "".join(line + "\n" for line in lines).encode())
        else:
            self._send(200, f"{self.tag} peer={peer}\n".encode())

    def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def hold(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"held\n")
            while conn.recv(1024):
                pass

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", type=int, required=True)
    ap.add_argument("--hold", type=int, default=0)
    ap.add_argument("--tag", default="app")
    args = ap.parse_args()
    Handler.tag = args.tag
    http.server.ThreadingHTTPServer.daemon_threads = True
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", args.http), Handler)
    if args.hold:
        threading.Thread(target=hold, args=(args.hold,), daemon=True).start()
        time.sleep(0.1)
    print("ready", flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
