"""The secrets the agent serves to Envoy, and the interface the SDS server uses.

Resource names are the ones Envoy asks for over SDS: ``default`` (the workload
key and certificate), ``ROOTCA`` (the trust bundle), ``file-cert:<cert>~<key>``
and ``file-root:<path>`` (files named by istiod in its TLS settings).
"""

from __future__ import annotations

import enum
import hashlib
import random
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


# --- Resource names --------------------------------------------------------------------

WORKLOAD_NAME = "default"
ROOT_NAME = "ROOTCA"
FILE_CERT_PREFIX = "file-cert:"
FILE_ROOT_PREFIX = "file-root:"
SYSTEM_ROOT = "system"


class ResourceKind(enum.Enum):
    WORKLOAD = enum.auto()  # "default": the workload key and certificate
    ROOT = enum.auto()  # "ROOTCA": the workload trust bundle
    FILE_CERT = enum.auto()  # "file-cert:<cert>~<key>"
    FILE_ROOT = enum.auto()  # "file-root:<path>" or "file-root:system"


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    kind: ResourceKind
    cert_path: str = ""
    key_path: str = ""
    root_path: str = ""  # SYSTEM_ROOT for the OS bundle


def parse_name(name: str) -> Resource:
    """What an SDS resource name refers to; SecretError for a name this agent does not serve.

    Istio answers any other name with the workload certificate; that hands the
    workload key to a name nobody meant, so an unknown name is an error here.
    """
    if name == WORKLOAD_NAME:
        return Resource(name, ResourceKind.WORKLOAD)
    if name == ROOT_NAME:
        return Resource(name, ResourceKind.ROOT)
    if name.startswith(FILE_CERT_PREFIX):
        cert, sep, key = name.removeprefix(FILE_CERT_PREFIX).partition("~")
        if not sep or not cert or not key or "~" in key:
            raise SecretError(f"invalid SDS resource name {name!r}: want file-cert:<cert path>~<key path>")
        return Resource(name, ResourceKind.FILE_CERT, cert_path=cert, key_path=key)
    if name.startswith(FILE_ROOT_PREFIX):
        root = name.removeprefix(FILE_ROOT_PREFIX)
        if not root or "~" in root:
            raise SecretError(f"invalid SDS resource name {name!r}: want file-root:<ca path> or file-root:system")
        return Resource(name, ResourceKind.FILE_ROOT, root_path=root)
    raise SecretError(f"unknown SDS resource name {name!r}: this agent serves default, ROOTCA, "
                      "file-cert:<cert>~<key> and file-root:<path>")


def content_version(*parts: bytes | None) -> str:
    """A version that changes exactly when the content does (stable across restarts)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"\0" if part is None else b"\1" + part)
    return digest.hexdigest()[:16]


def merge_roots(root: bytes, extra: tuple[str, ...]) -> bytes:
    """The root with the extra trust anchors istiod pushes: de-duplicated, sorted by PEM text."""
    if not extra:
        return root
    blocks = {b.decode().strip() + "\n" for b in _cert_blocks(root)}
    blocks.update(b.decode().strip() + "\n" for e in extra for b in _cert_blocks(e.encode()))
    return "".join(sorted(blocks)).encode()


def _cert_blocks(data: bytes) -> list[bytes]:
    from agent.mesh.pem import cert_blocks  # cryptography stays out of this module's import

    return cert_blocks(data)


# --- Rotation: the pure core, driven by the times it is given --------------------------

@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """``SECRET_GRACE_PERIOD_RATIO`` and ``SECRET_GRACE_PERIOD_RATIO_JITTER``."""

    grace_ratio: float = 0.5
    jitter: float = 0.01

    def rotate_at(self, created_at: float, expires_at: float, u: float, sign: int) -> float:
        """When to renew: the grace period (ratio of the life left at receipt) before expiry.

        Timed from when the certificate was received, not its notBefore, as Istio
        does; ``u`` uniform in [0, 1) and ``sign`` +-1 spread the fleet's renewals.
        """
        ratio = min(max(self.grace_ratio + u * self.jitter * sign, 0.0), 1.0)
        return max(expires_at - ratio * (expires_at - created_at), created_at)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A workload certificate as the CA returned it."""

    cert_chain: bytes  # every element, leaf first, root included
    private_key: bytes
    root_cert: bytes  # the last element of the CA's chain
    created_at: float  # local time of receipt
    expires_at: float  # the leaf's notAfter


class WorkloadCache:
    """The one cached workload certificate, when to renew it, and what it serves."""

    def __init__(self, policy: RotationPolicy = RotationPolicy(), rng: random.Random | None = None):
        self.policy = policy
        self._rng = rng or random.Random()
        self.current: IssuedCert | None = None
        self.rotate_at: float | None = None
        self.extra_roots: tuple[str, ...] = ()

    def accept(self, issued: IssuedCert) -> list[str]:
        """Store a new certificate; the names whose content changed (ROOTCA on a new root)."""
        old_root = self.current.root_cert if self.current else None
        self.current = issued
        sign = 1 if self._rng.random() < 0.5 else -1
        self.rotate_at = self.policy.rotate_at(issued.created_at, issued.expires_at, self._rng.random(), sign)
        return [WORKLOAD_NAME] if old_root == issued.root_cert else [WORKLOAD_NAME, ROOT_NAME]

    def rotation_due(self, now: float) -> bool:
        return self.current is None or (self.rotate_at is not None and now >= self.rotate_at)

    def seconds_to_rotation(self, now: float) -> float:
        return 0.0 if self.rotate_at is None else max(self.rotate_at - now, 0.0)

    def expiry_seconds(self, now: float) -> float | None:
        """``cert_expiry_seconds``: negative once expired, None before the first certificate."""
        return None if self.current is None else self.current.expires_at - now

    def set_extra_roots(self, pems: tuple[str, ...]) -> bool:
        changed, self.extra_roots = pems != self.extra_roots, pems
        return changed

    def item(self, name: str, kind: ResourceKind) -> SecretItem | None:
        """``default`` (key and chain) or ``ROOTCA`` (root and extra anchors) from the cache."""
        c = self.current
        if c is None:
            return None
        if kind is ResourceKind.ROOT:
            root = merge_roots(c.root_cert, self.extra_roots)
            return SecretItem(name, None, None, root, content_version(root), None)
        return SecretItem(name, c.cert_chain, c.private_key, None,
                          content_version(c.cert_chain, c.private_key), c.expires_at)
