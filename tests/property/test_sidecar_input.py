"""Bad input to `pilot-agent proxy sidecar`, in-process (the bulk; real runs are in test_subprocess_input.py).

The sidecar edge (agent.sidecar.command.run) turns exactly these errors into one `Error: ...` line
and exit 255, before anything is written or started:
  config.load -> ConfigError (a flags.UsageError); logformat.parse_levels -> LogConfigError;
  probe_config.parse_probers -> ProbeConfigError; metrics.scrape_targets -> MetricsConfigError.
Anything else escaping these pure layers, or escaping bootstrap.build_bootstrap/render for an
accepted config, is a traceback the user would see. So the property: for generated argv and env
(PROXY_CONFIG, ISTIO_KUBE_APP_PROBERS, ISTIO_PROMETHEUS_ANNOTATIONS and the other env settings),
only declared errors escape, and their messages are one line.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from agent.sidecar import config as sc
from tests.property.oracles import SIDECAR_BASE, SIDECAR_ENV, SIDECAR_FILES, check_sidecar
from tests.property.strategies import APP_PROBERS, PROM_ANNOTATIONS, PROXY_CONFIG, TRIED, mutated_argv

FAST = settings(max_examples=600, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FAST
@given(extra=mutated_argv(sc.PROXY_FLAGS, unknown=("bogus", "proxyadminport", "x")))
def test_command_line(extra):
    TRIED["sidecar: command line"] += 1
    check_sidecar([*SIDECAR_BASE, *extra], {}, {})


@FAST
@given(env=SIDECAR_ENV)
def test_json_env_settings(env):
    TRIED["sidecar: env (PROXY_CONFIG, ISTIO_KUBE_APP_PROBERS, ISTIO_PROMETHEUS_ANNOTATIONS, ...)"] += 1
    check_sidecar(SIDECAR_BASE, env, {})


@FAST
@given(pc=PROXY_CONFIG)
def test_proxy_config(pc):
    TRIED["sidecar: PROXY_CONFIG alone"] += 1
    check_sidecar(SIDECAR_BASE, {"PROXY_CONFIG": pc}, {})


@FAST
@given(probers=APP_PROBERS)
def test_app_probers(probers):
    TRIED["sidecar: ISTIO_KUBE_APP_PROBERS alone"] += 1
    check_sidecar(SIDECAR_BASE, {"ISTIO_KUBE_APP_PROBERS": probers}, {})


@FAST
@given(annotations=PROM_ANNOTATIONS)
def test_prometheus_annotations(annotations):
    TRIED["sidecar: ISTIO_PROMETHEUS_ANNOTATIONS alone"] += 1
    check_sidecar(SIDECAR_BASE, {"ISTIO_PROMETHEUS_ANNOTATIONS": annotations}, {})


@settings(FAST, max_examples=300)
@given(extra=mutated_argv(sc.PROXY_FLAGS, max_flags=2), env=SIDECAR_ENV, files=SIDECAR_FILES)
def test_everything_together(extra, env, files):
    TRIED["sidecar: argv + env + files together"] += 1
    check_sidecar([*SIDECAR_BASE, *extra], env, files)
