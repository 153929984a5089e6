"""Rule goldens of our own, one or more per flag family: the whole dry-run transcript.

Refresh (then review the diff in git): UPDATE_GOLDENS=1 /opt/agent/bin/python -m pytest tests/unit/iptables/test_rules_golden.py
Istio's own goldens are checked by ../shared/conformance/istio-iptables/check.py (36/36).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from agent.iptables.host import HostFacts

from ._support import transcript

GOLDEN = Path(__file__).parent / "golden"
V4 = HostFacts(enable_ipv6=False, host_ip="198.18.0.10")
V6 = HostFacts(enable_ipv6=True, host_ip="2001:db8::10")
DNS4 = HostFacts(dns_v4=("198.18.0.20",))
DNS46 = HostFacts(enable_ipv6=True, host_ip="2001:db8::10", dns_v4=("198.18.0.20",), dns_v6=("2001:db8::20",))
INIT_2020 = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
             "-d", "15090,15020"]

# name -> (argv, env, host facts)
CASES = {
    "init-2020": (INIT_2020, {}, V4),
    "init-2020-ipv6": (INIT_2020, {}, V6),
    "defaults": ([], {}, V4),
    "ports-custom": (["-p", "16001", "-z", "16006", "-e", "16008", "-b", "*"], {}, V4),
    "inbound-list-ignores-d": (["-b", "80,443,", "-d", "15020"], {}, V4),
    "inbound-env": ([], {"ISTIO_INBOUND_PORTS": "8080", "INBOUND_CAPTURE_PORT": "15106"}, V4),
    "tproxy-wildcard": (["-m", "TPROXY", "-b", "*", "-d", "15020", "-t", "7", "-r", "70"], {}, V4),
    "tproxy-ports-ipv6": (["-m", "TPROXY", "-b", "80,81"], {}, V6),
    "tproxy-no-inbound": (["-m", "TPROXY", "-b", ""], {}, V4),
    "exclude-interfaces": (["-c", "eth1,eth2", "-b", "*"], {}, V4),
    "exclude-interfaces-tproxy": (["-c", "eth1", "-b", "*", "-m", "TPROXY"], {}, V4),
    "kube-virt-wildcard": (["-k", "eth1,eth2", "-i", "*"], {}, V4),
    "kube-virt-cidrs-ipv6": (["-k", "eth1", "-i", "10.0.0.0/8,2001:db8::/32"], {}, V6),
    "cidrs-mixed-ipv6": (["-i", "10.0.0.1/8,2001:DB8::/32", "-x", "10.1.0.0/16,2001:db8:1::/48"], {}, V6),
    "cidrs-ipv6-off": (["-i", "10.0.0.0/8,2001:db8::/32", "-x", "2001:db8:1::/48"], {}, V4),
    "loopback-include": (["-i", "127.0.0.0/8"], {}, V6),
    "outbound-ports": (["-q", "3306,5432", "-o", "15020,9000"], {}, V4),
    "uid-gid-lists": (["-u", "1337,0", "-g", "1337,istio-proxy"], {}, V4),
    "uid-names": (["-u", "istio-proxy"], {}, V4),
    "envoy-user-default": ([], {"ENVOY_USER": "app"}, V4),
    "owner-groups-include": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"}, V4),
    "owner-groups-exclude": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"}, V6),
    "owner-groups-empty-include": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ""}, V4),
    "dns-v4": (["--redirect-dns", "-i", "*"], {}, DNS4),
    "dns-v4-server-ipv6-on": (["--redirect-dns"], {}, HostFacts(enable_ipv6=True, dns_v4=("198.18.0.20",))),
    "dns-both-families": (["--redirect-dns", "-u", "3,4", "-g", "1,2"], {}, DNS46),
    "dns-capture-all": (["--redirect-dns", "--capture-all-dns"], {}, V6),
    "dns-env-alias": ([], {"ISTIO_META_DNS_CAPTURE": "true"}, DNS4),
    "dns-no-servers": (["--redirect-dns"], {}, V4),
    "drop-invalid": (["--drop-invalid"], {}, V6),
    "drop-invalid-env-alias": ([], {"INVALID_DROP": "true"}, V4),
    "loopback-cidr": ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"}, V4),
    "cleanup-only": (INIT_2020 + ["--cleanup-only"], {}, V4),
    "cleanup-only-ipv6-tproxy": (["-m", "TPROXY", "-b", "*", "-i", "*", "--cleanup-only"], {}, V6),
    "skip-rule-apply": (INIT_2020 + ["--skip-rule-apply", "--run-validation"], {}, V4),
    "everything": (["-m", "TPROXY", "-b", "*", "-d", "15020", "-c", "eth9", "-k", "eth1", "-i", "*",
                    "-x", "10.0.0.0/8", "-q", "9000", "-o", "15021", "--drop-invalid", "--redirect-dns"],
                   {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888"}, DNS46),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, goldens):
    argv, env, facts = CASES[name]
    goldens.check(GOLDEN / f"{name}.golden", transcript(argv, env, facts))


def test_no_stale_goldens():
    assert sorted(p.stem for p in GOLDEN.glob("*.golden")) == sorted(CASES)
