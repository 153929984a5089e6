"""The seed's 2020 pod (Istio 1.5's injector: `--discoveryAddress istiod.istio-system.svc:15012
--controlPlaneAuthPolicy NONE`) against today's istiod on 15012, which speaks only TLS: the agent
must use TLS whatever the flag says (as Istio 1.5.1 did for port 15012), and serve the workload
certificates its CSR got, proven by a call to B over mTLS with the pod's identity in XFCC."""
import json

from tests.mesh_e2e.helpers import APP_PORT, read_events
from tests.unit.sidecar._istio2020 import ISTIO_2020

#: The istio-proxy container's env from config/k8s/productpage-injected.yaml.
ENV_2020 = {"JWT_POLICY": "first-party-jwt", "PILOT_CERT_PROVIDER": "istiod",
            "CA_ADDR": "istiod.istio-system.svc:15012", "POD_NAME": "productpage-v1-abc", "POD_NAMESPACE": "ns1",
            "SERVICE_ACCOUNT": "bookinfo-productpage", "ISTIO_META_POD_PORTS": '[\n    {"containerPort":9080}\n]',
            "ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_META_POD_NAME": "productpage-v1-abc",
            "ISTIO_META_CONFIG_NAMESPACE": "ns1", "ISTIO_META_INTERCEPTION_MODE": "REDIRECT",
            "ISTIO_META_WORKLOAD_NAME": "productpage-v1",
            "ISTIO_META_OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
            "ISTIO_META_MESH_ID": "cluster.local"}


def test_2020_command_line_gets_tls_and_certificates(mesh, server_pod):
    pod = mesh.pod("productpage-v1-abc", "ns1", "bookinfo-productpage")
    args = list(ISTIO_2020)
    # The pod's /etc/istio/proxy volume is <root>/etc/istio/proxy here (one root per pod on one host).
    args[args.index("--configPath") + 1] = str(pod.root / "etc/istio/proxy")
    pod.start_agent(["proxy", *args], env={**ENV_2020, "INSTANCE_IP": pod.ip, "HOST_IP": "198.18.4.1"},
                    replace_env=True)
    pod.wait_ready()
    streams = [e for e in read_events(mesh.dir, "stream") if "~productpage-v1-abc.ns1~" in e["node"]]
    assert streams, "no ADS stream reached istiod (it only speaks TLS on 15012)"
    assert any(e["identity"] == pod.identity and not e["refused"] for e in read_events(mesh.dir, "csr"))
    code, body = pod.call(f"http://b.nsb.svc.cluster.local:{APP_PORT}/")
    assert code == 200, (code, body, pod.agent.log()[-3000:])
    xfcc = json.loads(body)["headers"]["x-forwarded-client-cert"]
    assert f"URI={pod.identity}" in xfcc, xfcc
    assert "Traceback" not in pod.agent.log()
