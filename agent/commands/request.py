"""`pilot-agent request <method> <path> [<body>]`: a tiny client for the local admin ports, as Istio's
(https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/app/request.go).

Used as the native sidecar's preStop hook (`request --debug-port=15020 POST drain`) and by hand
(`request GET config_dump`). Prints the body; fails on status > 399 except 404. Standard library only.
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from agent import flags
from agent.exitcodes import Exit
from agent.flags import LOG_FLAGS, Flag

ALLOWED_PORTS = (15000, 15004, 15020, 15021)
#: No proxy from http_proxy/HTTP_PROXY: these requests are for localhost only. 127.0.0.1, not
#: "localhost": a container without a kubelet-written /etc/hosts cannot resolve the name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

FLAGS = (
    Flag("debug-port", kind="int", default=15000, help=f"local port to send the request to; one of {list(ALLOWED_PORTS)}"),
    *LOG_FLAGS,
)


def build_url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}/{path.lstrip('/')}"


def send(method: str, url: str, body: str | None, timeout: float = 60.0) -> tuple[int, bytes]:
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method.upper())
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parsed = flags.parse_command("pilot-agent request <method> <path> [<body>] [flags]", FLAGS, argv, environ)
    if isinstance(parsed, int):
        return parsed
    args = parsed.positional
    if not 2 <= len(args) <= 3:
        sys.stderr.write(f"Error: accepts between 2 and 3 arg(s), received {len(args)}\n")
        return Exit.USAGE
    port = parsed.values["debug_port"]
    if port not in ALLOWED_PORTS:
        sys.stderr.write(f"Error: debug port {port} is not in allowed list {list(ALLOWED_PORTS)}\n")
        return Exit.USAGE
    url = build_url(port, args[1])
    try:
        status, body = send(args[0], url, args[2] if len(args) == 3 else None)
    except (urllib.error.URLError, OSError) as e:
        sys.stderr.write(f"Error: {args[0].upper()} {url}: {getattr(e, 'reason', e)}\n")
        return Exit.USAGE
    if status > 399 and status != 404:
        sys.stderr.write(f"Error: received unsuccessful response: {status}, {body.decode(errors='replace').strip()}\n")
        return Exit.USAGE
    sys.stdout.write(body.decode(errors="replace"))
    sys.stdout.flush()
    return Exit.OK
