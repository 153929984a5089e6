"""Fixtures for the real sidecar suites: namespaces that are always deleted, agents always killed."""
from __future__ import annotations


from tests.netns.conftest import netns_factory, pod_factory  # noqa: F401  (re-exported fixtures)
