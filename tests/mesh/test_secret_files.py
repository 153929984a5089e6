"""Which files serve the identity, OUTPUT_CERTS writes, and the committed protos."""
from __future__ import annotations

import os
import stat

import pytest

from agent.mesh import secret_files
from agent.mesh.protos import ca_pb2, ca_pb2_grpc, nds_pb2, proxy_config_pb2
from agent.mesh.secret_files import CertPaths, SecretConfigError, cert_source

PROVISIONED = {f"./var/run/secrets/workload-spiffe-credentials/{f}"
               for f in ("cert-chain.pem", "key.pem", "root-cert.pem")}


def test_cert_source_order():
    nothing = lambda _: False  # noqa: E731
    assert cert_source(exists=nothing) == (True, CertPaths())
    assert cert_source(file_mounted_certs=True, exists=nothing) == (False, CertPaths())
    use_ca, paths = cert_source(file_mounted_certs=True, exists=PROVISIONED.__contains__)
    assert not use_ca and paths == CertPaths.in_dir("./var/run/secrets/workload-spiffe-credentials")
    assert cert_source(exists=lambda p: p in PROVISIONED and not p.endswith("key.pem"))[0]  # two of three
    assert CertPaths() == CertPaths.in_dir("./etc/certs")
    with pytest.raises(SecretConfigError,
                       match="invalid options: PROV_CERT and FILE_MOUNTED_CERTS are mutually exclusive"):
        cert_source(file_mounted_certs=True, prov_cert="/etc/prov")


def test_write_output_only_changed_files_with_the_mode(tmp_path):
    out = tmp_path / "out"
    secret_files.write_output(str(out), {"key.pem": b"k1", "root-cert.pem": b"r"}, 0o644)
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o644
    before = os.stat(out / "root-cert.pem").st_ino
    secret_files.write_output(str(out), {"key.pem": b"k2", "root-cert.pem": b"r"})
    assert (out / "key.pem").read_bytes() == b"k2"
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    assert os.stat(out / "root-cert.pem").st_ino == before  # unchanged: not rewritten


def test_write_output_error_is_logged_not_raised(tmp_path):
    (tmp_path / "file").write_text("x")
    secret_files.write_output(str(tmp_path / "file"), {"key.pem": b"k"})  # a file, not a directory


def test_protos_have_istio_names_and_field_numbers():
    req = ca_pb2.IstioCertificateRequest.DESCRIPTOR
    assert req.full_name == "istio.v1.auth.IstioCertificateRequest"
    assert {f.name: f.number for f in req.fields} == {"csr": 1, "validity_duration": 3, "metadata": 4}
    assert ca_pb2.IstioCertificateResponse.DESCRIPTOR.fields_by_name["cert_chain"].number == 1
    [method] = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"].methods
    assert f"/{method.containing_service.full_name}/{method.name}" == \
        "/istio.v1.auth.IstioCertificateService/CreateCertificate"
    assert hasattr(ca_pb2_grpc, "IstioCertificateServiceStub")
    info = nds_pb2.NameTable.NameInfo.DESCRIPTOR
    assert nds_pb2.NameTable.DESCRIPTOR.full_name == "istio.networking.nds.v1.NameTable"
    assert {f.name: f.number for f in info.fields} == {
        "ips": 1, "registry": 2, "shortname": 3, "namespace": 4, "alt_hosts": 5}
    pc = proxy_config_pb2.ProxyConfig.DESCRIPTOR
    assert pc.full_name == "istio.mesh.v1alpha1.ProxyConfig"
    assert pc.fields_by_name["ca_certificates_pem"].number == 34
