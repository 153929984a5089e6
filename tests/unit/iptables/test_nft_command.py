"""`istio-iptables --native-nftables`: the dry run prints the nft script and only it, touches
nothing (checked from inside the real command's process), bad input is one line and exit 255, and
the iptables path never imports the nft modules."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import agent
from agent.iptables import nft_script

from ._nft_support import Host, run

NFT = ["--native-nftables", "-n"]
INIT = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
        "-d", "15090,15021,15020"]


def test_dry_run_prints_only_the_script():
    rc, out, err = run([*NFT, *INIT])
    assert rc == 0 and out.startswith("add table inet istio-proxy-nat\n") and out.endswith(" counter jump istio-redirect\n")
    assert all(line.startswith(("add ", "flush ", "insert ")) for line in out.splitlines())
    assert "native nftables enabled" in err and "add rule" not in err


def test_the_mode_is_chosen_by_env_too():
    rc, out, _ = run(["-n", *INIT], {"NATIVE_NFTABLES": "true"})
    assert rc == 0 and out == run([*NFT, *INIT])[1]


def test_skip_rule_apply_prints_nothing():
    rc, out, _ = run([*NFT, "--skip-rule-apply", *INIT])
    assert rc == 0 and out == ""


def test_cleanup_only_prints_the_cleanup_script():
    rc, out, _ = run([*NFT, "--cleanup-only", "-m", "TPROXY", *INIT])
    assert rc == 0 and out == nft_script.render_cleanup()


def test_dry_run_file_is_not_written(tmp_path):
    """Istio's nft mode never writes DRY_RUN_FILE_PATH (only its iptables dry run does)."""
    path = tmp_path / "t"
    rc, _, _ = run([*NFT, *INIT], {"DRY_RUN_FILE_PATH": str(path)})
    assert rc == 0 and not path.exists()


@pytest.mark.parametrize("error", ["no valid local IP address found", "failed to load /etc/resolv.conf: gone"])
def test_host_errors_exit_1(error):
    rc, out, err = run(NFT, host=Host(error=error))
    assert rc == 1 and out == "" and error in err


@pytest.mark.parametrize("argv, needle", [
    (["-p", "0"], '"0" for -p/--envoy-port'),
    (["-b", "*,80"], '"*,80" for -b/--istio-inbound-ports'),
    (["-x", "*"], '"*" for -x/--istio-service-exclude-cidr'),
    (["-i", "10.0.0.0/33"], '"10.0.0.0/33" for -i/--istio-service-cidr'),
    (["-m", "NAT"], '"NAT" for -m/--istio-inbound-interception-mode'),
    (["-t", "0x539"], '"0x539" for -t/--istio-inbound-tproxy-mark'),
    (["-u", "no-such-user-xyz"], '"no-such-user-xyz" for -u/--proxy-uid'),
    (["--bogus"], "unknown flag: --bogus"),
    # written unquoted into the rules, these would be nft syntax: `#` a comment (eth0 would match
    # with no verdict), `;` a second command, `+` a syntax error, a leading digit a number
    (["-c", "eth0#"], '"eth0#" for -c/--istio-exclude-interfaces'),
    (["-c", "a;b"], '"a;b" for -c/--istio-exclude-interfaces'),
    (["-k", "eth0,eth+"], '"eth0,eth+" for -k/--kube-virt-interfaces'),
    (["-k", "1eth"], '"1eth" for -k/--kube-virt-interfaces'),
])
@pytest.mark.parametrize("dry", [True, False])
def test_bad_input_one_line_exit_255_nothing_touched(argv, needle, dry):
    h = Host()
    rc, out, err = run(["--native-nftables", *(["-n"] if dry else []), *argv], host=h)
    assert rc == 255
    assert out == "" and err.count("\n") == 1 and err.startswith("Error: ") and needle in err, err
    assert h.calls == []  # failed before even reading the host


def test_names_nft_reads_as_one_word_are_accepted():
    rc, out, _ = run([*NFT, "-c", "eth0.100,veth_a-b", "-k", "net1"])
    assert rc == 0 and "iifname eth0.100 counter return\n" in out and "iifname veth_a-b " in out


def test_the_nft_name_rule_is_only_for_the_nft_mode():
    """iptables takes these as one argv word each: no reason to refuse them there."""
    rc, out, _ = run(["-n", "-c", "1eth"])
    assert rc == 0 and "-i 1eth -j RETURN" in out


# -- the real command's process: what it imports, and that the dry run touches nothing ------------

PROBE = r"""
import json, os, sys
events = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def audit(event, args):
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.system", "os.fork", "socket.__new__"):
        events.append(event)
    elif event == "open" and ((isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
                              or (isinstance(args[2], int) and args[2] & WRITE)):
        events.append(f"open {args[0]} for writing")

before = set(sys.modules)
from agent.cli import main
from agent.iptables import command, host
command.run.__kwdefaults__["gather"] = lambda **kw: host.HostFacts(enable_ipv6=True, dns_v4=("198.18.0.53",))
sys.addaudithook(audit)
rc = main(["istio-iptables", *sys.argv[1:]])
new = set(sys.modules) - before
top = {m.split(".")[0] for m in new} - set(sys.stdlib_module_names) - {"agent", "__main__"}
print(json.dumps({"rc": rc, "third_party": sorted(top), "events": events,
                  "nft_modules": sorted(m for m in new if m.startswith("agent.iptables.nft")),
                  "agent_modules": sorted(m for m in new if m.startswith("agent."))}))
"""


def probe(*argv: str) -> dict:
    r = subprocess.run([sys.executable, "-B", "-c", PROBE, *argv], capture_output=True, text=True, timeout=60,
                       cwd=Path(agent.__file__).parents[1])
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("extra", [[], ["--cleanup-only"], ["-m", "TPROXY", "--redirect-dns"], ["--reconcile"]])
def test_dry_run_spawns_nothing_opens_no_socket_writes_no_file(extra):
    """No nft, no ip, no sysctl: not a process, not a netlink socket, not a /proc/sys write."""
    result = probe(*NFT, *INIT, *extra)
    assert result["rc"] == 0 and result["events"] == [], result
    assert result["third_party"] == [] and "agent.iptables.nft_script" in result["nft_modules"]


def test_the_iptables_path_never_imports_the_nft_modules():
    result = probe("-n", *INIT)
    assert result["rc"] == 0 and result["nft_modules"] == [], result


def test_the_nft_dry_run_never_imports_the_iptables_apply_modules():
    """iptables' apply flow, its documents and restore files and the process runner (subprocess):
    about 2 ms of imports the nft dry run has no use for."""
    result = probe(*NFT, *INIT)
    iptables_only = {"agent.iptables.apply", "agent.iptables.documents", "agent.iptables.restore",
                     "agent.iptables.runner", "agent.iptables.recorder"}
    assert result["rc"] == 0 and iptables_only.isdisjoint(result["agent_modules"]), result
    assert iptables_only <= set(probe("-n", *INIT)["agent_modules"])  # which the iptables dry run does import
