"""`pilot-agent wait`: poll a URL until it answers 200, the postStart hook that holds the app until
the proxy is ready (holdApplicationUntilProxyStarts), as Istio's
(https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/app/wait.go). Standard library
only, so the hook starts fast.
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence

from agent import flags
from agent.exitcodes import Exit
from agent.flags import LOG_FLAGS, Flag

#: No proxy from http_proxy/HTTP_PROXY: these requests are for localhost only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

FLAGS = (
    Flag("url", default="http://127.0.0.1:15021/healthz/ready", help="URL to poll until it returns HTTP 200"),
    Flag("timeoutSeconds", kind="int", default=60, help="overall deadline in seconds"),
    Flag("periodMillis", kind="int", default=500, help="sleep before each attempt, in milliseconds"),
    Flag("requestTimeoutMillis", kind="int", default=500, help="per-request timeout, in milliseconds"),
    *LOG_FLAGS,
)


def attempt(url: str, timeout: float) -> str | None:
    """One GET: None on 200, else the error text Istio would report."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            resp.read()
            return None if resp.status == 200 else f"HTTP status code {resp.status}"
    except urllib.error.HTTPError as e:
        e.read()
        return f"HTTP status code {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"Get {url!r}: {reason}"


def wait_ready(url: str, timeout: float, period: float, request_timeout: float,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """None once the URL answered 200; else the last error when the deadline passed."""
    deadline = clock() + timeout
    last = "no attempt made"
    while clock() < deadline:
        sleep(period)
        err = attempt(url, request_timeout)
        if err is None:
            return None
        last = err
    return last


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parsed = flags.parse_command("pilot-agent wait [flags]", FLAGS, argv, environ)
    if isinstance(parsed, int):
        return parsed
    v = parsed.values
    from agent.sidecar import logs

    logs.configure(v["log_output_level"], v["log_as_json"], v["log_target"])
    log = logs.get()
    log.info(f"Waiting for Envoy proxy to be ready (timeout: {v['timeoutSeconds']} seconds)...")
    last = wait_ready(v["url"], v["timeoutSeconds"], v["periodMillis"] / 1000, v["requestTimeoutMillis"] / 1000)
    if last is None:
        log.info("Envoy is ready!")
        return Exit.OK
    log.error(f"timeout waiting for Envoy proxy to become ready. Last error: {last}")
    return Exit.USAGE
