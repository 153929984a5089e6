"""Bad input to `pilot-agent istio-iptables`, in-process (the bulk; the kernel runs are in test_subprocess_input.py).

Properties, for any argv/env built from the flag table with generated values:
- the pure layers (agent.flags.parse, agent.iptables.config.load) raise only their declared errors
  (flags.UsageError, config.ConfigError), and every problem renders as one line;
- the mode's run() never raises, returns a declared exit code, and on rejection writes only
  `Error: ...` lines (one per problem; exactly one when a single setting is bad) and never reaches
  the apply step.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import flags
from agent.exitcodes import Exit
from agent.iptables import apply, command, host
from agent.iptables import config as cfgmod
from tests.property.oracles import IPTABLES_ENV, IPTABLES_FLAGS, run_iptables
from tests.property.strategies import TRIED, VALUE, mutated_argv

FAST = settings(max_examples=600, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ARGV = mutated_argv(IPTABLES_FLAGS)


@FAST
@given(argv=ARGV, env=IPTABLES_ENV)
def test_pure_layers_raise_only_declared_errors(argv, env):
    TRIED["iptables: pure layers (flags.parse + config.load)"] += 1
    try:
        parsed = flags.parse(IPTABLES_FLAGS, argv, env, allow_unknown=False)
    except flags.UsageError as e:
        assert "\n" not in str(e), f"usage error is not one line: {str(e)!r}"
        return
    try:
        cfgmod.load(parsed, env, user_id=host.user_id, group_id=host.group_id)
    except cfgmod.ConfigError as e:
        assert e.problems, "ConfigError without a problem"
        for p in e.problems:
            assert "\n" not in str(p) and "\r" not in str(p), f"problem is not one line: {str(p)!r}"


@FAST
@given(argv=ARGV, env=IPTABLES_ENV)
def test_run_rejects_with_error_lines_and_never_applies(argv, env):
    TRIED["iptables: run() in-process"] += 1
    applied: list = []
    code, out, err = run_iptables(argv, env, applied)
    assert code in set(Exit), code
    assert "Traceback" not in err
    if code == Exit.USAGE:
        assert not applied, "a rejected command line reached the apply step"
        lines = err.splitlines()
        assert lines and all(line.startswith("Error: ") for line in lines), f"stderr: {err!r}"


@FAST
@given(flag=st.sampled_from(cfgmod.FLAGS), value=VALUE, form=st.integers(0, 2))
def test_one_bad_value_is_one_line(flag, value, form):
    """A single bad setting -> exactly one stderr line naming it, and exit 255 (or 1 for Istio's own checks)."""
    TRIED["iptables: one flag, one value"] += 1
    spelled = [[f"--{flag.name}={value}"], [f"--{flag.name}", value],
               [f"-{flag.short}", value] if flag.short else [f"--{flag.name}={value}"]][form]
    if flag.kind == "bool" and form == 1:
        spelled = [f"--{flag.name}={value}"]
    code, _, err = run_iptables([*spelled, "--dry-run"], {})
    if code in (Exit.USAGE, Exit.FAILURE) and err.startswith("Error: "):
        lines = err.splitlines()
        assert len(lines) == 1, f"{spelled!r}: {len(lines)} lines: {err!r}"
        assert f"--{flag.name}" in lines[0] or "flag" in lines[0], f"the line does not name the flag: {err!r}"
