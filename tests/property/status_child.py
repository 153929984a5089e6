"""The status server in a process of its own, as the agent runs it, for the HTTP fuzz property.

    status_child.py text|json <log file>    -> prints its port, serves until stdin closes

Logs go to the file as the agent's do (`--log_target <file>`, level debug so that every line is
checked); anything else the process writes (a traceback) goes to its stderr, which the test reads.
It has a real app prober (httpGet and tcpSocket probes to a small app it serves) and the real metrics
merger (the app plays Envoy's stats endpoint), so fuzzed headers reach the code that forwards them.
"""
from __future__ import annotations

import asyncio
import sys

from agent.sidecar.http import import_aiohttp

import_aiohttp()  # before anything imports aiohttp, as the agent does

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from agent.sidecar import logs  # noqa: E402
from agent.sidecar.http import plain_connector  # noqa: E402
from agent.sidecar.http_server import Limits  # noqa: E402
from agent.sidecar.metrics import AgentMetrics, MetricsMerger  # noqa: E402
from agent.sidecar.probe_config import parse_probers  # noqa: E402
from agent.sidecar.probes import AppProber  # noqa: E402
from tests.support.status_server import start_status  # noqa: E402

#: Short limits, so that a connection left waiting costs the run a second, not ten.
LIMITS = Limits(header_timeout=1.0, body_linger=0.3, max_connections=32)


async def app(request: web.Request) -> web.Response:
    return web.Response(text="envoy_fuzz_total 1\n" if request.path == "/stats/prometheus" else "ok")


async def main(as_json: bool, log_path: str) -> None:
    logs.configure("default:debug,aiohttp:debug,asyncio:debug", as_json, target=log_path)
    app_runner = web.AppRunner(web.Application(), access_log=None)
    app_runner.app.router.add_route("*", "/{tail:.*}", app)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    app_port = int(site.name.rsplit(":", 1)[1])
    probers = parse_probers({
        "/app-health/app/livez": {"httpGet": {"path": "/live", "port": app_port}, "timeoutSeconds": 1},
        "/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": app_port, "scheme": "HTTP"}},
        "/app-lifecycle/app/prestopz": {"httpGet": {"path": "/stop", "port": app_port}},
        "/app-health/tcp/livez": {"tcpSocket": {"port": app_port}, "timeoutSeconds": 1}})
    async with aiohttp.ClientSession(connector=plain_connector()) as session:
        merger = MetricsMerger(AgentMetrics(), session, envoy_port=app_port, targets=None, log=logs.get())
        running = await start_status(LIMITS, prober=AppProber(probers, pod_ip="127.0.0.1", status_port=0),
                                     metrics=merger)
        print(running.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await running.server.stop()
    await app_runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] == "json", sys.argv[2]))
