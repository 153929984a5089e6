"""Every nft golden (Istio's 28 and the 7 derived ones, nft_golden/README.md) is what the dry run
of its command line prints, byte for byte, on its host; in-process, so the whole table runs in well
under a second. The same cases are checked as real commands in real namespaces by the conformance
checker (README: Native nftables) and loaded by the real nft in test_nft_load.py."""
from __future__ import annotations

import pytest

from ._nft_support import BY_NAME, CASES, NAMES, expected, script


@pytest.mark.parametrize("name", NAMES)
def test_dry_run_prints_the_golden(name):
    case = BY_NAME[name]
    rc, out, err = script(case)
    assert rc == 0, err
    assert out == expected(case)
    assert "add rule" not in err  # the script goes to stdout only; logs to stderr


def test_the_table_is_whole():
    """28 of Istio's, 7 derived: a case lost from cases.json would silently shrink the bar."""
    origins = [c["origin"] for c in CASES]
    assert (origins.count("istio"), origins.count("derived")) == (28, 7)


def test_canonical_resolver_text_is_expected():
    """Istio's golden says ::127.0.0.53; the command prints what it read from resolv.conf, canonical."""
    text = expected(BY_NAME["dns-uid-gid"])
    assert "ip6 daddr ::7f00:35/128" in text and "::127.0.0.53" not in text
