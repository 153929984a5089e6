"""The pure rotation/caching core and resource names, driven by a fake clock."""
from __future__ import annotations

import random

import pytest

from agent.mesh.secrets import (IssuedCert, ResourceKind, RotationPolicy, SecretError, WorkloadCache,
                                merge_roots, parse_name)
from tests.mesh.ca_server import TestPKI

DAY = 86400.0


def test_resource_names():
    assert parse_name("default").kind is ResourceKind.WORKLOAD
    assert parse_name("ROOTCA").kind is ResourceKind.ROOT
    r = parse_name("file-cert:/etc/c.pem~/etc/k.pem")
    assert (r.kind, r.cert_path, r.key_path) == (ResourceKind.FILE_CERT, "/etc/c.pem", "/etc/k.pem")
    r = parse_name("file-root:/etc/ca.pem")
    assert (r.kind, r.root_path) == (ResourceKind.FILE_ROOT, "/etc/ca.pem")
    assert parse_name("file-root:system").root_path == "system"


@pytest.mark.parametrize("name", ["file-cert:a", "file-cert:a~b~c", "file-cert:~k", "file-root:a~b",
                                  "file-root:", "kubernetes://secret", "", "Default"])
def test_names_not_served_are_errors(name):
    with pytest.raises(SecretError, match="SDS resource name"):
        parse_name(name)


def test_rotation_at_half_life_with_one_percent_jitter_from_receipt():
    policy = RotationPolicy()
    created, expires = 1000.0, 1000.0 + DAY
    assert policy.rotate_at(created, expires, 0.0, 1) == created + DAY / 2
    latest = policy.rotate_at(created, expires, 0.999999, -1)
    earliest = policy.rotate_at(created, expires, 0.999999, 1)
    assert abs(latest - (created + DAY / 2 + 0.01 * DAY)) < 1  # 12 h + 14.4 min
    assert abs(earliest - (created + DAY / 2 - 0.01 * DAY)) < 1
    # Received late in its life (clock skew, slow CA): half of what is left, not of notBefore..notAfter.
    assert policy.rotate_at(created, created + 100, 0.0, 1) == created + 50


def test_ratio_is_clamped():
    assert RotationPolicy(1.0, 0.5).rotate_at(10.0, 110.0, 0.9, 1) == 10.0  # ratio 1: renew at once
    assert RotationPolicy(0.0, 0.5).rotate_at(10.0, 110.0, 0.9, -1) == 110.0  # ratio 0: at expiry


def _issued(root: bytes, created: float, lifetime: float, n: int) -> IssuedCert:
    return IssuedCert(f"chain{n}".encode(), f"key{n}".encode(), root, created, created + lifetime)


def test_cache_with_a_fake_clock():
    pki = TestPKI()
    cache = WorkloadCache(RotationPolicy(0.5, 0.0), random.Random(1))
    assert cache.rotation_due(0.0) and cache.item("default", ResourceKind.WORKLOAD) is None
    assert cache.expiry_seconds(0.0) is None
    assert cache.accept(_issued(pki.root_pem, 100.0, 60.0, 1)) == ["default", "ROOTCA"]  # first root
    first = cache.item("default", ResourceKind.WORKLOAD)
    root1 = cache.item("ROOTCA", ResourceKind.ROOT)
    assert (first.cert_chain, first.private_key, first.root_cert, first.expires_at) == \
        (b"chain1", b"key1", None, 160.0)
    assert root1.root_cert == pki.root_pem and root1.cert_chain is None and root1.private_key is None
    assert not cache.rotation_due(129.9) and cache.rotation_due(130.0)
    assert cache.seconds_to_rotation(120.0) == 10.0
    assert cache.expiry_seconds(170.0) == -10.0
    assert cache.accept(_issued(pki.root_pem, 131.0, 60.0, 2)) == ["default"]  # same root
    second = cache.item("default", ResourceKind.WORKLOAD)
    assert second.version != first.version
    assert cache.item("ROOTCA", ResourceKind.ROOT).version == root1.version
    assert not cache.rotation_due(160.9) and cache.rotation_due(161.0)
    other = TestPKI()
    assert cache.accept(_issued(other.root_pem, 162.0, 60.0, 3)) == ["default", "ROOTCA"]
    assert cache.item("ROOTCA", ResourceKind.ROOT).root_cert == other.root_pem


def test_extra_trust_anchors_are_merged_sorted_and_deduplicated():
    a, b = TestPKI().root_pem, TestPKI().root_pem
    merged = merge_roots(a, (b.decode(), a.decode()))
    blocks = [blk for blk in merged.decode().split("-----END CERTIFICATE-----\n") if blk]
    assert len(blocks) == 2 and blocks == sorted(blocks)
    assert merge_roots(a, ()) == a
    cache = WorkloadCache()
    cache.accept(_issued(a, 0.0, 60.0, 1))
    before = cache.item("ROOTCA", ResourceKind.ROOT).version
    assert cache.set_extra_roots((b.decode(),)) and not cache.set_extra_roots((b.decode(),))
    after = cache.item("ROOTCA", ResourceKind.ROOT)
    assert after.version != before and b in after.root_cert and a in after.root_cert
