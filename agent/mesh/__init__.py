"""Joining the mesh: the workload identity (keys, CSR, CA client, secret manager).

The modules here are self-contained: they take typed options and never read the
environment, so the sidecar start-up decides where the settings come from.
"""
