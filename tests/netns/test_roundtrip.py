"""For every flag family: apply in a fresh pod, then --verify says in place, a re-run changes
nothing, --verify with other flags says not in place, and --cleanup-only gives the pristine state
back. This is where Istio's rule text meets iptables-save's rendering of it (marks in hex,
implicit `-m tcp`, CT zones, multiport, TPROXY options...), for both iptables backends; and where
the nft script meets `nft list`'s rendering of it (`native`: --native-nftables)."""
from __future__ import annotations

import pytest

from tests.netns.backends import flags, nft_ruleset, state
from tests.support.netns import rules_only

BASE = ["-p", "15001", "-z", "15006", "-u", "1337"]
VARIANTS = {
    "redirect-init": ["-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15020"],
    "tproxy": ["-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15090", "-t", "1337", "-r", "133"],
    "tproxy-port-list": ["-m", "TPROXY", "-i", "10.0.0.0/8", "-b", "8080,9090"],
    "dns": ["-i", "*", "-b", "*", "--redirect-dns"],
    "dns-capture-all": ["-i", "*", "-b", "*", "--redirect-dns", "--capture-all-dns", "-g", "1337,1338"],
    "drop-invalid-interfaces": ["-i", "*", "-b", "*", "--drop-invalid", "-c", "eth9,eth8", "-k", "vk0,vk1"],
    "cidrs-ports": ["-i", "198.18.0.0/16,10.1.2.3/8", "-x", "198.18.0.20/32", "-b", "8080", "-o", "9090,9091",
                    "-q", "7000"],
    "loopback-include": ["-i", "127.0.0.0/8,198.18.0.0/16", "-b", "*", "-u", "1337,1338"],
}
IPV6_VARIANTS = {
    "ipv6-redirect": ["-i", "*", "-b", "*", "-d", "15020", "-x", "2001:db8::20/128"],
    "ipv6-tproxy-dns": ["-m", "TPROXY", "-i", "*", "-b", "*", "--redirect-dns"],
}
CASES = [(name, args, False, backend) for name, args in VARIANTS.items() for backend in ("nft", "legacy", "native")]
CASES += [(name, args, True, backend) for name, args in IPV6_VARIANTS.items() for backend in ("nft", "native")]


@pytest.mark.parametrize("name,args,ipv6,backend", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_apply_verify_rerun_cleanup(pod_factory, name, args, ipv6, backend):
    pod = pod_factory(ipv4=True, ipv6=ipv6, nameservers=["198.18.0.20", "2001:db8::20"])
    env = {"FORCE_IPTABLES_BINARY": backend} if backend != "native" else {}
    argv = flags("nft" if backend == "native" else "iptables") + BASE + args + (["--dual-stack"] if ipv6 else [])

    def snapshot() -> str:
        return rules_only(pod.save_all()) + nft_ruleset(pod.ns)

    pristine = snapshot()
    res = pod.istio_iptables(*argv, env=env)
    assert res.returncode == 0, res.stderr
    applied = state(pod)
    res = pod.istio_iptables(*argv, "--verify", env=env)
    assert (res.returncode, res.stdout) == (0, ""), res.stdout + res.stderr
    res = pod.istio_iptables(*argv, env=env)
    assert res.returncode == 0 and "already in place" in res.stderr, res.stderr
    assert state(pod) == applied
    other = pod.istio_iptables(*argv, "-o", "4444", "--verify", env=env)
    assert other.returncode == 1 and "4444" in other.stdout, other.stdout
    res = pod.istio_iptables(*argv, "--cleanup-only", env=env)
    assert res.returncode == 0, res.stderr
    assert snapshot() == pristine
