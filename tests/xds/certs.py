"""Test PKI with the openssl CLI: a root CA and a server certificate for a DNS name (istiod's SAN)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path, san: str = "istiod.istio-system.svc") -> dict[str, Path]:
    """root-cert.pem (CA) plus server cert/key for `san`, signed by it; returns the paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "root-key.pem", "-out", "root-cert.pem", "-days", "1",
             "-subj", "/O=agent-test/CN=root", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/O=agent-test/CN=istiod",
             cwd=d)
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{san}\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem",
             "-CAcreateserial", "-out", "server-cert.pem", "-days", "1", "-extfile", "ext.cnf", cwd=d)
    return {"root": d / "root-cert.pem", "cert": d / "server-cert.pem", "key": d / "server-key.pem"}
