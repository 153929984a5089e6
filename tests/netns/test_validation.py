"""--run-validation: each capture path proven by name, exit 126 when the rules do not work; for
both backends (iptables, native nftables)."""
from __future__ import annotations

import re

from tests.netns.backends import flags, init
from tests.support.netns import PROXY_UID
from tests.support.process import PILOT_AGENT

INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
             "-b", "*", "-d", "15090,15020"]


def results(stderr: str) -> dict[str, str]:
    return dict(re.findall(r"validation path=(\S+) result=(\w+)", stderr))


def test_validation_passes_after_apply_and_names_both_paths(pod_factory, backend):
    pod = pod_factory()
    res = init(pod, backend, *INIT_ARGS, "--run-validation")
    assert res.returncode == 0, res.stderr
    assert results(res.stderr) == {"inbound-ipv4": "passed", "outbound-ipv4": "passed"}
    assert "Validation passed, iptables rules established" in res.stderr


def test_validation_covers_ipv6_when_enabled(pod_factory, backend):
    pod = pod_factory(ipv6=True)
    res = init(pod, backend, *INIT_ARGS, "--dual-stack", "--run-validation")
    assert res.returncode == 0, res.stderr
    assert results(res.stderr) == {"inbound-ipv4": "passed", "outbound-ipv4": "passed",
                                   "inbound-ipv6": "passed", "outbound-ipv6": "passed"}


def test_validation_without_rules_fails_with_126(pod_factory, backend):
    pod = pod_factory()
    res = init(pod, backend, *INIT_ARGS, "--skip-rule-apply", "--run-validation", "--probe-timeout=1s")
    assert res.returncode == 126, res.stderr
    assert results(res.stderr) == {"inbound-ipv4": "failed", "outbound-ipv4": "failed"}
    assert "iptables validation failed; workload is not ready for Istio." in res.stderr
    assert "ISTIO" not in pod.save_all()
    assert pod.run(["nft", "list", "ruleset", "inet"]).stdout == ""


def test_validation_fails_when_only_inbound_is_captured(pod_factory, backend):
    pod = pod_factory()
    assert init(pod, backend, *INIT_ARGS[:-6], "-i", "", "-b", "*").returncode == 0  # no outbound capture
    res = init(pod, backend, *INIT_ARGS[:-6], "-i", "", "-b", "*", "--run-validation", "--probe-timeout=1s",
                             "--skip-rule-apply", "-q", "15002")  # -q says outbound 15002 should be captured
    assert res.returncode == 126, res.stderr
    assert results(res.stderr) == {"inbound-ipv4": "passed", "outbound-ipv4": "failed"}


def test_cni_style_validation_as_the_proxy_uid(pod_factory, backend):
    """istio-validation runs as 1337 with --skip-rule-apply: inbound proven, outbound skipped."""
    pod = pod_factory()
    assert init(pod, backend, *INIT_ARGS).returncode == 0
    res = pod.run([PILOT_AGENT, "istio-iptables", *flags(backend), *INIT_ARGS, "--skip-rule-apply", "--run-validation"],
                  uid=PROXY_UID, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert res.returncode == 0, res.stderr
    assert results(res.stderr) == {"inbound-ipv4": "passed", "outbound-ipv4": "skipped"}


def test_validation_in_tproxy_mode(pod_factory, backend):
    pod = pod_factory()
    args = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*"]
    res = init(pod, backend, *args, "--run-validation")
    assert res.returncode == 0, res.stderr
    assert results(res.stderr) == {"inbound-ipv4": "passed", "outbound-ipv4": "passed"}
