"""Joining the mesh: the workload identity (keys, CSR, CA client, secret manager),
the SDS server Envoy reads its certificates from, and the xDS proxy in front of istiod.

The modules here take typed options and never read the environment, so the sidecar
start-up decides where the settings come from.
"""
