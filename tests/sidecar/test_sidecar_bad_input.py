"""Bad input: one clear line naming the setting, exit 255, no Envoy started, no bootstrap written."""
import os
import socket
import subprocess

import pytest

from tests.support.agent import BASE_ENV
from tests.support.process import PILOT_AGENT, free_port


def _run(tmp_path, *args, env=None):
    config_path = tmp_path / "proxy"
    argv = [PILOT_AGENT, "proxy", "sidecar", "--standalone", "--configPath", str(config_path),
            "--proxyAdminPort", str(free_port()), "--statusPort", str(free_port()), *args]
    environ = {**BASE_ENV, "ENVOY_STATUS_PORT": str(free_port()), "ENVOY_PROMETHEUS_PORT": str(free_port()), **(env or {})}
    cp = subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=30, cwd=tmp_path)
    leftovers = [] if not config_path.exists() else os.listdir(config_path)
    return cp, leftovers


@pytest.mark.parametrize("args, env, setting", [
    ((), {"PROXY_CONFIG": "{not: [valid"}, "PROXY_CONFIG"),
    ((), {"ISTIO_KUBE_APP_PROBERS": "{nope"}, "ISTIO_KUBE_APP_PROBERS"),
    ((), {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": {"httpGet": {"port": "http"}}}'}, "ISTIO_KUBE_APP_PROBERS"),
    ((), {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"port": "15090"}'}, "ISTIO_PROMETHEUS_ANNOTATIONS"),
    (("--drainDuration", "45x"), {}, "drainDuration"),
    (("--binaryPath", "/nonexistent/envoy"), {}, "binaryPath"),
    (("--log_output_level", "default:loud"), {}, "log_output_level"),
    ((), {"WORKLOAD_IDENTITY_SOCKET_FILE": "spire/agent.sock"}, "WORKLOAD_IDENTITY_SOCKET_FILE: 'spire/agent.sock'"),
    ((), {"ENVOY_SECURE_METRICS_PORT": "15091x"}, "ENVOY_SECURE_METRICS_PORT: '15091x'"),
    ((), {"PROXY_CONFIG": '{"statsdUdpAddress": "statsd:9125"}'}, "statsdUdpAddress: 'statsd:9125'"),
])
def test_bad_setting(tmp_path, args, env, setting):
    cp, leftovers = _run(tmp_path, *args, env=env)
    assert cp.returncode == 255, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], cp.stderr
    assert leftovers == []  # no bootstrap, not even a temp file
    assert "Envoy started" not in cp.stdout


@pytest.mark.parametrize("which", ["--statusPort", "--proxyAdminPort"])
def test_port_in_use(tmp_path, which):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1" if which == "--proxyAdminPort" else "0.0.0.0", 0))
        busy.listen(1)
        cp, leftovers = _run(tmp_path, which, str(busy.getsockname()[1]))
    assert cp.returncode == 255
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and (which.lstrip("-") in lines[0]) and "not available" in lines[0], cp.stderr
    assert leftovers == []


def test_invalid_proxy_type(tmp_path):
    argv = [PILOT_AGENT, "proxy", "ztunnel-ish", "--configPath", str(tmp_path / "proxy")]
    cp = subprocess.run(argv, capture_output=True, text=True, env=BASE_ENV, timeout=30)
    assert cp.returncode == 255 and "ztunnel-ish" in cp.stderr
    assert not (tmp_path / "proxy").exists()
