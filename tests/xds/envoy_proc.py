"""Helpers for tests that run real Envoy with an agent bootstrap against the test ADS server.

The agent's bootstrap points Envoy's `xds-grpc` at the agent's xDS proxy socket. `running_envoy`
either keeps that (a test that starts an XdsProxy on `cfg.xds_socket_path`) or, with `ads_port`,
points `xds-grpc` straight at the test ADS server, to test that server with a real Envoy."""
from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.error
import urllib.request
from typing import Iterator

from agent.sidecar import bootstrap, config
from tests.support.process import free_port, wait_until


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def control_plane_config(tmp_path, ads_port: int, extra_argv=(), env=None) -> config.SidecarConfig:
    """The 2020 command line pointed at a local ADS server, on free ports (tests may run side by side)."""
    argv = ["sidecar", "--configPath", str(tmp_path / "proxy"), "--discoveryAddress", f"127.0.0.1:{ads_port}",
            "--controlPlaneAuthPolicy", "NONE", "--proxyAdminPort", str(free_port()),
            "--statusPort", str(free_port()), "--serviceCluster", "productpage.ns1", "--drainDuration", "1s",
            "--connectTimeout", "1s", "--dnsRefreshRate", "300s", *extra_argv]
    environ = {"POD_NAME": "productpage-v1-abc", "POD_NAMESPACE": "ns1", "INSTANCE_IP": "127.0.0.1",
               "ENVOY_STATUS_PORT": str(free_port()), "ENVOY_PROMETHEUS_PORT": str(free_port()), **(env or {})}
    return config.load(argv, {"ISTIO_DELTA_XDS": "false", **environ})


def _direct_to(data: dict, ads_port: int) -> dict:
    """`xds-grpc` as a plain HTTP/2 cluster to the test ADS server on 127.0.0.1:<ads_port>."""
    for cluster in data["static_resources"]["clusters"]:
        if cluster["name"] == "xds-grpc":
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
                "socket_address": {"address": "127.0.0.1", "port_value": ads_port}}
    return data


@contextlib.contextmanager
def running_envoy(cfg: config.SidecarConfig, log_path, ads_port: int | None = None) -> Iterator[subprocess.Popen]:
    """Envoy with the agent's bootstrap (hot restart off, one worker); stopped and reaped on exit."""
    data = bootstrap.build_bootstrap(cfg)
    path = bootstrap.write_bootstrap(cfg, data if ads_port is None else _direct_to(data, ads_port))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([cfg.binary_path, "-c", path, "--disable-hot-restart", "--concurrency", "1",
                                 "--drain-time-s", "1", "-l", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        admin = f"http://127.0.0.1:{cfg.admin_port}"
        wait_until(lambda: proc.poll() is not None or http_get(f"{admin}/server_info")[0] == 200, 30, what="Envoy admin")
        assert proc.poll() is None, open(log_path).read()[-3000:]
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dynamic_listener_names(admin: str) -> list[str]:
    _, text = http_get(f"{admin}/config_dump?resource=dynamic_listeners")
    data = json.loads(text) if text.strip() else {"configs": []}
    return [c.get("active_state", {}).get("listener", {}).get("name") for c in data.get("configs", [])]


def stat(admin: str, name: str) -> int | None:
    _, text = http_get(f"{admin}/stats?filter=^{name}$")
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return None
