"""Re-runs, drift, --reconcile, --cleanup-only, --verify, failure rollback, backends, bad input
and the process budget, against real iptables in fresh pod namespaces."""
from __future__ import annotations

import pytest

from tests.netns.backends import tproxy_routes
from tests.support.netns import APP_UID, POD4, PROXY_UID, REMOTE4, Pod, Shims, rules_only
from tests.support.process import ISTIO_IPTABLES

INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
             "-b", "*", "-d", "15090,15020"]
OTHER_ARGS = INIT_ARGS[:-1] + ["15090"]  # same, but 15020 is captured now
TPROXY_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15090"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "\terror\t" in line or line.startswith("Error")]


@pytest.fixture
def pod(pod_factory) -> Pod:
    pod = pod_factory()
    pod.remote.spawn_listener(tcp="9090", tag="remote", uid=None)
    pod.spawn_listener(tcp="15001,15006", tag="proxy", uid=PROXY_UID)
    pod.spawn_listener(tcp="8080,15090,15020", tag="app", uid=APP_UID)
    return pod


def applied(pod: Pod, *args: str, env: dict | None = None) -> None:
    res = pod.istio_iptables(*args, env=env)
    assert res.returncode == 0, res.stderr


# ---- drift and reconcile ------------------------------------------------------------------------

def test_different_flags_without_reconcile_fail_with_one_line_and_touch_nothing(pod):
    applied(pod, *INIT_ARGS)
    before = pod.save_all()
    res = pod.istio_iptables(*OTHER_ARGS)
    assert res.returncode == 1
    errors = error_lines(res.stderr)
    assert len(errors) == 1, res.stderr
    assert "--reconcile" in errors[0] and "ISTIO_INBOUND" in errors[0]
    assert "already exists" not in res.stderr and "line" not in errors[0].split("(")[0]
    assert pod.save_all() == before


def test_reconcile_replaces_the_rules_and_leaves_no_guardrails(pod):
    applied(pod, *INIT_ARGS)
    remote = pod.remote.client(uid=None)
    assert remote.tcp(POD4, 15020).get("tag") == "app"
    applied(pod, *OTHER_ARGS, "--reconcile")
    assert remote.tcp(POD4, 15020).get("listener") == 15006
    assert remote.tcp(POD4, 15090).get("tag") == "app"
    assert "DROP" not in pod.save_all()
    assert pod.istio_iptables(*OTHER_ARGS, "--verify").returncode == 0
    # and the result is exactly what a fresh apply of these flags gives
    fresh = Pod.create()
    try:
        assert fresh.istio_iptables(*OTHER_ARGS).returncode == 0
        assert rules_only(pod.save()) == rules_only(fresh.save())
    finally:
        fresh.close()


def test_reconcile_from_redirect_to_tproxy_removes_old_chains(pod):
    applied(pod, *INIT_ARGS)
    applied(pod, *TPROXY_ARGS, "--reconcile")
    assert pod.istio_iptables(*TPROXY_ARGS, "--verify").returncode == 0
    nat = pod.run(["iptables-save", "-t", "nat"]).stdout
    assert "ISTIO_IN_REDIRECT" in nat and "-A PREROUTING" not in nat  # inbound moved to mangle
    assert "ISTIO_TPROXY" in pod.run(["iptables-save", "-t", "mangle"]).stdout
    applied(pod, *TPROXY_ARGS)  # and a plain re-run is a no-op


def test_reconcile_from_tproxy_back_to_redirect_leaves_no_tproxy_plumbing(pod):
    applied(pod, *TPROXY_ARGS, "--redirect-dns", "-c", "eth9")
    assert tproxy_routes(pod)
    applied(pod, *INIT_ARGS, "--reconcile")
    assert tproxy_routes(pod) == []  # the fwmark rule and table 133 went with the TPROXY rules
    fresh = Pod.create()
    try:
        assert fresh.istio_iptables(*INIT_ARGS).returncode == 0
        assert rules_only(pod.save_all()) == rules_only(fresh.save_all())
    finally:
        fresh.close()
    assert pod.remote.client(uid=None).tcp(POD4, 8080).get("listener") == 15006


def test_reconcile_with_same_flags_is_a_no_op(pod):
    applied(pod, *INIT_ARGS)
    before = pod.save_all()
    applied(pod, *INIT_ARGS, "--reconcile")
    assert pod.save_all() == before


# ---- cleanup ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [INIT_ARGS, TPROXY_ARGS + ["--redirect-dns", "--drop-invalid", "-c", "eth9"]],
                         ids=["redirect", "tproxy-dns-dropinvalid"])
def test_cleanup_only_restores_the_pristine_state(pod, args):
    pristine = rules_only(pod.save_all())
    rules_before = pod.run(["ip", "rule", "show"]).stdout
    applied(pod, *args)
    assert rules_only(pod.save_all()) != pristine
    applied(pod, *args, "--cleanup-only")
    assert rules_only(pod.save_all()) == pristine
    assert pod.run(["ip", "rule", "show"]).stdout == rules_before
    assert pod.remote.client(uid=None).tcp(POD4, 8080).get("tag") == "app"
    applied(pod, *args, "--cleanup-only")  # nothing left: still fine


def test_cleanup_only_keeps_other_tools_rules(pod):
    pod.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7777", "-j", "RETURN"])
    pristine = rules_only(pod.save_all())
    applied(pod, *INIT_ARGS)
    applied(pod, *INIT_ARGS, "--cleanup-only")
    assert rules_only(pod.save_all()) == pristine


# ---- verify -------------------------------------------------------------------------------------

def test_verify_exit_codes_and_difference(pod):
    res = pod.istio_iptables(*INIT_ARGS, "--verify")
    assert res.returncode == 1 and "+-A ISTIO_OUTPUT" in res.stdout and "*nat" in res.stdout
    assert rules_only(pod.save_all()) == ""  # --verify never changes anything
    applied(pod, *INIT_ARGS)
    res = pod.istio_iptables(*INIT_ARGS, "--verify")
    assert (res.returncode, res.stdout) == (0, "")
    pod.run(["iptables", "-t", "nat", "-D", "ISTIO_INBOUND", "-p", "tcp", "--dport", "15020", "-j", "RETURN"])
    pod.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"])  # foreign: ignored
    res = pod.istio_iptables(*INIT_ARGS, "--verify")
    assert res.returncode == 1
    diff = [line for line in res.stdout.splitlines() if line[:1] in "+-"]
    assert len(diff) == 1 and diff[0].startswith("+-A ISTIO_INBOUND") and "15020" in diff[0], res.stdout
    res = pod.istio_iptables(*OTHER_ARGS, "--verify")
    assert res.returncode == 0  # exactly the rules of the other flags now


def test_verify_reports_missing_tproxy_routes(pod):
    applied(pod, *TPROXY_ARGS)
    assert pod.istio_iptables(*TPROXY_ARGS, "--verify").returncode == 0
    pod.run(["ip", "rule", "del", "fwmark", "1337", "lookup", "133"])
    res = pod.istio_iptables(*TPROXY_ARGS, "--verify")
    assert res.returncode == 1 and "rule add fwmark 1337 lookup 133" in res.stdout


# ---- failure leaves nothing behind ----------------------------------------------------------------

def test_ipv6_failure_rolls_back_ipv4(pod_factory, tmp_path):
    pod = pod_factory(ipv6=True)
    pristine = rules_only(pod.save_all())
    shims = Shims(tmp_path, fail=("ip6tables-nft-restore",))
    res = pod.istio_iptables(*INIT_ARGS, "--dual-stack", env=shims.env)
    assert res.returncode == 1
    assert "injected failure" in res.stderr
    assert any(c.startswith("iptables-nft-restore --noflush") for c in shims.calls())  # v4 went in...
    assert rules_only(pod.save_all()) == pristine  # ...and came out again


def test_failed_restore_reports_the_problem_not_a_traceback(pod, tmp_path):
    shims = Shims(tmp_path, fail=("iptables-nft-restore",))
    res = pod.istio_iptables(*INIT_ARGS, env=shims.env)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(error_lines(res.stderr)) == 1 and "injected failure" in res.stderr


# ---- backends -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,other", [("legacy", "nft"), ("nft", "legacy")])
def test_forced_backend_holds_the_rules_and_captures(pod, tmp_path, backend, other):
    shims = Shims(tmp_path)
    applied(pod, *INIT_ARGS, env={**shims.env, "FORCE_IPTABLES_BINARY": backend})
    assert "ISTIO_OUTPUT" in pod.save(binary=f"iptables-{backend}-save")
    assert "ISTIO_OUTPUT" not in pod.save(binary=f"iptables-{other}-save")
    assert pod.client(uid=APP_UID).tcp(REMOTE4, 9090).get("listener") == 15001
    restores = [c for c in shims.calls() if "-restore" in c]
    assert restores == [f"iptables-{backend}-restore --noflush" + (" --wait=30" if backend == "legacy" else "")]
    env = {"FORCE_IPTABLES_BINARY": backend}
    assert pod.istio_iptables(*INIT_ARGS, "--verify", env=env).returncode == 0
    applied(pod, *INIT_ARGS, env=env)  # re-run: in place
    applied(pod, *INIT_ARGS, "--cleanup-only", env=env)
    assert "ISTIO" not in pod.save(binary=f"iptables-{backend}-save")


def test_cni_mode_uses_a_pod_scoped_xtables_lock(pod, tmp_path):
    shims = Shims(tmp_path / "shims")
    lock = tmp_path / "netns-lock"
    env = {**shims.env, "FORCE_IPTABLES_BINARY": "legacy"}
    applied(pod, *INIT_ARGS, "--cni-mode", f"--network-namespace={lock}", env=env)
    restores = [c for c in shims.calls() if "-restore" in c]
    assert restores == [f"iptables-legacy-restore --noflush --wait=30 [XTABLES_LOCKFILE={lock}]"]


def test_existing_legacy_rules_select_legacy(pod):
    pod.run(["iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "7777", "-j", "ACCEPT"])
    applied(pod, *INIT_ARGS)
    assert "ISTIO_OUTPUT" in pod.save(binary="iptables-legacy-save")
    assert "ISTIO_OUTPUT" not in pod.save(binary="iptables-nft-save")


def test_fresh_namespace_prefers_nft(pod):
    applied(pod, *INIT_ARGS)
    assert "ISTIO_OUTPUT" in pod.save(binary="iptables-nft-save")
    assert "ISTIO" not in pod.save(binary="iptables-legacy-save")


def test_2020_console_script_istio_iptables(pod):
    res = pod.run([ISTIO_IPTABLES, *INIT_ARGS], check=False)
    assert res.returncode == 0, res.stderr
    assert pod.istio_iptables(*INIT_ARGS, "--verify").returncode == 0
    assert pod.client(uid=APP_UID).tcp(REMOTE4, 9090).get("listener") == 15001


# ---- bad input ----------------------------------------------------------------------------------

BAD = {
    "port out of range": ["-p", "70000"],
    "port not a number": ["-z", "abc"],
    "port in list": ["-b", "80,x"],
    "malformed cidr": ["-i", "10.0.0.0"],
    "exclude star": ["-x", "*"],
    "mode": ["-m", "FOO"],
    "unknown flag": ["--no-such-flag"],
    "uid name": ["-u", "no-such-user-xyz"],
    # names the rules carry: iptables-restore would read '"' as a quote (a multi-line exit 1 before)
    "interface with a quote": ["-c", 'e"th;0'],
    "interface too long": ["-k", "eth0,veth0123456789ab"],
    "interface with a newline": ["-c", "eth\n0"],
    "uid name with a quote": ["-u", 'ro"ot'],
}
BAD_ENV = {
    "owner group with a quote": {"ISTIO_OUTBOUND_OWNER_GROUPS": 'java,a"b'},
    "excluded owner group with a space": {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "a b"},
}


@pytest.mark.parametrize("bad, env", [(b, {}) for b in BAD.values()] + [([], e) for e in BAD_ENV.values()],
                         ids=[*BAD, *BAD_ENV])
def test_bad_input_exits_255_and_touches_nothing(pod, tmp_path, bad, env):
    applied(pod, *INIT_ARGS)
    before = pod.save_all()
    shims = Shims(tmp_path)
    res = pod.istio_iptables(*INIT_ARGS, *bad, env={**shims.env, **env})
    assert res.returncode == 255, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (bad[0] if bad else next(iter(env))).lstrip("-")[:1] in res.stderr
    assert shims.calls() == []  # nothing was even run
    assert pod.save_all() == before


# ---- process budget -----------------------------------------------------------------------------

def test_common_path_spawns_at_most_four_processes(pod, tmp_path):
    shims = Shims(tmp_path)
    applied(pod, *INIT_ARGS, env=shims.env)
    fresh = shims.calls()
    assert len(fresh) <= 4, fresh
    shims.reset()
    applied(pod, *INIT_ARGS, env=shims.env)
    assert len(shims.calls()) <= 4, shims.calls()
