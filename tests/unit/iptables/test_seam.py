"""The seam: one flow against either runner. Dry runs of a re-run and of --cleanup-only (the recorder
given a kernel that holds the rules, from a real iptables-save), the Runner protocol, and the one
predicate and the one parser the flow and --verify share."""
from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from agent.iptables import apply, restore, rules
from agent.iptables.recorder import DryRunRecorder
from agent.iptables.runner import RealRunner, Runner

from ._support import load
from .test_restore import FIXTURE_CASES, FIXTURES

ARGV, FACTS = FIXTURE_CASES["tproxy-ports-dns"]
KERNEL = {4: (FIXTURES / "tproxy-ports-dns.nft.save").read_text()}
ENV = {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888"}  # as the fixture was made
SAVES = {"iptables-save", "ip6tables-save"}


def dry_run(argv: str, kernel: dict[int, str] | None = None) -> tuple[int, list[str], DryRunRecorder]:
    cfg = load(argv.split(), ENV)
    recorder = DryRunRecorder(kernel=kernel)
    code = apply.main(cfg, rules.build(cfg, FACTS), FACTS, recorder, io.StringIO())
    return code, recorder.lines, recorder


def test_dry_run_of_a_rerun_checks_and_changes_nothing():
    code, lines, _ = dry_run(ARGV, KERNEL)
    assert code == 0
    assert lines[:2] == ["iptables-save", "ip6tables-save"] and lines[-1] == "iptables-save"
    body = lines[2:-1]
    assert body and all(line.startswith(("*", "-C ")) or line == "COMMIT" for line in body), body
    assert "-C ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_TPROXY" in body


def test_dry_run_of_a_rerun_with_a_rule_gone_refuses_without_reconcile():
    gone = {4: KERNEL[4].replace("-A ISTIO_INBOUND -p tcp -m tcp --dport 81 -j ISTIO_TPROXY\n", "")}
    code, lines, _ = dry_run(ARGV, gone)
    assert code == 1 and not any(line.startswith(("-A", "-I", "-D", "-N", "-X", "-F")) for line in lines)


def test_dry_run_of_a_rerun_with_other_flags_and_reconcile_shows_the_swap():
    code, lines, _ = dry_run(ARGV.replace("-b 80,81", "-b 80") + " --reconcile", KERNEL)
    assert code == 0
    assert "-I INPUT 1 -p tcp -j DROP" in lines  # guardrails in ...
    assert "-D INPUT -p tcp -j DROP" in lines  # ... and out again
    assert "-F ISTIO_INBOUND" in lines and "-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_TPROXY" in lines
    assert "-A ISTIO_INBOUND -p tcp --dport 81 -j ISTIO_TPROXY" not in lines


def test_dry_run_of_cleanup_only_shows_one_document_removing_every_istio_chain():
    code, lines, _ = dry_run(ARGV + " --cleanup-only", KERNEL)
    assert code == 0
    chains = {(t, c) for t, cs in restore.parse_save(KERNEL[4]).items() for c in cs if restore.is_istio_chain(c)}
    removed, table = set(), ""
    for line in lines:
        table = line[1:].strip() if line.startswith("*") else table
        if line.startswith("-X "):
            removed.add((table, line.split()[1]))
    assert removed == chains
    assert "-D PREROUTING -p tcp -j ISTIO_INBOUND" in lines  # the jumps into them go first
    assert not any(line.startswith("iptables -t") for line in lines)  # no one-by-one fallback


def test_dry_run_of_cleanup_only_on_an_empty_kernel_reads_only():
    code, lines, _ = dry_run(ARGV + " --cleanup-only")
    assert code == 0 and set(lines) == SAVES and len(lines) == 3


def test_dry_run_file_gets_every_call(tmp_path):
    path = tmp_path / "dry"
    path.write_text("x" * 200)
    rec = DryRunRecorder(str(path))
    assert rec.save(4) == ""
    rec.restore(4, "* nat\n-N ISTIO_X\nCOMMIT\n")
    rec.iptables(6, ["-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"])
    assert rec.lines == ["iptables-save", "* nat", "-N ISTIO_X", "COMMIT", "ip6tables -t nat -D OUTPUT -j ISTIO_OUTPUT"]
    text = path.read_text()
    assert text.startswith(rec.transcript) and text.endswith("x" * (200 - len(rec.transcript)))


def test_recorder_check_answers_from_its_kernel():
    rec = DryRunRecorder(kernel=KERNEL)
    doc = "*mangle\n-C ISTIO_DIVERT -j ACCEPT\n-C ISTIO_DIVERT -j DROP\nCOMMIT\n"
    assert rec.check(4, doc) == 3
    assert rec.check(4, "*mangle\n-C ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff "
                        "--on-port 15006\nCOMMIT\n") is None
    assert rec.check(6, "*nat\n-C OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n") == 2  # nothing in IPv6


# ---- the protocol -------------------------------------------------------------------------------

def protocol_members() -> set[str]:
    return {n for n in vars(Runner) if not n.startswith("_")} | set(Runner.__annotations__)


@pytest.mark.parametrize("make", [RealRunner, DryRunRecorder])
def test_both_runners_provide_every_member_of_the_protocol(make):
    runner = make()
    assert {"save", "restore", "check", "iptables", "run", "describe", "explain", "free_reads",
            "spawned"} <= protocol_members()
    assert [m for m in protocol_members() if not hasattr(runner, m)] == []


FLOW = ["apply.py", "routes.py", "command.py", "documents.py"]


@pytest.mark.parametrize("name", FLOW)
def test_the_flow_never_asks_which_runner_it_has(name):
    tree = ast.parse((Path(apply.__file__).parent / name).read_text())
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"isinstance", "getattr", "hasattr", "type"}


# ---- the one predicate and the one parser -------------------------------------------------------

@pytest.mark.parametrize("words, ours", [
    ("-A OUTPUT -j ISTIO_OUTPUT", True),
    ("-A OUTPUT --jump ISTIO_OUTPUT", True),
    ("-p tcp -j ISTIO_IN_REDIRECT", True),
    ("-A OUTPUT -j ISTIOFOO", False),  # not Istio's: all of Istio's chains are ISTIO_<name>
    ("-A OUTPUT -j ISTIO", False),
    ("-A OUTPUT -j RETURN -m comment --comment ISTIO_X", False),
    ("-A ISTIO_OUTPUT -j RETURN", False),  # inside an Istio chain, but not a jump to one
    ("-A OUTPUT -g ISTIO_X", False),
])
def test_jumps_to_istio(words, ours):
    assert restore.jumps_to_istio(words.split()) is ours


def test_a_chain_without_the_underscore_is_someone_elses():
    live = restore.parse_save("*nat\n:ISTIOFOO - [0:0]\n-A OUTPUT -j ISTIOFOO\nCOMMIT\n")
    assert not restore.ours_live(live)
    assert restore.ours_live(restore.parse_save("*nat\n:ISTIO_X - [0:0]\nCOMMIT\n"))
    assert restore.diff({}, live) == []  # --verify does not call it stale either


def test_document_blocks_is_the_one_parser():
    text = ("# Generated by iptables-save\n-A OUTSIDE -j X\n*nat\n:OUTPUT ACCEPT [0:0]\n  -A OUTPUT -j ISTIO_O  \n\n"
            "COMMIT\n-A AFTER -j X\n* security\n-A OUTPUT -j ISTIO_S\nCOMMIT\n")
    assert restore.document_blocks(text) == {"nat": [":OUTPUT ACCEPT [0:0]", "-A OUTPUT -j ISTIO_O"],
                                             "security": ["-A OUTPUT -j ISTIO_S"]}
    assert restore.parse_save(text) == {"nat": {"OUTPUT": ["-A OUTPUT -j ISTIO_O"]}}  # only Istio's four tables
    blocks = restore.document_blocks(text)
    assert restore.document_blocks(restore.join_blocks(blocks)) == blocks
