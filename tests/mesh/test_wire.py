"""wire.string_field against protobuf's own encoder: the type URL of real xDS responses."""
from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from agent.mesh import wire

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _any(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_type_url_of_sotw_and_delta_responses_after_large_resources():
    resources = [_any(cluster_pb2.Cluster(name=f"c{i}", alt_stat_name="x" * 300)) for i in range(200)]
    sotw = discovery_pb2.DiscoveryResponse(version_info="7", resources=resources, type_url=CLUSTER, nonce="n",
                                           canary=True)
    delta = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="7", type_url=CLUSTER, nonce="n", removed_resources=["gone"],
        resources=[discovery_pb2.Resource(name="c", version="1", resource=resources[0])])
    for message in (sotw, delta):
        data = message.SerializeToString()
        assert wire.string_field(data, wire.TYPE_URL_FIELD) == CLUSTER
        assert wire.string_field(data, 5) == "n"
    assert wire.string_field(discovery_pb2.DiscoveryResponse().SerializeToString(), 4) == ""


@pytest.mark.parametrize("data", [b"\x22\x10abc", b"\x80", b"\x23", b"\x22"])
def test_malformed_bytes_raise_value_error(data):
    with pytest.raises(ValueError):
        wire.string_field(data, 4)
