"""The in-process oracles the property suites share: what each command does with an input, with
fake host facts and nothing applied or started. test_iptables_input.py and test_sidecar_input.py
run them on generated input; test_subprocess_input.py proves their rejections again through the
real binary; test_line_breaks.py runs them on a fixed table.
"""
from __future__ import annotations

import io
from unittest import mock

from hypothesis import strategies as st

from agent import flags, logformat
from agent.exitcodes import Exit
from agent.iptables import apply, command, host, nft_command
from agent.iptables import config as cfgmod
from agent.sidecar import bootstrap, probe_config
from agent.sidecar import config as sc
from agent.sidecar.config_parse import ConfigError
from agent.sidecar.scrape import MetricsConfigError, scrape_targets
from tests.property.strategies import APP_PROBERS, NASTY, PROM_ANNOTATIONS, PROXY_CONFIG, TEXT, VALUE

# --- pilot-agent istio-iptables ------------------------------------------------------------------

IPTABLES_FLAGS = command.all_flags()
#: DRY_RUN_FILE_PATH is left out: a generated path would be a real file written by the dry run.
ENV_VARS = sorted(({v for f in cfgmod.FLAGS for v in f.env} | {name for name, _, _ in cfgmod.ENV_ONLY})
                  - {"DRY_RUN_FILE_PATH"})
IPTABLES_ENV = st.dictionaries(st.sampled_from(ENV_VARS), st.one_of(VALUE, NASTY), max_size=3)


def fake_gather(*, dual_stack: bool, need_dns: bool) -> host.HostFacts:
    return host.HostFacts(enable_ipv6=False, host_ip="198.18.0.10", dns_v4=("198.18.0.20",))


def run_iptables(argv, env, applied: list | None = None) -> tuple[int, str, str]:
    """run() with fake host facts and both backends' apply steps stubbed (records the config it was
    given): in-process, a real apply would program this machine's own namespace."""
    out, err = io.StringIO(), io.StringIO()
    record = applied if applied is not None else []

    def stub(cfg, *rest, **kw):
        record.append(cfg)
        return Exit.OK

    # iptables: the one flow, dry-run or not (and --run-validation in it); --native-nftables: the
    # mode's whole flow (its real apply and its validation run after the rules).
    with mock.patch.object(apply, "main", stub), mock.patch.object(nft_command, "run", stub):
        code = command.run(argv, env, stdout=out, stderr=err, gather=fake_gather)
    return code, out.getvalue(), err.getvalue()


# --- pilot-agent proxy sidecar -------------------------------------------------------------------

ENVOY = "/wheel/envoy/_bin/envoy"
DECLARED = (ConfigError, flags.UsageError, logformat.LogConfigError, probe_config.ProbeConfigError, MetricsConfigError)
#: A base that loads on its own (no root certificate needed), so a rejection is the mutation's doing.
SIDECAR_BASE = ["sidecar", "--controlPlaneAuthPolicy", "NONE", "--discoveryAddress", "127.0.0.1:15010"]
OTHER_ENV = ("TERMINATION_DRAIN_DURATION_SECONDS", "MINIMUM_DRAIN_DURATION", "ENVOY_STATUS_PORT",
             "ENVOY_PROMETHEUS_PORT", "ISTIO_CPU_LIMIT", "ISTIO_DELTA_XDS", "EXIT_ON_ZERO_ACTIVE_CONNECTIONS",
             "ENVOY_RESTART_BUDGET", "ENVOY_RESTART_WINDOW", "ENVOY_RESTART_BACKOFF", "AGENT_STANDALONE",
             "ISTIO_META_CLUSTER_ID", "ISTIO_METAJSON_LABELS", "ISTIO_METAJSON_ANNOTATIONS", "INSTANCE_IP",
             "POD_NAMESPACE", "POD_NAME", "HOST_IP", "TRUST_DOMAIN", "ISTIO_BOOTSTRAP_OVERRIDE",
             "PILOT_AGENT_MERGE_ENVOY_STATS", "ENVOY_SKIP_DEPRECATED_LOGS", "ISTIOD_SAN")
SIDECAR_ENV = st.fixed_dictionaries({}, optional={
    "PROXY_CONFIG": PROXY_CONFIG,
    "ISTIO_KUBE_APP_PROBERS": APP_PROBERS,
    "ISTIO_PROMETHEUS_ANNOTATIONS": PROM_ANNOTATIONS,
}).flatmap(lambda d: st.dictionaries(st.sampled_from(OTHER_ENV), st.one_of(VALUE, NASTY, PROXY_CONFIG), max_size=2)
           .map(lambda extra: {**extra, **d}))
#: Files the config reads (mesh config, pod annotations/labels, the bootstrap override).
SIDECAR_FILES = st.fixed_dictionaries({}, optional={
    "./etc/istio/config/mesh": st.one_of(PROXY_CONFIG, PROXY_CONFIG.map(lambda t: "defaultConfig: " + t)),
    "./etc/istio/pod/annotations": st.lists(
        st.tuples(st.sampled_from(["proxy.istio.io/config", "status.sidecar.istio.io/port",
                                   "sidecar.istio.io/statsInclusionPrefixes", "sidecar.istio.io/extraStatTags",
                                   "sidecar.istio.io/discoveryAddress"]), st.one_of(PROXY_CONFIG, VALUE)),
        max_size=2).map(lambda kv: "".join(f"{k}={v!r}\n" for k, v in kv)),
    "/override.json": st.one_of(PROXY_CONFIG, st.just('{"admin": {"address": 5}}'), TEXT),
})


def load_sidecar(argv, env, files):
    files = dict(files)
    env = dict(env)
    if "ISTIO_BOOTSTRAP_OVERRIDE" in env and "/override.json" in files:
        env["ISTIO_BOOTSTRAP_OVERRIDE"] = "/override.json"
    return sc.load(argv, env, read_file=files.get, path_exists=lambda p: p in files,
                   find_wheel_envoy=lambda: ENVOY, host_ips=())


def check_sidecar(argv, env, files) -> str:
    """What the edge would do before starting anything; returns 'accepted' or 'rejected'."""
    try:
        cfg = load_sidecar(argv, env, files)
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
