"""Where certificates come from and go to: file-mounted certificates, OUTPUT_CERTS, and the proxyless
agent (DISABLE_ENVOY) with its gRPC xDS bootstrap."""
import json
import os
import signal
import stat
import threading

import grpc
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.mesh_e2e.helpers import APP_PORT, issue_files, read_events
from tests.mesh_e2e.resources import CLUSTER
from tests.support.process import wait_until


def _leaf(path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(open(path, "rb").read())[0]


def test_file_mounted_certificates(mesh, server_pod):
    pod = mesh.pod("mounted", "nsc", "mounted")
    files = issue_files(mesh.pki, pod.identity, pod.root / "etc/certs")
    pod.start_agent(env={"FILE_MOUNTED_CERTS": "true"})
    pod.wait_ready()
    assert _leaf(files["cert"]).serial_number in {int(s, 16) for s in pod.workload_serials()}
    code, body = pod.call(f"http://b.nsb.svc.cluster.local:{APP_PORT}/")
    assert code == 200 and f"URI={pod.identity}" in json.loads(body)["headers"]["x-forwarded-client-cert"]
    assert not [e for e in read_events(mesh.dir, "csr") if e["identity"] == pod.identity], "a CSR was sent"
    mesh.close_pod(pod)


def _check_output(directory, identity: str) -> None:
    for name in ("cert-chain.pem", "key.pem", "root-cert.pem"):
        assert (directory / name).is_file(), name
    assert stat.S_IMODE(os.stat(directory / "key.pem").st_mode) == 0o600
    leaf = _leaf(directory / "cert-chain.pem")
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [identity]
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(), None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()


def test_output_certs(mesh):
    pod = mesh.pod("out", "nsc", "out")
    pod.start_agent(env={"OUTPUT_CERTS": "./var/lib/istio/data"})
    pod.wait_ready()
    out = pod.root / "var/lib/istio/data"
    wait_until(lambda: (out / "key.pem").exists(), 10, 0.1, "OUTPUT_CERTS written")
    _check_output(out, pod.identity)
    mesh.close_pod(pod)


def test_disable_envoy_proxyless(mesh):
    pod = mesh.pod("grpc-app", "nsc", "grpc-app")
    agent = pod.start_agent(env={"DISABLE_ENVOY": "true", "OUTPUT_CERTS": "./var/lib/istio/data",
                                 "GRPC_XDS_BOOTSTRAP": "./etc/istio/proxy/grpc-bootstrap.json"})
    out, boot = pod.root / "var/lib/istio/data", pod.root / "etc/istio/proxy/grpc-bootstrap.json"
    wait_until(lambda: (out / "key.pem").exists() and boot.exists(), 30, 0.1, "certificates and gRPC bootstrap")
    _check_output(out, pod.identity)
    config = json.loads(boot.read_text())
    (server,) = config["xds_servers"]
    assert server["server_uri"].startswith("unix:") and server["server_uri"].endswith("etc/istio/proxy/XDS")
    assert f"~{pod.key}~" in config["node"]["id"]
    provider = config["certificate_providers"]["default"]["config"]
    for key in ("certificate_file", "private_key_file", "ca_certificate_file"):
        assert os.path.basename(provider[key]) in {"cert-chain.pem", "key.pem", "root-cert.pem"}
    assert pod.envoy_pids() == [] and agent.proc.poll() is None
    pod.wait_ready()  # with no Envoy: ready once it holds a certificate and reaches istiod
    # A gRPC client on the bootstrap's socket gets istiod's clusters through the agent.
    with grpc.insecure_channel(f"unix:{pod.root}/etc/istio/proxy/XDS") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        request.node.id = config["node"]["id"]
        answered = threading.Event()

        def requests():  # a real xDS client keeps its side open (ending it ends the stream)
            yield request
            answered.wait(10)

        response = next(stub.StreamAggregatedResources(requests(), timeout=10))
        answered.set()
        assert response.type_url == CLUSTER and len(response.resources) >= 1
    assert pod.envoy_pids() == []
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(20) == 0
    mesh.close_pod(pod)
