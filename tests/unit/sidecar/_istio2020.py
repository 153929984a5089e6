"""The sidecar command line Istio 1.5's injector wrote, and the pod it ran in."""

ISTIO_2020 = (
    "sidecar --domain ns1.svc.cluster.local --configPath /etc/istio/proxy --binaryPath /usr/local/bin/envoy "
    "--serviceCluster productpage.ns1 --drainDuration 45s --parentShutdownDuration 1m0s "
    "--discoveryAddress istiod.istio-system.svc:15012 --zipkinAddress zipkin.istio-system:9411 "
    "--proxyLogLevel=warning --proxyComponentLogLevel=misc:error --connectTimeout 10s --proxyAdminPort 15000 "
    "--concurrency 2 --controlPlaneAuthPolicy NONE --dnsRefreshRate 300s --statusPort 15020 "
    "--trust-domain=cluster.local --controlPlaneBootstrap=false"
).split()
POD_ENV = {"POD_NAME": "productpage-v1-abc", "POD_NAMESPACE": "ns1", "INSTANCE_IP": "10.1.1.7",
           "SERVICE_ACCOUNT": "bookinfo-productpage"}
ROOT = "./var/run/secrets/istio/root-cert.pem"
