"""aiohttp for the agent's HTTP clients, imported without reading the CA store.

When `aiohttp.connector` is imported it builds two default SSL contexts, each reading the system CA
store: about 45 ms here, between Envoy's spawn and the status server's first answer (measured with
`python -X importtime`; see docs/startup-cost.md). None of the agent's HTTP clients verifies a
certificate: Envoy's admin API and the metrics it merges are plain HTTP on loopback, and HTTPS app
probes skip verification as kubelet's do. So `import_aiohttp()` points the store at an empty file
for that one import and restores the environment right after.

The fence that keeps this safe: aiohttp's module-level contexts are then empty, so no session may
rely on them. Every session is built with an explicit connector: `plain_connector()` (no TLS
verification, for loopback and probes) or `verified_connector()` (a fresh default context that
reads the CA store when it is built). tests/unit/sidecar/test_http.py proves a verified request
still verifies, in the same process, after the import.
"""
from __future__ import annotations

import os
import ssl
import sys


def import_aiohttp() -> None:
    """Import aiohttp (once) without its import-time CA store reads; call before anything imports it."""
    if "aiohttp.connector" in sys.modules:
        return
    saved = {key: os.environ.get(key) for key in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    os.environ.update(SSL_CERT_FILE=os.devnull, SSL_CERT_DIR=os.devnull)
    try:
        import aiohttp.web  # noqa: F401
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def plain_connector(**kw):
    """A connector that never verifies certificates (loopback HTTP, app probes)."""
    import aiohttp

    return aiohttp.TCPConnector(ssl=False, **kw)


def verified_connector(cafile: str | None = None, **kw):
    """A connector that verifies servers against `cafile`, or the system store read now."""
    import aiohttp

    return aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=cafile), **kw)
