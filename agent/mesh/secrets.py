"""The secrets the agent serves to Envoy, and the interface the SDS server uses.

Resource names are the ones Envoy asks for over SDS: ``default`` (the workload
key and certificate), ``ROOTCA`` (the trust bundle), ``file-cert:<cert>~<key>``
and ``file-root:<path>`` (files named by istiod in its TLS settings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class SecretError(Exception):
    """A secret cannot be served: unknown or malformed name, unreadable file."""


@dataclass(frozen=True, slots=True)
class SecretItem:
    name: str  # resource name as Envoy asked: "default", "ROOTCA", "file-cert:...", "file-root:..."
    cert_chain: bytes | None  # PEM, leaf first; None for a root-only item
    private_key: bytes | None  # PEM; None for a root-only item
    root_cert: bytes | None  # PEM trust bundle; None for a cert-only item
    version: str  # changes whenever the content changes
    expires_at: float | None  # unix time of the leaf's notAfter


class SecretProvider(Protocol):
    async def secret(self, name: str) -> SecretItem:
        """Wait until ``name`` is available; raise SecretError if it cannot be."""
        ...

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(name)`` whenever a secret changes; return the unsubscribe."""
        ...
