"""The two capture backends the real-traffic tests prove: `iptables` (the default) and `nft`
(`--native-nftables`: Istio's `inet istio-proxy-*` tables, one `nft -f -`).

    res = init(pod, backend, *INIT_ARGS)            # pilot-agent istio-iptables [--native-nftables] ...
    before = state(pod)                             # every rule of both, to prove a run changed nothing
"""
from __future__ import annotations

import subprocess

from tests.support.netns import Netns, Pod

BACKENDS = ("iptables", "nft")


def flags(backend: str) -> list[str]:
    return ["--native-nftables"] if backend == "nft" else []


def init(pod: Pod, backend: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pilot-agent istio-iptables` with this backend, inside the pod (never checked)."""
    return pod.istio_iptables(*flags(backend), *args, env=env)


def nft_ruleset(ns: Netns, handles: bool = False) -> str:
    """The `inet` tables (only the nft mode writes that family; iptables-nft uses ip and ip6),
    without counters; with `handles`, each rule's handle too, which changes when a rule is
    re-created, so two equal listings with handles mean nothing was rewritten."""
    return ns.run(["nft", "-s", *(["-a"] if handles else []), "list", "ruleset", "inet"]).stdout


def state(pod: Pod) -> str:
    """Every rule anywhere: both iptables backends and families, and the nft `inet` tables with
    their handles."""
    return pod.save_all() + "## nft -a list ruleset inet\n" + nft_ruleset(pod.ns, handles=True)


def has_capture(pod: Pod, backend: str, v6: bool = False) -> bool:
    """Whether rules of ours for that family are live."""
    if backend == "iptables":
        return "ISTIO_OUTPUT" in pod.save(v6=v6)
    return ("ip6 saddr ::6" if v6 else "ip saddr 127.0.0.6") in nft_ruleset(pod.ns)


def tproxy_routes(pod: Pod) -> list[str]:
    """Istio's TPROXY routing in the pod, both families: the `fwmark 0x539 lookup 133` rules and the
    routes of table 133 (empty when there is none)."""
    out = []
    for family in ("-4", "-6"):
        out += [f"{family} {line.strip()}" for line in pod.run(["ip", family, "rule", "show"]).stdout.splitlines()
                if "lookup 133" in line]
        out += [f"{family} {line.strip()}" for line in
                pod.run(["ip", family, "route", "show", "table", "133"], check=False).stdout.splitlines()]
    return out
