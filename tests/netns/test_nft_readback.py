"""Every nft golden case (tests/unit/iptables/nft_golden: Istio's 28 and our 7 derived), applied for
real by `pilot-agent istio-iptables --native-nftables` in a namespace whose address and resolv.conf
give the case's host facts, against the same golden loaded with one bare `nft -f -` in another:

* the two namespaces list the same ruleset: what we apply is Istio's transaction;
* `--verify` says in place and a re-run changes nothing: reading `nft list` back (whose spelling
  differs from the script's in a dozen ways) agrees with the script for every rule form;
* `--cleanup-only` leaves no table behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.netns.backends import nft_ruleset
from tests.support.netns import Netns
from tests.support.process import PILOT_AGENT

GOLDEN = Path(__file__).resolve().parent.parent / "unit" / "iptables" / "nft_golden"
CASES = [c for c in json.loads((GOLDEN / "cases.json").read_text())
         if not {"--skip-rule-apply", "--cleanup-only"} & set(c["args"])]
#: group names some cases' rules carry; nft resolves them when it loads the script
GROUPS = ("java", "ftp")


def host_ns(case: dict) -> Netns:
    """A namespace with the case's host facts: its first address and its resolv.conf servers."""
    ns = Netns.create("rb")
    host = case["host"]
    ns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])  # no dummy module here
    if host.get("enable_ipv6"):
        ns.run(["ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"])
    else:
        ns.run(["ip", "addr", "add", "198.18.0.2/24", "dev", "eth0"])
    for dev in ("eth0", "eth0p"):
        ns.run(["ip", "link", "set", dev, "up"])
    servers = host.get("dns_servers_v4", []) + host.get("dns_servers_v6", [])
    (ns.etc_dir / "resolv.conf").write_text("".join(f"nameserver {s}\n" for s in servers) or "# none\n")
    groups = Path("/etc/group").read_text()
    known = {line.split(":")[0] for line in groups.splitlines()}
    extra = "".join(f"{g}:x:{20000 + i}:\n" for i, g in enumerate(GROUPS) if g not in known)
    (ns.etc_dir / "group").write_text(groups + extra)
    return ns


def agent(ns: Netns, case: dict, *extra: str):
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **case["env"]}
    return ns.run([PILOT_AGENT, "istio-iptables", "--native-nftables", *case["args"], *extra], check=False, env=env)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_applied_golden_reads_back_as_in_place(case):
    ours, bare = host_ns(case), host_ns(case)
    try:
        res = agent(ours, case)
        assert res.returncode == 0, res.stderr
        golden = (GOLDEN / f"{case['name']}.golden").read_text()
        bare.run(["nft", "-f", "-"], input=golden)
        listing = nft_ruleset(ours)
        assert listing == nft_ruleset(bare) and listing
        res = agent(ours, case, "--verify")
        assert (res.returncode, res.stdout) == (0, ""), res.stdout + res.stderr
        handles = nft_ruleset(ours, handles=True)
        res = agent(ours, case)
        assert res.returncode == 0 and "already in place" in res.stderr, res.stderr
        assert nft_ruleset(ours, handles=True) == handles
        res = agent(ours, case, "--cleanup-only")
        assert res.returncode == 0, res.stderr
        assert nft_ruleset(ours) == ""
    finally:
        ours.close()
        bare.close()
