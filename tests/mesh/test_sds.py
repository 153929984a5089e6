"""The SDS server over a real Unix socket, driven by a grpcio client stream as Envoy drives it."""
from __future__ import annotations

import os
import shutil
import socket

import grpc
import grpc.aio
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from agent.mesh import sds, uds
from tests.mesh.sds_fakes import SPIFFE_ID, FakeProvider, short_tmp
from tests.mesh.streams import Stream, nothing_within

NODE = base_pb2.Node(id="sidecar~198.18.0.10~productpage-v1.ns1~ns1.svc.cluster.local")


@pytest.fixture
def sock_dir():
    d = short_tmp("sds")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def served(sock_dir):
    provider = FakeProvider()
    server = sds.SdsServer(provider, sds.SdsOptions(socket_path=f"{sock_dir}/uds/socket", crl_path=None))
    await server.start()
    channel = grpc.aio.insecure_channel(uds.grpc_target(server.path))
    yield provider, server, sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    await channel.close()
    await server.stop(0)


def request(names, nonce="", version="", node=True, error=None):
    req = discovery_pb2.DiscoveryRequest(type_url=sds.SECRET_TYPE, resource_names=names, response_nonce=nonce,
                                         version_info=version)
    if node:
        req.node.CopyFrom(NODE)
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req


def secrets_of(response) -> list[secret_pb2.Secret]:
    out = []
    for resource in response.resources:
        secret = secret_pb2.Secret()
        assert resource.Unpack(secret)
        out.append(secret)
    return out


async def test_default_and_rootca_then_ack_nack_and_rotation(served):
    provider, server, stub = served
    call = Stream(stub.StreamSecrets())
    await call.write(request(["default"]))
    first = await call.read()
    assert first.type_url == sds.SECRET_TYPE and first.nonce and "/" in first.version_info
    (secret,) = secrets_of(first)
    assert secret.name == "default"
    chain = secret.tls_certificate.certificate_chain.inline_bytes
    assert chain == provider.items["default"].cert_chain
    assert secret.tls_certificate.private_key.inline_bytes == provider.items["default"].private_key
    uri = x509.load_pem_x509_certificate(chain).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert uri.value.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_ID]

    await call.write(request(["default"], nonce=first.nonce, version=first.version_info, node=False))
    assert await nothing_within(call), "an ACK is answered with nothing"
    await call.write(request(["default"], nonce=first.nonce, node=False, error="bad key"))
    assert await nothing_within(call), "a NACK is answered with nothing"

    rotated = provider.rotate("default")
    pushed = await call.read()
    assert pushed.nonce != first.nonce and pushed.version_info != first.version_info
    assert secrets_of(pushed)[0].tls_certificate.certificate_chain.inline_bytes == rotated.cert_chain

    root_call = Stream(stub.StreamSecrets())
    await root_call.write(request(["ROOTCA"]))
    (root,) = secrets_of(await root_call.read())
    assert root.name == "ROOTCA" and root.validation_context.trusted_ca.inline_bytes == provider.ca.root_pem
    provider.rotate("other")
    assert await nothing_within(root_call) and await nothing_within(call), "streams not watching it ignore it"
    call.cancel()
    root_call.cancel()


async def test_added_names_only_and_stale_nonce(served):
    _, _, stub = served
    call = Stream(stub.StreamSecrets())
    await call.write(request(["default"]))
    first = await call.read()
    await call.write(request(["default", "ROOTCA"], nonce="not-the-last", node=False))
    assert await nothing_within(call), "a stale nonce is ignored"
    await call.write(request(["default", "ROOTCA"], nonce=first.nonce, node=False))
    added = await call.read()
    assert [s.name for s in secrets_of(added)] == ["ROOTCA"]
    await call.write(request(["ROOTCA"], nonce=added.nonce, node=False))
    assert await nothing_within(call), "removing a name sends nothing"
    call.cancel()


async def test_file_names_unknown_names_and_system_root(served, sock_dir):
    provider, server, stub = served
    root_file = os.path.join(sock_dir, "root.pem")
    with open(root_file, "wb") as f:
        f.write(provider.ca.root_pem)
    call = Stream(stub.StreamSecrets())
    await call.write(request([f"file-root:{root_file}", "kubernetes://foo", "file-cert:only-one-part"]))
    file_root, unknown, malformed = secrets_of(await call.read())
    assert file_root.validation_context.trusted_ca.inline_bytes == provider.ca.root_pem
    assert unknown.name == "kubernetes://foo"
    assert unknown.tls_certificate.certificate_chain.inline_bytes == provider.items["default"].cert_chain
    assert malformed.tls_certificate.private_key.inline_bytes == provider.items["default"].private_key
    assert sds.provider_name("file-root:system", (root_file,)) == f"file-root:{root_file}"
    assert sds.provider_name("file-root:system", ("/nonexistent",)) == "default"
    assert sds.provider_name("file-root:a~b") == "default"
    assert sds.provider_name("file-cert:/c.pem~/k.pem") == "file-cert:/c.pem~/k.pem"
    call.cancel()


async def test_missing_node_and_failing_secret_end_the_stream(served):
    provider, _, stub = served
    call = Stream(stub.StreamSecrets())
    await call.write(request(["default"], node=False))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "missing node information"

    provider.error = "create certificate: rpc error: code = Unavailable"
    call = Stream(stub.StreamSecrets())
    await call.write(request(["default"]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.UNKNOWN
    assert e.value.details() == "failed to generate secret for default: create certificate: rpc error: code = Unavailable"


async def test_delta_and_fetch_are_unimplemented(served):
    _, server, stub = served
    delta = Stream(stub.DeltaSecrets())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await delta.read()
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and e.value.details() == "DeltaSecrets not implemented"
    assert oct(os.stat(server.path).st_mode & 0o777) == "0o666"
    assert oct(os.stat(os.path.dirname(server.path)).st_mode & 0o777) == "0o750"


async def test_who_owns_the_sds_socket(sock_dir):
    assert await sds.sds_owner(sock_dir) is sds.SdsOwner.AGENT
    dead = os.path.join(sock_dir, "socket")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(dead)  # a socket file with nobody listening: removed
    assert await sds.sds_owner(sock_dir) is sds.SdsOwner.AGENT and not os.path.exists(dead)

    other = sds.SdsServer(FakeProvider(), sds.SdsOptions(socket_path=dead))
    await other.start()
    try:
        assert await sds.sds_owner(sock_dir) is sds.SdsOwner.EXTERNAL
    finally:
        await other.stop(0)
    # A non-default name nobody serves yet: an external server is expected (Istio refuses to start).
    assert await sds.sds_owner(sock_dir, "spire") is sds.SdsOwner.AWAITED
    with pytest.raises(uds.UdsError, match="must be a filename, not a path: a/b"):
        await sds.sds_owner(sock_dir, "a/b")


async def test_socket_path_too_long_is_one_clear_error(sock_dir):
    path = os.path.join(sock_dir, "x" * 120, "socket")
    server = sds.SdsServer(FakeProvider(), sds.SdsOptions(socket_path=path))
    with pytest.raises(uds.UdsError) as e:
        await server.start()
    assert str(e.value) == (f'SDS socket path "{path}" is {len(path)} bytes; the kernel allows at most 107 '
                            "(sun_path)")
    assert not os.path.exists(os.path.dirname(path)), "nothing created"


async def test_bind_failure_names_the_path_and_the_reason(sock_dir):
    blocker = os.path.join(sock_dir, "not-a-dir")
    with open(blocker, "w"):
        pass
    path = os.path.join(blocker, "socket")
    with pytest.raises(uds.UdsError) as e:
        await sds.SdsServer(FakeProvider(), sds.SdsOptions(socket_path=path)).start()
    assert str(e.value) == f'failed to listen on SDS socket "{path}": Not a directory'
