"""Bad input through the real binary, inside a throwaway network namespace (fewer examples: each one
is a process start).

For inputs the in-process layers reject, `pilot-agent ...` must: exit non-zero, write one line (per
problem) on stderr and no traceback; `istio-iptables` must leave every table of both backends and
both families, the policy rules and the routes exactly as they were; `proxy sidecar` must leave no
process behind in the namespace (no Envoy) and nothing in --configPath (no half-written bootstrap).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings

from agent.exitcodes import Exit
from tests.support.netns import Netns
from tests.support.process import PILOT_AGENT
from agent.sidecar import config as sc
from tests.property.oracles import (IPTABLES_ENV, IPTABLES_FLAGS, SIDECAR_BASE, SIDECAR_ENV, check_sidecar,
                                    run_iptables)
from tests.property.strategies import TRIED, mutated_argv

#: No shrinking: each example is a process start (up to the 15 s timeout when something is wrong),
#: so a failure is reported as found instead of being minimised for many minutes.
SLOW = settings(max_examples=25, deadline=None, database=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
ENV_BASE = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
#: Everything a failed istio-iptables could leave behind in the namespace.
KERNEL_STATE = ("for s in iptables-legacy-save ip6tables-legacy-save iptables-nft-save ip6tables-nft-save; do "
                "echo \"## $s\"; $s | grep -v '^#'; done; ip rule; ip -6 rule; ip route show table all; "
                "ip -6 route show table all")


@pytest.fixture(scope="module")
def ns():
    made = Netns.create("pi")
    # A rule set of our own, so "unchanged" means more than "still empty".
    made.run(["iptables-legacy-restore"], input="*nat\n:PI_MARK - [0:0]\n-A OUTPUT -p tcp --dport 9 -j PI_MARK\nCOMMIT\n")
    made.run(["iptables-nft-restore"], input="*mangle\n:PI_MARK - [0:0]\n-A PREROUTING -j PI_MARK\nCOMMIT\n")
    yield made
    made.close()


def kernel_state(ns: Netns) -> str:
    return ns.run(["sh", "-c", KERNEL_STATE]).stdout


def _argv_ok(argv: list[str], env: dict) -> bool:
    """execve cannot carry NUL; surrogates cannot be encoded."""
    try:
        for s in [*argv, *env.keys(), *env.values()]:
            s.encode()
    except UnicodeEncodeError:
        return False
    return not any("\0" in s for s in [*argv, *env.values()])


def _one_line_or_error_lines(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert lines, "no message on stderr"
    assert all(line.startswith("Error: ") for line in lines), stderr


@SLOW
@given(argv=mutated_argv(IPTABLES_FLAGS), env=IPTABLES_ENV)
def test_istio_iptables_bad_input_changes_nothing(ns, argv, env):
    assume(_argv_ok(argv, env))
    code, _, _ = run_iptables(argv, env)
    assume(code == Exit.USAGE)  # rejected in-process: now prove it through the real binary
    TRIED["subprocess: istio-iptables in a netns"] += 1
    before = kernel_state(ns)
    cp = ns.run([PILOT_AGENT, "istio-iptables", *argv], check=False, env={**ENV_BASE, **env}, timeout=15)
    assert cp.returncode == Exit.USAGE, (argv, env, cp.stderr)
    _one_line_or_error_lines(cp.stderr)
    assert cp.stdout == "", "a rejected command printed a transcript"
    assert kernel_state(ns) == before, f"{argv} {env} changed the kernel"


def _netns_pids(ns: Netns) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@SLOW
@given(extra=mutated_argv(sc.PROXY_FLAGS, max_flags=2), env=SIDECAR_ENV)
def test_sidecar_bad_input_starts_nothing_writes_nothing(ns, extra, env):
    with tempfile.TemporaryDirectory(prefix="pi-") as tmp:
        # --configPath goes *before* the generated flags (a generated flag missing its value must not
        # swallow it), and the run's cwd is the temp dir, so a relative configPath stays in there too.
        config_path = Path(tmp) / "proxy"
        argv = [*SIDECAR_BASE, "--configPath", str(config_path), *extra]
        assume(_argv_ok(argv, env))
        try:
            verdict = check_sidecar(argv, env, {})
        except AssertionError:
            verdict = "bug"  # reported by test_sidecar_input; here we only prove the rejections
        assume(verdict == "rejected")
        TRIED["subprocess: proxy sidecar in a netns"] += 1
        cp = subprocess.run(ns.argv([PILOT_AGENT, "proxy", *argv]), capture_output=True, text=True,
                            env={**ENV_BASE, **env}, timeout=15, cwd=tmp)
        leftovers = [str(p.relative_to(tmp)) for p in Path(tmp).rglob("*")]
    assert cp.returncode == Exit.USAGE, (argv, env, cp.stderr[-2000:])
    _one_line_or_error_lines(cp.stderr)
    assert len(cp.stderr.splitlines()) == 1, cp.stderr
    assert "Envoy started" not in cp.stdout
    assert leftovers == [], f"files written by a rejected run (half-written bootstrap?): {leftovers}"
    assert _netns_pids(ns) == [], "a process (Envoy?) outlived the rejected agent"
