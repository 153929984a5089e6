"""The image suite. `image`-marked tests build the proxyv2 image (docker/build-local.sh, layer-cached)
and run a pod from it; they are slow, so CI runs them as their own stage:

    /opt/agent/bin/python -m pytest tests -m "not image"     # everything else
    /opt/agent/bin/python -m pytest tests -m image           # this stage

AGENT_IMAGE=<name> tests another image; AGENT_IMAGE_BUILD=0 uses it as is (no build).
The Kubernetes-example tests here (test_k8s_examples.py) are not marked: they run the host's agent.
"""
from __future__ import annotations

import os

import pytest

from tests.image.container import DEFAULT_IMAGE, Image


@pytest.fixture(scope="session")
def proxyv2_image() -> Image:
    return Image.build(os.environ.get("AGENT_IMAGE", DEFAULT_IMAGE))
