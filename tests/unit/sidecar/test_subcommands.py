"""pilot-agent wait / request / version against a real local HTTP server (stdlib)."""
import http.server
import threading

import pytest

from agent.commands import request, version, wait


class Handler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def _answer(self):
        Handler.hits += 1
        if self.path == "/healthz/ready":
            code = 200 if Handler.hits >= 3 else 503
        else:
            code = {"/missing": 404, "/broken": 500}.get(self.path, 200)
        length = int(self.headers.get("Content-Length") or 0)
        body = f"{self.command} {self.path} {self.rfile.read(length).decode()}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    Handler.hits = 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_wait_succeeds_after_503s(server, capsys):
    code = wait.run(["--url", f"http://127.0.0.1:{server}/healthz/ready", "--periodMillis", "10",
                     "--timeoutSeconds", "5"], {})
    assert code == 0 and Handler.hits == 3
    assert "Envoy is ready!" in capsys.readouterr().out


def test_wait_times_out_with_last_error(server, capsys):
    code = wait.run(["--url", f"http://127.0.0.1:{server}/other-503", "--periodMillis", "10",
                     "--timeoutSeconds", "0"], {})
    assert code == 255
    assert "timeout waiting for Envoy proxy to become ready. Last error: no attempt made" in capsys.readouterr().out


def test_wait_last_error_is_http_status(server):
    assert wait.wait_ready(f"http://127.0.0.1:{server}/broken", 0.2, 0.01, 0.5) == "HTTP status code 500"


def test_request_url_and_port_allow_list(capsys):
    assert request.build_url(15000, "/config_dump") == "http://127.0.0.1:15000/config_dump"
    assert request.build_url(15020, "drain") == "http://127.0.0.1:15020/drain"
    assert request.run(["--debug-port", "8080", "GET", "stats"], {}) == 255
    assert "debug port 8080 is not in allowed list" in capsys.readouterr().err
    assert request.run(["GET"], {}) == 255


def test_request_send_and_status_rules(server):
    assert request.send("post", f"http://127.0.0.1:{server}/quitquitquit", "b") == (200, b"POST /quitquitquit b")
    assert request.send("GET", f"http://127.0.0.1:{server}/missing", None)[0] == 404
    assert request.send("GET", f"http://127.0.0.1:{server}/broken", None)[0] == 500


def test_version_forms(capsys):
    assert version.run(["-s"], {}) == 0
    assert capsys.readouterr().out == "client version: 0.1.0\n"
    assert version.run(["-o", "json"], {}) == 0
    assert '"clientVersion"' in capsys.readouterr().out
    assert version.run(["--output=yaml"], {}) == 0
    assert capsys.readouterr().out.startswith("clientVersion:\n")
    assert version.run([], {}) == 0
    assert "version.BuildInfo{Version:\"0.1.0\"" in capsys.readouterr().out
    assert version.run(["-o", "xml"], {}) == 255
