"""The istio-iptables command: dry-run transcript on stdout only, DRY_RUN_FILE_PATH, --help, exit codes."""
from __future__ import annotations

import os
import re

import pytest

from agent import cli
from agent.iptables import command, config
from agent.iptables.host import HostFacts
from tests.support.process import ISTIO_IPTABLES, PILOT_AGENT

from ._support import Host, run, transcript

INIT = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
        "-d", "15090,15020"]


def test_dry_run_prints_the_transcript_and_nothing_else_on_stdout():
    rc, out, err = run(["-n", *INIT])
    assert rc == 0
    assert out == transcript(INIT)
    assert out.startswith("iptables-save\nip6tables-save\n* nat\n") and out.endswith("COMMIT\niptables-save\n")
    assert err and all(re.match(r"\S+Z\t(info|warn|debug)\t", line) for line in err.splitlines())


def test_dry_run_ipv6_transcript_has_both_families():
    rc, out, _ = run(["-n", *INIT], host=Host(HostFacts(enable_ipv6=True, host_ip="2001:db8::2")))
    assert rc == 0 and out.count("* nat\n") == 2 and out.endswith("iptables-save\nip6tables-save\n")


def test_dry_run_from_env():
    rc, out, _ = run([], {"DRY_RUN": "true", "ISTIO_INBOUND_PORTS": "*"})
    assert rc == 0 and "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT" in out


def test_dry_run_file_is_written_without_truncation(tmp_path):
    path = tmp_path / "transcript"
    path.write_text("x" * 5000)
    rc, out, _ = run(["-n", *INIT], {"DRY_RUN_FILE_PATH": str(path)})
    content = path.read_text()
    assert rc == 0 and content.startswith(out) and content[len(out):] == "x" * (5000 - len(out))


def test_dry_run_file_created(tmp_path):
    path = tmp_path / "t"
    rc, out, _ = run(["-n", *INIT], {"DRY_RUN_FILE_PATH": str(path)})
    assert path.read_text() == out


def test_skip_rule_apply_records_nothing():
    rc, out, _ = run(["-n", "--skip-rule-apply", *INIT])
    assert rc == 0 and out == ""


def test_cleanup_only_dry_run_shows_the_real_cleanup_of_an_empty_kernel():
    """The recorder answers as an empty kernel; the real cleanup looks first and finds nothing to
    remove, so the transcript holds the reads only (Istio's blind deletes are its fallback)."""
    rc, out, err = run(["-n", "--cleanup-only", *INIT])
    assert rc == 0 and out == "iptables-save\nip6tables-save\niptables-save\n"
    assert "nothing to clean up" in err


def test_dns_needs_resolv_conf_only_when_not_capturing_all():
    h = Host()
    run(["-n", "--redirect-dns"], host=h)
    run(["-n", "--redirect-dns", "--capture-all-dns"], host=h)
    run(["-n", "--dual-stack"], host=h)
    assert h.calls == [{"dual_stack": False, "need_dns": True}, {"dual_stack": False, "need_dns": False},
                       {"dual_stack": True, "need_dns": False}]


def test_redirect_dns_without_servers_warns_and_is_off():
    rc, out, err = run(["-n", "--redirect-dns"])
    assert rc == 0 and "ISTIO_OUTPUT_DNS" not in out and "\twarn\t" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["-p", "0"], '"0" for -p/--envoy-port'),
        (["-b", "80,x"], '"80,x" for -b/--istio-inbound-ports'),
        (["-x", "*"], '"*" for -x/--istio-service-exclude-cidr'),
        (["-i", "10.0.0.0"], '"10.0.0.0" for -i/--istio-service-cidr'),
        (["-m", "NAT"], '"NAT" for -m/--istio-inbound-interception-mode'),
        (["-u", "no-such-user-xyz"], '"no-such-user-xyz" for -u/--proxy-uid'),
        (["-t", "mark"], '"mark" for -t/--istio-inbound-tproxy-mark'),
        (["--bogus"], "unknown flag: --bogus"),
        (["-n=maybe"], 'invalid argument "maybe" for "--dry-run" flag'),
        (["--iptables-probe-port", "70000"], '"70000" for "--iptables-probe-port"'),
    ],
)
@pytest.mark.parametrize("dry", [True, False])
def test_bad_input_one_line_exit_255_nothing_touched(argv, needle, dry):
    h = Host()
    rc, out, err = run((["-n"] if dry else []) + argv, host=h)
    assert rc == 255
    assert out == "" and err.count("\n") == 1 and err.startswith("Error: ") and needle in err
    assert h.calls == []  # failed before even reading the host, let alone the kernel


def test_bad_env_only_setting_exits_1_like_istio():
    h = Host()
    rc, out, err = run(["-n"], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"}, host=h)
    assert rc == 1 and out == "" and "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR" in err and h.calls == []


@pytest.mark.parametrize("error", ["no valid local IP address found", "failed to load /etc/resolv.conf: gone"])
def test_host_errors_exit_1(error):
    rc, out, err = run(["-n"], host=Host(error=error))
    assert rc == 1 and out == "" and error in err


def test_native_nftables_dry_run_prints_the_nft_script():
    """The mode itself is tested in test_nft_command.py; this is the dispatch."""
    rc, out, err = run(["-n", "--native-nftables"])
    assert rc == 0 and out.startswith("add table inet istio-proxy-nat\n") and "iptables-save" not in out


def test_log_output_level_none_silences_stderr():
    rc, out, err = run(["-n", "--log_output_level=default:none", "--log_as_json", *INIT])
    assert rc == 0 and err == "" and out


def test_help_lists_every_flag_with_env_and_default():
    rc, out, err = run(["--help"])
    assert rc == 0 and err == ""
    for flag in config.FLAGS:
        line = next(l for l in out.splitlines() if re.match(rf"\s+(-\w, )?--{flag.name}\b", l))
        assert (flag.short is None) or f"-{flag.short}, " in line
        assert all(var in line for var in flag.env)
        assert "(default " in line
    for var, _, _ in config.ENV_ONLY:
        assert var in out
    for name in ("log_output_level", "log_as_json", "log_target", "log_caller", "log_stacktrace_level"):
        assert f"--{name}" in out


def test_cli_dispatches_help(capsys):
    assert cli.main(["istio-iptables", "-h"]) == 0
    assert "--istio-inbound-ports" in capsys.readouterr().out


def test_cli_usage_error(capsys):
    assert cli.main(["istio-iptables", "--nope"]) == 255
    assert capsys.readouterr().err == "Error: unknown flag: --nope\n"


def test_console_scripts_are_installed():
    assert os.access(ISTIO_IPTABLES, os.X_OK)
    assert os.access(PILOT_AGENT, os.X_OK)


def test_readme_tables_are_generated_from_the_flag_table():
    from pathlib import Path

    from agent import flags

    doc = (Path(__file__).parents[3] / "README.md").read_text()
    assert flags.markdown_table(command.all_flags()) in doc
    assert command.env_only_table() in doc


@pytest.mark.parametrize("spec, level", [("", 20), ("default:debug", 10), ("debug", 10), ("ads:debug,default:warn", 30),
                                         ("default:none", 60), ("all:error", 20)])
def test_log_level(spec, level):
    assert command.log_level(spec) == level


def test_bad_log_level_is_a_usage_error():
    h = Host()
    rc, out, err = run(["-n", "--log_output_level=default:loud"], host=h)
    assert rc == 255 and err.count("\n") == 1 and "--log_output_level" in err and h.calls == []


def test_log_as_json():
    import json

    rc, out, err = run(["-n", "--log_as_json"])
    assert rc == 0 and all(json.loads(line)["level"] in ("info", "warn") for line in err.splitlines())


@pytest.mark.parametrize("extra", [[], ["--cleanup-only"], ["--verify"], ["--reconcile", "--force-apply"],
                                   ["-m", "TPROXY", "--redirect-dns", "--capture-all-dns"]])
def test_dry_run_spawns_nothing_and_needs_no_binary(extra, monkeypatch):
    import subprocess

    def refuse(*a, **k):
        raise AssertionError(f"dry-run spawned {a}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    for name in ("execv", "posix_spawn", "posix_spawnp", "fork"):  # any other way to start a process
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setenv("PATH", "/nonexistent")
    rc, out, _ = run(["-n", *INIT, *extra], host=Host(HostFacts(enable_ipv6=True)))
    assert rc == (1 if "--verify" in extra else 0)  # verify: nothing is in place in an empty (recorded) kernel
    assert out
