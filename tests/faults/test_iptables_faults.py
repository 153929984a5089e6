"""Fault matrix, init container: the kernel rejecting a rule half way through a restore, and the init
container killed mid-way and run again.

Both use a PATH of wrappers around the real `*-restore` binaries (tests/faults/restore_wrapper.sh):
- inject: the first apply document (a `--noflush` restore creating ISTIO_* chains) gets one extra
  rule the *kernel* rejects at commit time (an owner match in PREROUTING/INPUT) in its last table,
  so the earlier tables of the same document are already committed when it fails - the real
  "half way" case, not a refused process;
- hang: the IPv6 apply blocks (after IPv4 went in), so the test can SIGKILL the whole init
  container process group exactly between the two families.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.netns import ISTIO_INIT_ARGS as INIT_ARGS
from tests.support.netns import Pod, rules_only
from tests.support.process import PILOT_AGENT, kill_group, poll

WRAPPER = Path(__file__).resolve().parent / "restore_wrapper.sh"
REAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RESTORES = ("iptables-restore", "ip6tables-restore", "iptables-nft-restore", "ip6tables-nft-restore",
            "iptables-legacy-restore", "ip6tables-legacy-restore")
TPROXY_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15090"]


def wrappers(tmp: Path, mode: str) -> dict:
    bindir = tmp / "bin"
    bindir.mkdir()
    for name in RESTORES:
        (bindir / name).symlink_to(WRAPPER)
    return {"PATH": f"{bindir}:{REAL_PATH}", "WRAP_REAL_PATH": REAL_PATH, "WRAP_MODE": mode,
            "WRAP_LOG": str(tmp / "calls.log"), "WRAP_MARK": str(tmp / "done")}


def kernel_state(pod: Pod) -> str:
    """Rules of both backends and families, plus policy routing: all a failed run could leave."""
    rules = rules_only(pod.save_all())
    routing = pod.run(["sh", "-c", "ip rule; ip -6 rule; ip route show table all; ip -6 route show table all"]).stdout
    return rules + "\n## routing\n" + routing


def test_kernel_rejects_a_rule_half_way_nothing_stays_applied(pod_factory, tmp_path):
    pod = pod_factory()
    before = kernel_state(pod)
    env = wrappers(tmp_path, "inject")
    res = pod.istio_iptables(*TPROXY_ARGS, env=env)
    calls = (tmp_path / "calls.log").read_text()
    assert (tmp_path / "done").exists(), f"no apply document went through the wrapper:\n{calls}"
    assert "injected" in calls
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "\terror\t" in line or line.startswith("Error")]
    assert len(errors) == 1, res.stderr
    assert kernel_state(pod) == before, "a half-applied rule set (or TPROXY routing) stayed behind"
    # The same flags without the fault apply cleanly on top: nothing stale was in the way.
    assert pod.istio_iptables(*TPROXY_ARGS).returncode == 0
    assert "ISTIO_" in rules_only(pod.save_all())


def test_init_container_killed_between_families_then_rerun(pod_factory, tmp_path):
    pod = pod_factory(ipv6=True)
    env = {"PATH": REAL_PATH, **wrappers(tmp_path, "hang")}
    proc = subprocess.Popen(pod.ns.argv([PILOT_AGENT, "istio-iptables", *INIT_ARGS, "--dual-stack"]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        hung = poll(lambda: "hanging" in (tmp_path / "calls.log").read_text()
                    if (tmp_path / "calls.log").exists() else False, timeout=30)
        assert hung, f"the IPv6 apply never started: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
        assert "ISTIO_" in rules_only(pod.save(v6=False) + pod.save(v6=False, binary="iptables-legacy-save"))
    finally:
        kill_group(proc)  # kubelet kills the whole container
    # IPv4 in, IPv6 not: kubelet runs the init container again with the same flags.
    again = pod.istio_iptables(*INIT_ARGS, "--dual-stack")
    assert again.returncode == 0, again.stderr
    assert pod.istio_iptables(*INIT_ARGS, "--dual-stack", "--verify").returncode == 0
    with Pod.create(ipv6=True, prefix="pfr") as ref:  # the same flags on a pod that was never interrupted
        assert ref.istio_iptables(*INIT_ARGS, "--dual-stack").returncode == 0
        assert rules_only(pod.save_all()) == rules_only(ref.save_all())
    # And a third run changes nothing.
    state = rules_only(pod.save_all())
    assert pod.istio_iptables(*INIT_ARGS, "--dual-stack").returncode == 0
    assert rules_only(pod.save_all()) == state
