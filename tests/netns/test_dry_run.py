"""Dry run against a real pod namespace whose rules are in place: it changes nothing, whatever the
mode (cleanup-only and reconcile included), for both backends; and --verify resolves owner names as
iptables-save and nft print them (numbers)."""
from __future__ import annotations

import pytest

from tests.netns.backends import init, state
from tests.support.netns import Pod, rules_only

INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
             "-b", "*", "-d", "15090,15020"]


@pytest.fixture
def pod(pod_factory) -> Pod:
    pod = pod_factory(ipv6=True)
    res = pod.istio_iptables(*INIT_ARGS)
    assert res.returncode == 0, res.stderr
    return pod


@pytest.mark.parametrize("extra", [[], ["--cleanup-only"], ["--reconcile", "--force-apply"],
                                   ["-m", "TPROXY", "--reconcile"], ["--verify"]])
def test_dry_run_touches_nothing(pod, extra):
    before = pod.save_all()
    routes = pod.run(["ip", "-4", "rule", "show"]).stdout + pod.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    res = pod.istio_iptables("-n", *INIT_ARGS, *extra)
    assert res.returncode in (0, 1), res.stderr
    assert "iptables-save\nip6tables-save\n" in res.stdout  # --verify prints its difference first
    assert pod.save_all() == before
    assert pod.run(["ip", "-4", "rule", "show"]).stdout + pod.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout == routes


@pytest.mark.parametrize("extra", [[], ["--cleanup-only"], ["--reconcile", "--force-apply"],
                                   ["-m", "TPROXY", "--reconcile"]])
def test_nft_dry_run_touches_nothing(pod_factory, extra):
    """--native-nftables --dry-run prints the script and runs no nft (Istio's applies the rules)."""
    pod = pod_factory(ipv6=True)
    assert init(pod, "nft", *INIT_ARGS, "--dual-stack").returncode == 0
    before = state(pod)
    routes = pod.run(["ip", "-4", "rule", "show"]).stdout + pod.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    res = init(pod, "nft", "-n", *INIT_ARGS, "--dual-stack", *extra)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("add table inet istio-proxy-nat\n"), res.stdout
    assert state(pod) == before
    assert pod.run(["ip", "-4", "rule", "show"]).stdout + pod.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout == routes


def test_cleanup_only_dry_run_of_an_applied_pod_is_not_the_real_cleanup(pod):
    """The recorder answers as an empty kernel (as Istio's stub), so it shows no deletes; the real
    cleanup then removes every rule."""
    dry = pod.istio_iptables("-n", "--cleanup-only", *INIT_ARGS)
    assert dry.returncode == 0 and set(dry.stdout.splitlines()) == {"iptables-save", "ip6tables-save"}
    res = pod.istio_iptables("--cleanup-only", *INIT_ARGS)
    assert res.returncode == 0, res.stderr
    assert "ISTIO" not in rules_only(pod.save_all())


def test_verify_with_owner_names_finds_the_rules_in_place(pod_factory, backend):
    pod = pod_factory()
    args = [*INIT_ARGS[:4], "-u", "root", "-g", "root", *INIT_ARGS[6:]]
    assert init(pod, backend, *args).returncode == 0
    res = init(pod, backend, *args, "--verify")
    assert res.returncode == 0 and res.stdout == "", res.stdout
