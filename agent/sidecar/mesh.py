"""The sidecar's mesh services: the secret manager (with the CA client), the SDS server and the
xDS proxy, built from the config and started by `Sidecar.startup()` before Envoy is spawned, in the
order Istio's agent starts them (https://github.com/istio/istio/blob/master/pkg/istio-agent/agent.go;
Istio starts its status server first, here it comes after Envoy's spawn):

0. the DNS proxy on 15053 when DNS capture is on (agent.mesh.dns), its table filled from the xDS
   proxy's NDS responses;
1. the secret manager, which asks the CA for the workload certificate at once (Istio waits for
   Envoy's first SDS request; asking now overlaps the CSR with Envoy's start);
2. the SDS server on `./var/run/secrets/workload-spiffe-uds/<WORKLOAD_IDENTITY_SOCKET_FILE>`, unless
   an external SDS server (SPIRE, say) serves that socket or, for a non-default name, is expected
   to (agent.mesh.sds.sds_owner);
3. the xDS proxy on `<configPath>/XDS`, relaying Envoy's ADS streams to istiod.

Each registers its stop on the sidecar's cleanup stack, so they stop after Envoy has drained. A
problem with their settings or files is a `StartupError` (one line, exit 255, Envoy never started).
This module imports grpc and the protobuf messages: the edge imports it only once start-up is decided.
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.mesh import ca_client, sds, secret_files, upstream, uds
from agent.mesh.ca_client import CAClient, CAClientOptions
from agent.mesh.dns import NOT_READY, DnsOptions, DnsProxy, DnsProxyError
from agent.mesh.keys import KeyOptions, WorkloadIdentity
from agent.mesh.secret_manager import SecretManager, SecretOptions
from agent.mesh.secrets import RotationPolicy
from agent.mesh.xds_proxy import XdsProxy, XdsProxyOptions
from agent.sidecar import logs
from agent.sidecar.config_env import WORKLOAD_IDENTITY_DIR
from agent.sidecar.config_model import SidecarConfig
from agent.sidecar.startup import StartupError

log = logs.get()

OnShutdown = Callable[[str, Callable[[], Awaitable[object]]], None]


@dataclass(slots=True)
class Mesh:
    """The running services; readiness and metrics read them."""

    secrets: SecretManager | None  # None: an external SDS server owns the workload certificate
    ca: CAClient | None
    sds: sds.SdsServer | None
    xds: XdsProxy
    awaited_sds: str | None = None  # the external SDS socket Envoy's secrets wait for
    dns: DnsProxy | None = None

    def dns_problem(self) -> str | None:
        return NOT_READY if self.dns is not None and not self.dns.ready else None

    def control_plane_problem(self) -> str | None:
        return self.xds.unreachable_reason()

    def certificate_problem(self) -> str | None:
        if self.awaited_sds and not os.path.exists(self.awaited_sds):
            return f"no certificate yet: no SDS server at {self.awaited_sds}"
        if self.ca is None or self.secrets is None or self.secrets.cert_expiry_seconds() is not None:
            return None  # an external SDS server or mounted files: nothing to wait for from the CA
        return f"no certificate yet: {self.secrets.last_error}" if self.secrets.last_error else "no certificate yet"


def ca_options(cfg: SidecarConfig, token: str) -> CAClientOptions:
    m = cfg.mesh
    address = ca_client.ca_address(m.ca_addr, cfg.discovery_address)
    ca_client.check_ca_provider(m.ca_provider, address)
    ca_client.check_credential_fetcher(m.credential_fetcher_type)
    root = None if ca_client.is_plaintext(address) else ca_client.ca_root_cert(
        m.ca_root_ca, m.pilot_cert_provider, m.prov_cert)
    return CAClientOptions(
        address=address, root_cert_path=root,
        server_name=ca_client.tls_server_name(address, cfg.istiod_san, ca_addr_set=bool(m.ca_addr)),
        token_path=token, cluster_id=m.cluster_id, headers=dict(m.ca_headers),
        cert_signer=m.cert_signer, client_cert_dir=m.prov_cert or None,
        keepalive_interval=m.keepalive_interval, keepalive_timeout=m.keepalive_timeout)


def secret_options(cfg: SidecarConfig, files: secret_files.CertPaths) -> SecretOptions:
    m = cfg.mesh
    key = KeyOptions(m.ecc_signature_algorithm, m.ecc_curve, m.rsa_key_size, m.pkcs8_key)
    key.validate()  # CSRError (a ValueError): a start-up error, not a CSR failing forever
    return SecretOptions(
        identity=WorkloadIdentity(cfg.trust_domain, cfg.pod_namespace, cfg.service_account),
        key=key,
        secret_ttl=m.secret_ttl, rotation=RotationPolicy(m.grace_ratio, m.grace_jitter), files=files,
        output_certs=m.output_certs, output_file_mode=0o644 if m.kubernetes else 0o600)


def upstream_options(cfg: SidecarConfig, token: str) -> upstream.UpstreamOptions:
    m = cfg.mesh
    client_cert = client_key = None
    if m.prov_cert:
        client_cert, client_key = os.path.join(m.prov_cert, "cert-chain.pem"), os.path.join(m.prov_cert, "key.pem")
    elif cfg.meta_env.get("TLS_CLIENT_CERT_CHAIN") and cfg.meta_env.get("TLS_CLIENT_KEY"):
        client_cert, client_key = cfg.meta_env["TLS_CLIENT_CERT_CHAIN"], cfg.meta_env["TLS_CLIENT_KEY"]
    return upstream.UpstreamOptions(
        address=cfg.discovery_address, auth_policy=upstream.AuthPolicy(cfg.control_plane_auth_policy),
        root_cert_path=None if cfg.xds_root_cert == "SYSTEM" else cfg.xds_root_cert,
        istiod_san=cfg.istiod_san, cluster_id=m.cluster_id, headers=m.xds_headers,
        token_path=token, client_cert=client_cert, client_key=client_key,
        keepalive_time=m.keepalive_interval, keepalive_timeout=m.keepalive_timeout)


async def start_mesh(cfg: SidecarConfig, on_shutdown: OnShutdown) -> Mesh:
    """Start the services in Istio's order; each registers its stop. StartupError on bad settings."""
    try:
        return await _start(cfg, on_shutdown)
    except (ca_client.CAConfigError, secret_files.SecretConfigError, upstream.UpstreamError, uds.UdsError,
            DnsProxyError, ValueError) as e:
        raise StartupError(str(e)) from None


def dns_options(cfg: SidecarConfig) -> DnsOptions:
    m = cfg.mesh
    timeout = {} if m.dns_forward_timeout is None else {"timeout": m.dns_forward_timeout}
    return DnsOptions(address=m.dns_proxy_addr, pod_namespace=cfg.pod_namespace, proxy_domain=cfg.domain,
                      forward_parallel=m.dns_forward_parallel, **timeout)


async def _start(cfg: SidecarConfig, on_shutdown: OnShutdown) -> Mesh:
    dns = None
    if cfg.mesh.dns_proxy:
        dns = DnsProxy(dns_options(cfg))
        await dns.start()
        on_shutdown("DNS proxy", dns.stop)
    socket_file = cfg.workload_identity_socket_file
    token = ca_client.token_path(cfg.mesh.jwt_policy)
    secrets = ca = sds_server = None
    owner = await sds.sds_owner(WORKLOAD_IDENTITY_DIR, socket_file)
    if owner is sds.SdsOwner.AGENT:
        use_ca, files = secret_files.cert_source(cfg.mesh.file_mounted_certs, cfg.mesh.prov_cert)
        if use_ca:
            ca = CAClient(ca_options(cfg, token))
            on_shutdown("CA client", ca.close)
        secrets = SecretManager(secret_options(cfg, files), ca)
        secrets.start()
        on_shutdown("secret manager", secrets.stop)
        if not cfg.mesh.disable_envoy:  # proxyless: the certificates go to OUTPUT_CERTS, not over SDS
            sds_server = sds.SdsServer(secrets, sds.SdsOptions(socket_path=f"{WORKLOAD_IDENTITY_DIR}/{socket_file}"))
            await sds_server.start()
            on_shutdown("SDS server", sds_server.stop)
    xds = XdsProxy(upstream_options(cfg, token), XdsProxyOptions(
        socket_path=cfg.xds_socket_path, request_name_table=dns is not None,
        request_proxy_config=cfg.mesh.proxy_config_xds_agent, keepalive_time=cfg.mesh.keepalive_interval,
        keepalive_timeout=cfg.mesh.keepalive_timeout),
        on_trust_bundle=secrets.update_trust_anchors if secrets else None,
        on_name_table=dns.on_name_table if dns else None)
    await xds.start()
    on_shutdown("xDS proxy", xds.stop)
    awaited = f"{WORKLOAD_IDENTITY_DIR}/{socket_file}" if owner is sds.SdsOwner.AWAITED else None
    return Mesh(secrets, ca, sds_server, xds, awaited, dns)
