"""Native nftables (--native-nftables) beyond one apply, against real nft in fresh pod namespaces:
re-runs, drift, --verify, --reconcile, --cleanup-only, bad input, a missing nft, the process
budget, and that the iptables rules are never touched."""
from __future__ import annotations

import re

import pytest

from tests.netns.backends import init, nft_ruleset, state, tproxy_routes
from tests.support.netns import APP_UID, POD4, PROXY_UID, REMOTE4, Pod, Shims, rules_only

NFT = "nft"
INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
             "-b", "*", "-d", "15090,15020"]
OTHER_ARGS = INIT_ARGS[:-1] + ["15090"]  # same, but 15020 is captured now
TPROXY_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15090"]
TPROXY_DNS_ARGS = TPROXY_ARGS + ["--redirect-dns", "--drop-invalid", "-c", "eth9"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "\terror\t" in line or line.startswith("Error")]


def tables(pod: Pod) -> list[str]:
    return re.findall(r"^table inet (\S+)", nft_ruleset(pod.ns), re.M)


@pytest.fixture
def pod(pod_factory) -> Pod:
    pod = pod_factory()
    pod.remote.spawn_listener(tcp="9090", tag="remote", uid=None)
    pod.spawn_listener(tcp="15001,15006", tag="proxy", uid=PROXY_UID, transparent=True)
    pod.spawn_listener(tcp="8080,15090,15020", tag="app", uid=APP_UID)
    return pod


def applied(pod: Pod, *args: str, env: dict | None = None) -> None:
    res = init(pod, NFT, *args, env=env)
    assert res.returncode == 0, res.stderr


def fresh_listing(*args: str) -> str:
    """What a fresh apply of these flags gives (without handles)."""
    with Pod.create() as other:
        assert init(other, NFT, *args).returncode == 0
        return nft_ruleset(other.ns)


# ---- re-runs ------------------------------------------------------------------------------------

def test_rerun_with_same_flags_touches_nothing(pod):
    applied(pod, *INIT_ARGS)
    before = state(pod)  # nft rule handles included: a re-created rule gets a new one
    res = init(pod, NFT, *INIT_ARGS)
    assert res.returncode == 0 and "already in place" in res.stderr, res.stderr
    assert state(pod) == before
    applied(pod, *INIT_ARGS, "--reconcile")  # reconcile with nothing to reconcile: the same
    assert state(pod) == before
    applied(pod, *INIT_ARGS, "--force-apply")  # rewritten, with the same result
    assert state(pod) != before and nft_ruleset(pod.ns) == fresh_listing(*INIT_ARGS)


def test_rerun_with_other_flags_fails_with_one_line_and_touches_nothing(pod):
    applied(pod, *INIT_ARGS)
    before = state(pod)
    res = init(pod, NFT, *OTHER_ARGS)
    assert res.returncode == 1
    errors = error_lines(res.stderr)
    assert len(errors) == 1, res.stderr
    assert "--reconcile" in errors[0] and "istio-inbound" in errors[0] and "15020" in errors[0]
    assert state(pod) == before


def test_reconcile_to_other_flags_leaves_no_stale_tables_or_chains(pod):
    """Istio rewrites only the tables the new flags use and keeps every chain (its `flush table`),
    so TPROXY + DNS then plain REDIRECT leaves the whole TPROXY capture in the mangle table and the
    DNS zones in raw. Ours replaces all three tables in the same transaction."""
    applied(pod, *TPROXY_DNS_ARGS)
    assert tables(pod) == ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"]
    assert tproxy_routes(pod)
    applied(pod, *INIT_ARGS, "--reconcile")
    assert tables(pod) == ["istio-proxy-nat"]
    assert tproxy_routes(pod) == []  # and the TPROXY routes
    listing = nft_ruleset(pod.ns)
    assert listing == fresh_listing(*INIT_ARGS)
    assert "istio-output-dns" not in listing and "eth9" not in listing
    assert init(pod, NFT, *INIT_ARGS, "--verify").returncode == 0
    # and the new rules are the ones traffic meets
    remote = pod.remote.client(uid=None)
    assert remote.tcp(POD4, 8080).get("listener") == 15006
    assert remote.tcp(POD4, 15020).get("tag") == "app"
    assert pod.client(uid=APP_UID).tcp(REMOTE4, 9090).get("listener") == 15001


# ---- drift, verify, reconcile -------------------------------------------------------------------

def _handle(pod: Pod, chain: str, needle: str) -> str:
    listing = nft_ruleset(pod.ns, handles=True)
    body = listing.split(f"chain {chain} {{", 1)[1].split("}", 1)[0]
    line = next(line for line in body.splitlines() if needle in line)
    return line.rsplit("# handle ", 1)[1].strip()


def test_drift_is_reported_by_verify_and_fixed_by_reconcile(pod):
    res = init(pod, NFT, *INIT_ARGS, "--verify")
    assert res.returncode == 1 and "+table inet istio-proxy-nat" in res.stdout
    assert nft_ruleset(pod.ns) == ""  # --verify never changes anything
    applied(pod, *INIT_ARGS)
    assert (init(pod, NFT, *INIT_ARGS, "--verify").returncode, init(pod, NFT, *INIT_ARGS, "--verify").stdout) == (0, "")
    # someone removes our rule for 15020 and adds one of their own to our chain; a table of
    # another tool in the same family is not ours and is ignored
    pod.run(["nft", "delete", "rule", "inet", "istio-proxy-nat", "istio-inbound", "handle",
             _handle(pod, "istio-inbound", "dport 15020")])
    pod.run(["nft", "add", "rule", "inet", "istio-proxy-nat", "istio-output", "udp", "dport", "7777", "return"])
    pod.run(["nft", "add", "table", "inet", "other-tool"])
    assert pod.remote.client(uid=None).tcp(POD4, 15020).get("listener") == 15006  # the drift is real
    res = init(pod, NFT, *INIT_ARGS, "--verify")
    assert res.returncode == 1
    diff = [line for line in res.stdout.splitlines() if line[:1] in "+-"]
    assert diff == ["+rule inet istio-proxy-nat istio-inbound tcp dport 15020 counter return",
                    "-rule inet istio-proxy-nat istio-output udp dport 7777 return"], res.stdout
    before = state(pod)
    res = init(pod, NFT, *INIT_ARGS)  # a plain re-run refuses
    assert res.returncode == 1 and "--reconcile" in res.stderr and state(pod) == before
    applied(pod, *INIT_ARGS, "--reconcile")
    assert init(pod, NFT, *INIT_ARGS, "--verify").returncode == 0
    assert "other-tool" in nft_ruleset(pod.ns)
    assert pod.remote.client(uid=None).tcp(POD4, 15020).get("tag") == "app"


def test_verify_reports_missing_tproxy_routes(pod):
    args = TPROXY_ARGS
    applied(pod, *args)
    assert init(pod, NFT, *args, "--verify").returncode == 0
    pod.run(["ip", "rule", "del", "fwmark", "1337", "lookup", "133"])
    res = init(pod, NFT, *args, "--verify")
    assert res.returncode == 1 and "rule add fwmark 1337 lookup 133" in res.stdout
    applied(pod, *args)  # the rules are in place; the route comes back
    assert init(pod, NFT, *args, "--verify").returncode == 0


# ---- cleanup ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [INIT_ARGS, TPROXY_DNS_ARGS], ids=["redirect", "tproxy-dns-dropinvalid"])
def test_cleanup_only_restores_the_pristine_state(pod, args):
    pod.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7777", "-j", "RETURN"])
    pod.run(["nft", "add", "table", "inet", "other-tool"])
    pristine = state(pod)
    rules_before = pod.run(["ip", "rule", "show"]).stdout
    applied(pod, *args)
    assert state(pod) != pristine
    applied(pod, *args, "--cleanup-only")
    assert state(pod) == pristine  # other tools' iptables rule and nft table included
    assert pod.run(["ip", "rule", "show"]).stdout == rules_before
    assert pod.remote.client(uid=None).tcp(POD4, 8080).get("tag") == "app"
    applied(pod, *args, "--cleanup-only")  # nothing left: still fine
    assert state(pod) == pristine


def test_cleanup_only_with_other_flags_removes_everything_of_ours(pod):
    applied(pod, *TPROXY_DNS_ARGS)
    applied(pod, *INIT_ARGS, "--cleanup-only")
    assert tables(pod) == []


# ---- the two modes do not meet --------------------------------------------------------------------

def test_nft_mode_never_touches_iptables_rules(pod):
    assert init(pod, "iptables", *INIT_ARGS).returncode == 0
    iptables_rules = rules_only(pod.save_all())
    applied(pod, *TPROXY_DNS_ARGS)
    applied(pod, *TPROXY_DNS_ARGS, "--cleanup-only")
    assert rules_only(pod.save_all()) == iptables_rules and tables(pod) == []


# ---- failures leave nothing behind ------------------------------------------------------------------

BAD = {
    "port out of range": ["-p", "70000"],
    "port not a number": ["-z", "abc"],
    "port in list": ["-b", "80,x"],
    "malformed cidr": ["-i", "10.0.0.0"],
    "exclude star": ["-x", "*"],
    "mode": ["-m", "FOO"],
    "unknown flag": ["--no-such-flag"],
    "uid name": ["-u", "no-such-user-xyz"],
    "interface": ["-c", "eth 0"],
    "interface nft cannot parse": ["-k", "eth;0"],
    "interface with a quote": ["-c", 'e"th;0'],
    "nft keyword as interface": ["-c", "counter"],
    "number nft rewrites": ["-k", "007"],
}
BAD_ENV = {
    "nft keyword as owner group": {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,counter"},
    "excluded owner group nft cannot parse": {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "a;b"},
}


@pytest.mark.parametrize("bad, env", [(b, {}) for b in BAD.values()] + [([], e) for e in BAD_ENV.values()],
                         ids=[*BAD, *BAD_ENV])
def test_bad_input_exits_255_and_touches_nothing(pod, tmp_path, bad, env):
    applied(pod, *INIT_ARGS)
    before = state(pod)
    shims = Shims(tmp_path)
    res = init(pod, NFT, *INIT_ARGS, *bad, "--reconcile", env={**shims.env, **env})
    assert res.returncode == 255, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert shims.calls() == []  # nothing was even run
    assert state(pod) == before


def test_a_script_nft_rejects_applies_nothing(pod):
    """A group nft cannot resolve fails the whole transaction: the earlier rules stay, whole."""
    applied(pod, *INIT_ARGS)
    before = state(pod)
    res = init(pod, NFT, *OTHER_ARGS, "--reconcile", env={"ISTIO_OUTBOUND_OWNER_GROUPS": "no-such-group-xyz"})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = error_lines(res.stderr)
    assert len(errors) == 1 and "nftables run failed" in errors[0] and "Group does not exist" in errors[0], errors
    assert "skgid != no-such-group-xyz" in errors[0]  # the script line nft refused
    assert state(pod) == before


def test_missing_nft_binary_is_one_line_and_exit_1(pod, tmp_path):
    shims = Shims(tmp_path)
    (tmp_path / "bin" / "nft").unlink()
    res = init(pod, NFT, *INIT_ARGS, env=shims.env)
    assert res.returncode == 1
    errors = error_lines(res.stderr)
    assert len(errors) == 1 and "the nft binary is missing in the sidecar container image" in errors[0], res.stderr
    assert tables(pod) == [] and shims.calls() == []


def test_ipv6_only_resolvers_on_an_ipv4_pod_apply(pod_factory):
    """Istio's nft mode writes jumps to DNS chains it then leaves empty (undeclared) here, and nft
    rejects the whole script; ours applies, without DNS capture, as the iptables mode does."""
    pod = pod_factory(nameservers=["2001:db8::53"])
    res = init(pod, NFT, *INIT_ARGS, "--redirect-dns")
    assert res.returncode == 0, res.stderr
    assert init(pod, NFT, *INIT_ARGS, "--redirect-dns", "--verify").returncode == 0


# ---- process budget -----------------------------------------------------------------------------

def test_common_path_spawns_two_processes(pod, tmp_path):
    shims = Shims(tmp_path)
    applied(pod, *INIT_ARGS, env=shims.env)
    assert [c.split()[:2] for c in shims.calls()] == [["nft", "-s"], ["nft", "-f"]], shims.calls()
    shims.reset()
    applied(pod, *INIT_ARGS, env=shims.env)  # in place: the read only
    assert len(shims.calls()) == 1, shims.calls()
