"""Certificates on disk: which files serve the workload identity, reading them
safely, noticing when they change, and writing ``OUTPUT_CERTS``.

Istio's code: https://github.com/istio/istio/blob/master/security/pkg/nodeagent/cache/secretcache.go
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from agent.mesh import pem
from agent.mesh.secrets import SYSTEM_ROOT, SecretError
from agent.sidecar import logs

log = logs.get("cache")

WORKLOAD_CREDENTIALS_DIR = "./var/run/secrets/workload-spiffe-credentials"
LEGACY_CERTS_DIR = "./etc/certs"


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where ``default`` (cert + key) and ``ROOTCA`` (root) are read from when present."""

    cert_chain: str = f"{LEGACY_CERTS_DIR}/cert-chain.pem"
    key: str = f"{LEGACY_CERTS_DIR}/key.pem"
    root: str = f"{LEGACY_CERTS_DIR}/root-cert.pem"

    @classmethod
    def in_dir(cls, directory: str) -> CertPaths:
        return cls(*(os.path.join(directory, f) for f in ("cert-chain.pem", "key.pem", "root-cert.pem")))


class SecretConfigError(ValueError):
    """The certificate options contradict each other (start-up error, one line)."""


def cert_source(file_mounted_certs: bool = False, prov_cert: str = "",
                exists: Callable[[str], bool] = os.path.exists) -> tuple[bool, CertPaths]:
    """(whether a CA client is needed, the file paths) for ``FILE_MOUNTED_CERTS`` / ``PROV_CERT``.

    Pre-provisioned workload credentials (all three files) win, then
    ``FILE_MOUNTED_CERTS`` (the legacy ``./etc/certs``); otherwise certificates
    come from the CA, and a mounted ``./etc/certs`` pair still wins when present.
    """
    if prov_cert and file_mounted_certs:
        raise SecretConfigError("invalid options: PROV_CERT and FILE_MOUNTED_CERTS are mutually exclusive")
    provisioned = CertPaths.in_dir(WORKLOAD_CREDENTIALS_DIR)
    if all(exists(p) for p in (provisioned.cert_chain, provisioned.key, provisioned.root)):
        log.info("workload certificate files detected, creating secret manager without caClient")
        return False, provisioned
    if file_mounted_certs:
        log.info("Workload is using file mounted certificates. Skipping connecting to CA")
        return False, CertPaths()
    return True, CertPaths()


def non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def signature(*paths: str) -> tuple:
    """What identifies the files' current content; stat follows symlinks, so a
    Kubernetes secret volume's ``..data`` swap changes it too."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise SecretError(f"cannot read {path}: {err.strerror}") from None


async def read_pair(cert_path: str, key_path: str, debounce: float = 0.1,
                    timeout: float = 10.0) -> tuple[bytes, bytes]:
    """The certificate chain and key, once they belong together.

    A pair being replaced is briefly a new certificate with the old key: retry
    with a growing wait from ``debounce`` for up to ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline, wait = loop.time() + timeout, debounce
    while True:
        chain, key = _read(cert_path), _read(key_path)
        try:
            pem.check_key_pair(chain, key)
            return chain, key
        except pem.PEMError as err:
            if loop.time() + wait > deadline:
                raise SecretError(f"invalid certificate pair {cert_path} / {key_path}: {err}") from None
        await asyncio.sleep(wait)
        wait *= 2


def read_root(path: str) -> bytes:
    """The valid certificates of a root file (``system`` = the OS bundle)."""
    if path == SYSTEM_ROOT:
        found = pem.system_bundle_path()
        if found is None:
            raise SecretError("no system trust bundle found for file-root:system")
        path = found
    try:
        return pem.valid_bundle(_read(path), path)
    except pem.PEMError as err:
        raise SecretError(str(err)) from None


def write_output(directory: str, files: dict[str, bytes], mode: int = 0o600) -> None:
    """Write ``OUTPUT_CERTS`` files whose content changed, each atomically with ``mode``.

    The file is created with its final mode before any byte is written, so a key
    is never readable by others even for a moment. Errors are logged, not raised.
    """
    for name, data in files.items():
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        except OSError:
            pass
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
            try:
                os.fchmod(fd, mode)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as err:
            log.error(f"failed to write {path} for OUTPUT_CERTS: {err.strerror}")
