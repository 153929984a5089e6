"""A line break inside a bad value must not split the error into two lines (a log shipper would
read the second half as a separate record). Go's pflag/Istio quote values with %q; so must we.

A fixed table rather than generated values: hypothesis found this on its first run, and keeping the
case out of the generated alphabets (strategies.LINE_BREAKS) lets those runs find other bugs.
"""
from __future__ import annotations

import io

import pytest

from agent.exitcodes import Exit
from agent.iptables import command
from agent.iptables import config as ipcfg
from tests.property.strategies import TRIED
from tests.property.oracles import SIDECAR_BASE, check_sidecar, fake_gather

BREAKS = ("\n", "\r", "\u2028")
IPTABLES_VALUE_FLAGS = [f for f in ipcfg.FLAGS if f.kind != "bool" and f.name not in ("network-namespace",)]


def _iptables(argv: list[str], env: dict) -> tuple[int, str]:
    err = io.StringIO()
    code = command.run(argv + ["--dry-run"], env, stdout=io.StringIO(), stderr=err, gather=fake_gather)
    return code, err.getvalue()


@pytest.mark.parametrize("brk", BREAKS, ids=["LF", "CR", "LS"])
@pytest.mark.parametrize("flag", IPTABLES_VALUE_FLAGS, ids=lambda f: f.name)
def test_iptables_flag_value_with_line_break(flag, brk):
    TRIED["line breaks: istio-iptables flags (fixed table)"] += 1
    code, err = _iptables([f"--{flag.name}=1{brk}x"], {})
    if code == Exit.OK:
        return  # a free-text setting that accepts it (none so far)
    assert code in (Exit.USAGE, Exit.FAILURE)
    assert len(err.splitlines()) == 1, f"--{flag.name}: {err!r}"


@pytest.mark.parametrize("brk", BREAKS, ids=["LF", "CR", "LS"])
@pytest.mark.parametrize("var", ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "ISTIO_OUTBOUND_OWNER_GROUPS", "INBOUND_CAPTURE_PORT"])
def test_iptables_env_value_with_line_break(var, brk):
    TRIED["line breaks: istio-iptables env (fixed table)"] += 1
    code, err = _iptables([], {var: f"1{brk}x"})
    assert code != Exit.OK
    assert len(err.splitlines()) == 1, f"{var}: {err!r}"


SIDECAR_CASES = [
    (["--proxyAdminPort=1{b}2"], {}), (["--drainDuration", "5{b}s"], {}), (["--concurrency=2{b}"], {}),
    (["--discoveryAddress", "a{b}b:15010"], {}), (["--controlPlaneAuthPolicy", "NONE{b}"], {}),
    (["--zipkinAddress", "z{b}:9411"], {}), ([], {"PROXY_CONFIG": '{{"statusPort": "1{b}2"}}'}),
    ([], {"PROXY_CONFIG": "drainDuration: 1{b}x: y"}), ([], {"ISTIO_KUBE_APP_PROBERS": '{{"/x{b}": {{}}}}'}),
    ([], {"ISTIO_PROMETHEUS_ANNOTATIONS": '{{"port": "8{b}0"}}'}), ([], {"ENVOY_STATUS_PORT": "1{b}"}),
    ([], {"ENVOY_RESTART_BUDGET": "1{b}"}), ([], {"MINIMUM_DRAIN_DURATION": "1{b}s"}),
]


@pytest.mark.parametrize("brk", BREAKS, ids=["LF", "CR", "LS"])
@pytest.mark.parametrize("argv,env", SIDECAR_CASES, ids=[" ".join(a) + ",".join(e) for a, e in SIDECAR_CASES])
def test_sidecar_value_with_line_break(argv, env, brk):
    TRIED["line breaks: proxy sidecar (fixed table)"] += 1
    argv = [a.format(b=brk) for a in argv]
    env = {k: v.format(b=brk) for k, v in env.items()}
    try:
        check_sidecar([*SIDECAR_BASE, *argv], env, {})
    except AssertionError as e:
        pytest.fail(f"{argv} {env}: {e}")
