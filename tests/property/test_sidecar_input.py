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
from hypothesis import strategies as st

from agent import flags
from agent import logformat
from agent.sidecar import bootstrap, probe_config
from agent.sidecar import config as sc
from agent.sidecar.config_parse import ConfigError
from agent.sidecar.scrape import MetricsConfigError, scrape_targets
from tests.property.strategies import (APP_PROBERS, NASTY, PROM_ANNOTATIONS, PROXY_CONFIG, TEXT, TRIED, VALUE,
                                       mutated_argv)

ENVOY = "/wheel/envoy/_bin/envoy"
DECLARED = (ConfigError, flags.UsageError, logformat.LogConfigError, probe_config.ProbeConfigError, MetricsConfigError)
FAST = settings(max_examples=600, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

#: A base that loads on its own (no root certificate needed), so a rejection is the mutation's doing.
BASE = ["sidecar", "--controlPlaneAuthPolicy", "NONE", "--discoveryAddress", "127.0.0.1:15010"]
OTHER_ENV = ("TERMINATION_DRAIN_DURATION_SECONDS", "MINIMUM_DRAIN_DURATION", "ENVOY_STATUS_PORT",
             "ENVOY_PROMETHEUS_PORT", "ISTIO_CPU_LIMIT", "ISTIO_DELTA_XDS", "EXIT_ON_ZERO_ACTIVE_CONNECTIONS",
             "ENVOY_RESTART_BUDGET", "ENVOY_RESTART_WINDOW", "ENVOY_RESTART_BACKOFF", "AGENT_STANDALONE",
             "ISTIO_META_CLUSTER_ID", "ISTIO_METAJSON_LABELS", "ISTIO_METAJSON_ANNOTATIONS", "INSTANCE_IP",
             "POD_NAMESPACE", "POD_NAME", "HOST_IP", "TRUST_DOMAIN", "ISTIO_BOOTSTRAP_OVERRIDE",
             "PILOT_AGENT_MERGE_ENVOY_STATS", "ENVOY_SKIP_DEPRECATED_LOGS", "ISTIOD_SAN")
ENV = st.fixed_dictionaries({}, optional={
    "PROXY_CONFIG": PROXY_CONFIG,
    "ISTIO_KUBE_APP_PROBERS": APP_PROBERS,
    "ISTIO_PROMETHEUS_ANNOTATIONS": PROM_ANNOTATIONS,
}).flatmap(lambda d: st.dictionaries(st.sampled_from(OTHER_ENV), st.one_of(VALUE, NASTY, PROXY_CONFIG), max_size=2)
           .map(lambda extra: {**extra, **d}))
#: Files the config reads (mesh config, pod annotations/labels, the bootstrap override).
FILES = st.fixed_dictionaries({}, optional={
    "./etc/istio/config/mesh": st.one_of(PROXY_CONFIG, PROXY_CONFIG.map(lambda t: "defaultConfig: " + t)),
    "./etc/istio/pod/annotations": st.lists(
        st.tuples(st.sampled_from(["proxy.istio.io/config", "status.sidecar.istio.io/port",
                                   "sidecar.istio.io/statsInclusionPrefixes", "sidecar.istio.io/extraStatTags",
                                   "sidecar.istio.io/discoveryAddress"]), st.one_of(PROXY_CONFIG, VALUE)),
        max_size=2).map(lambda kv: "".join(f"{k}={v!r}\n" for k, v in kv)),
    "/override.json": st.one_of(PROXY_CONFIG, st.just('{"admin": {"address": 5}}'), TEXT),
})


def load(argv, env, files):
    files = dict(files)
    env = dict(env)
    if "ISTIO_BOOTSTRAP_OVERRIDE" in env and "/override.json" in files:
        env["ISTIO_BOOTSTRAP_OVERRIDE"] = "/override.json"
    return sc.load(argv, env, read_file=files.get, path_exists=lambda p: p in files,
                   find_wheel_envoy=lambda: ENVOY, host_ips=())


def check(argv, env, files) -> str:
    """What the edge would do before starting anything; returns 'accepted' or 'rejected'."""
    try:
        cfg = load(argv, env, files)
        logformat.parse_levels(cfg.log_output_level)
        probe_config.parse_probers(cfg.app_probers)
        if cfg.proxy_type == "sidecar":
            scrape_targets(cfg.prometheus_annotations, cfg.status_port)
    except DECLARED as e:
        assert str(e).strip(), "an empty error message"
        assert len(str(e).splitlines()) == 1, f"error is not one line: {str(e)!r}"
        return "rejected"
    if not cfg.custom_config_file:
        bootstrap.render(bootstrap.build_bootstrap(cfg))  # must not raise for an accepted config
    return "accepted"


@FAST
@given(extra=mutated_argv(sc.PROXY_FLAGS, unknown=("bogus", "proxyadminport", "x")))
def test_command_line(extra):
    TRIED["sidecar: command line"] += 1
    check([*BASE, *extra], {}, {})


@FAST
@given(env=ENV)
def test_json_env_settings(env):
    TRIED["sidecar: env (PROXY_CONFIG, ISTIO_KUBE_APP_PROBERS, ISTIO_PROMETHEUS_ANNOTATIONS, ...)"] += 1
    check(BASE, env, {})


@FAST
@given(pc=PROXY_CONFIG)
def test_proxy_config(pc):
    TRIED["sidecar: PROXY_CONFIG alone"] += 1
    check(BASE, {"PROXY_CONFIG": pc}, {})


@FAST
@given(probers=APP_PROBERS)
def test_app_probers(probers):
    TRIED["sidecar: ISTIO_KUBE_APP_PROBERS alone"] += 1
    check(BASE, {"ISTIO_KUBE_APP_PROBERS": probers}, {})


@FAST
@given(annotations=PROM_ANNOTATIONS)
def test_prometheus_annotations(annotations):
    TRIED["sidecar: ISTIO_PROMETHEUS_ANNOTATIONS alone"] += 1
    check(BASE, {"ISTIO_PROMETHEUS_ANNOTATIONS": annotations}, {})


@settings(FAST, max_examples=300)
@given(extra=mutated_argv(sc.PROXY_FLAGS, max_flags=2), env=ENV, files=FILES)
def test_everything_together(extra, env, files):
    TRIED["sidecar: argv + env + files together"] += 1
    check([*BASE, *extra], env, files)
