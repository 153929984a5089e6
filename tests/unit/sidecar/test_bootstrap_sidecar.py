"""agent.sidecar.bootstrap: golden files per case, identity, atomic write.

Refresh the goldens (after an intended change; review the diff):
    UPDATE_GOLDENS=1 /opt/agent/bin/python -m pytest tests/unit/sidecar/test_bootstrap_sidecar.py
tests/sidecar/test_bootstrap_validate.py feeds every golden file to real `envoy --mode validate`.
"""
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from agent.sidecar import bootstrap, bootstrap_parts, config, identity
from agent.sidecar.config_model import SidecarConfig
from tests.unit.sidecar._istio2020 import ISTIO_2020, ROOT
from tests.unit.sidecar._istio2020 import POD_ENV as POD

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[3]
POD_ENV = {**POD, "ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_META_WORKLOAD_NAME": "productpage-v1"}
OVERRIDE = """
node:
  metadata:
    HOST_IP_FROM_OVERRIDE: $(HOST_IP)
static_resources:
  clusters:
  - name: override_extra
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: override_extra
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9999}}}
"""
OPTIONS_PC = json.dumps({
    "extraStatTags": ["request_host"], "runtimeValues": {"re2.max_program_size.error_level": "", "x.y": "true"},
    "proxyStatsMatcher": {"inclusionPrefixes": ["upstream_rq"], "inclusionRegexps": [".*{pod_ip}.*"]},
    "tracingServiceName": "CANONICAL_NAME_AND_NAMESPACE"})
EDGE_PC = """
proxyStatsMatcher: {inclusionPrefixes: ["", upstream_rq], inclusionSuffixes: [""], inclusionRegexps: null}
extraStatTags: ["", request_host]
runtimeValues: {x.on: yes, x.n: 3, re2.max_program_size.error_level: ""}
proxyMetadata: {ISTIO_META_FLAG: on}
connectionSettings: {globalDownstreamConnectionLimit: 1000}
tracing: null
proxyAdminPort: 15000.0
"""
LABELS = 'app="productpage"\nversion="v1"\npod-template-hash="abc"\nistio-locality="r1.z1.s1"\n'
IN_FRONT = POD_ENV
HOST_IPS = {"dual_stack": ("10.1.1.7",)}  # the interface addresses after INSTANCE_IP
TELEMETRY_PC = json.dumps({
    "statsdUdpAddress": "10.1.1.1:9125",
    "envoyMetricsService": {"address": "metrics.telemetry:15000", "tcpKeepalive": {"probes": 3, "time": "10s"},
                            "tlsSettings": {"mode": "MUTUAL", "clientCertificate": "/etc/ms/cert.pem",
                                            "privateKey": "/etc/ms/key.pem", "caCertificates": "/etc/ms/ca.pem"}},
    "envoyAccessLogService": {"address": "als.telemetry:15000", "tlsSettings": {
        "mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://cluster.local/ns/telemetry/sa/als"]}},
    "tracing": {"datadog": {"address": "$(HOST_IP):8126"}}})
TELEMETRY_NOTES = ('sidecar.istio.io/statsHistogramBuckets="{\\"istio\\":[1,5,10],\\"cluster\\":[0.5,1]}"\n'
                   'sidecar.istio.io/statsFlushInterval="10s"\nsidecar.istio.io/statsEvictionInterval="20s"\n')
LIGHTSTEP_PC = json.dumps({"tracing": {"lightstep": {"address": "lightstep-satellite:8080", "accessToken": "t0ken"},
                                       "tlsSettings": {"mode": "SIMPLE", "caCertificates": "/etc/ls/ca.pem",
                                                       "subjectAltNames": ["satellite.example"], "sni": "ls.example"}}})

#: name -> (argv, env, files). Each becomes golden/bootstrap_<name>.json.
CASES = {
    "none_2020": (ISTIO_2020, POD_ENV, {}),
    "mutual_tls": (["sidecar", "--discoveryAddress", "istiod.istio-system.svc:15012"], POD_ENV, {ROOT: "pem"}),
    "zipkin_mtls": (["--zipkinAddress", "zipkin.istio-system:9411"],
                    {**POD_ENV, "ISTIOD_SAN": "istiod.example"}, {ROOT: "pem"}),
    "override": (ISTIO_2020, {**POD_ENV, "ISTIO_BOOTSTRAP_OVERRIDE": "/o.yaml", "HOST_IP": "10.0.0.1"},
                 {"/o.yaml": OVERRIDE}),
    "options": (["--controlPlaneAuthPolicy", "NONE", "--discoveryAddress", "cp:15010", "--log_as_json",
                 "--outlierLogPath", "/dev/stdout", "--stsPort", "15463"],
                {**POD_ENV, "PROXY_CONFIG": OPTIONS_PC, "EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "true",
                 "ISTIO_DELTA_XDS": "true"},
                {"./etc/istio/pod/labels": LABELS,
                 "./etc/istio/pod/annotations": 'sidecar.istio.io/extraStatTags="a,request_host"\n'}),
    "ipv6": (["--controlPlaneAuthPolicy", "NONE"], {**POD_ENV, "INSTANCE_IP": "fd00::7"}, {}),
    "standalone": (["--standalone"], POD_ENV, {}),
    # Istio's layout: Envoy behind the agent's xDS proxy (pipes, delta by default).
    "agent_in_front": (["sidecar", "--discoveryAddress", "istiod.istio-system.svc:15012"], IN_FRONT, {ROOT: "pem"}),
    "agent_in_front_sotw": (["--controlPlaneAuthPolicy", "NONE", "--configPath", "/etc/istio/proxy"],
                            {**IN_FRONT, "ISTIO_DELTA_XDS": "false", "WORKLOAD_IDENTITY_SOCKET_FILE": "spire.sock"},
                            {}),
    "telemetry": (["--controlPlaneAuthPolicy", "NONE"],
                  {**IN_FRONT, "PROXY_CONFIG": TELEMETRY_PC, "HOST_IP": "10.0.0.9", "COMPLIANCE_POLICY": "fips-140-2",
                   "ENVOY_SECURE_METRICS_PORT": "15091", "ENVOY_SECURE_MERGED_METRICS_PORT": "15092",
                   "PEER_METADATA_DISCOVERY": "true",
                   "ISTIO_META_LOAD_STATS_CONFIG_JSON": '{"api_type": "GRPC", "transport_api_version": "V3"}'},
                  {"./etc/istio/pod/annotations": TELEMETRY_NOTES,
                   "./etc/istio/pod/labels": 'app="reviews"\ntopology.istio.io/locality="eu-west1.eu-west1-b"\n'}),
    "lightstep": (["--controlPlaneAuthPolicy", "NONE"], {**IN_FRONT, "PROXY_CONFIG": LIGHTSTEP_PC}, {}),
    "dual_stack": (["--controlPlaneAuthPolicy", "NONE"],
                   {**IN_FRONT, "INSTANCE_IP": "fd00::7", "ISTIO_DUAL_STACK": "true",
                    "ENVOY_STATUS_PORT_ENABLE_PROXY_PROTOCOL": "true", "ISTIO_META_ENABLE_SELF_DISCOVERY": "true"}, {}),
    # Odd but valid values load() accepts: Envoy must accept the bootstrap too (sub-millisecond
    # durations kept to the nanosecond, empty matcher patterns and tags dropped, YAML scalars as text,
    # an explicit connection limit).
    "edge_values": (["--controlPlaneAuthPolicy", "NONE", "--discoveryAddress", "[::1]:15010",
                     "--dnsRefreshRate", "1500us", "--connectTimeout", "1ns"],
                    {**POD_ENV, "PROXY_CONFIG": EDGE_PC, "ISTIO_METAJSON_BAD": '{"a": NaN}'}, {}),
}


def make_config(name: str) -> SidecarConfig:
    argv, env, files = CASES[name]
    return config.load(argv, env, read_file=files.get, path_exists=lambda p: p in files,
                       find_wheel_envoy=lambda: "/wheel/envoy", cwd=lambda: "/", host_ips=HOST_IPS.get(name, ()))


def standalone_reference() -> dict:
    """config/envoy-standalone.yaml: the standalone builder's output for default settings."""
    cfg = config.load(["--standalone"], {}, read_file=lambda p: None, path_exists=lambda p: False,
                      find_wheel_envoy=lambda: "envoy")
    return bootstrap.build_bootstrap(cfg, version="standalone")


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, goldens):
    goldens.check(GOLDEN / f"bootstrap_{name}.json",
                  bootstrap.render(bootstrap.build_bootstrap(make_config(name), version="test")))


def test_shipped_standalone_config_is_in_sync(goldens):
    header = "# Generated by agent.sidecar.bootstrap.build_standalone for the default settings; do not edit.\n" \
             "# Refresh: UPDATE_GOLDENS=1 pytest tests/unit/sidecar/test_bootstrap_sidecar.py\n"
    goldens.check(REPO / "config" / "envoy-standalone.yaml",
                  header + yaml.safe_dump(standalone_reference(), sort_keys=False, width=200))


def test_node_identity_2020():
    cfg = make_config("none_2020")
    data = bootstrap.build_bootstrap(cfg, version="test")
    assert data["node"]["id"] == "sidecar~10.1.1.7~productpage-v1-abc.ns1~ns1.svc.cluster.local"
    assert data["node"]["cluster"] == "productpage.ns1"
    meta = data["node"]["metadata"]
    assert (meta["NAME"], meta["NAMESPACE"], meta["INSTANCE_IPS"]) == ("productpage-v1-abc", "ns1", "10.1.1.7")
    assert (meta["CLUSTER_ID"], meta["SERVICE_ACCOUNT"]) == ("Kubernetes", "bookinfo-productpage")
    assert "PILOT_SAN" not in meta  # NONE


@pytest.mark.parametrize("labels, pc, expected", [
    ({}, {}, "productpage-v1.ns1"),  # WORKLOAD_NAME
    ({"app": "pp"}, {}, "pp.ns1"),
    ({"app.kubernetes.io/name": "k"}, {}, "k.ns1"),
    ({"app": "pp", "service.istio.io/canonical-name": "canon"}, {"tracingServiceName": "CANONICAL_NAME_ONLY"},
     "canon"),
    ({"app": "pp"}, {"serviceCluster": "given"}, "given"),
])
def test_service_cluster(labels, pc, expected):
    files = {ROOT: "", "./etc/istio/pod/labels": "".join(f'{k}="{v}"\n' for k, v in labels.items())}
    cfg = config.load([], {**POD_ENV, "PROXY_CONFIG": json.dumps(pc)}, read_file=files.get,
                      path_exists=lambda p: p in files)
    assert identity.service_cluster(cfg) == expected


def test_mutual_tls_is_the_agents_to_istiod_with_the_mounted_root():
    cfg = make_config("mutual_tls")
    data = bootstrap.build_bootstrap(cfg)
    xds = next(c for c in data["static_resources"]["clusters"] if c["name"] == "xds-grpc")
    assert "transport_socket" not in xds  # the pipe to the agent; the agent's xDS proxy does TLS
    assert (cfg.xds_root_cert, cfg.istiod_san) == (ROOT, "istiod.istio-system.svc")
    assert data["node"]["metadata"]["PILOT_SAN"] == ["istiod.istio-system.svc"]


def test_the_2020_pod_talks_to_the_agent_not_istiod():
    clusters = {c["name"]: c for c in bootstrap.build_bootstrap(make_config("none_2020"))["static_resources"]["clusters"]}
    assert _pipe(clusters["xds-grpc"]) == "/etc/istio/proxy/XDS" and "transport_socket" not in clusters["xds-grpc"]
    # Istio's zipkin cluster has fixed timings, in 1.5 already.
    assert (clusters["zipkin"]["connect_timeout"], clusters["zipkin"]["dns_refresh_rate"]) == ("1s", "30s")
    assert clusters["agent"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == \
        {"socket_address": {"address": "127.0.0.1", "port_value": 15020}}


def test_edge_values_reach_the_bootstrap_as_envoy_wants_them():
    data = bootstrap.build_bootstrap(make_config("edge_values"))
    monitor = data["overload_manager"]["resource_monitors"][0]["typed_config"]
    assert monitor["max_active_downstream_connections"] == 1000
    patterns = data["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert {"prefix": ""} not in patterns and {"suffix": ""} not in patterns and {"prefix": "upstream_rq"} in patterns
    assert [t for t in data["stats_config"]["stats_tags"] if t["tag_name"] in ("", "request_host")] == \
        [{"tag_name": "request_host", "regex": "(request_host=\\.=(.*?);\\.;)"}]
    static = data["layered_runtime"]["layers"][0]["static_layer"]
    assert (static["x.on"], static["x.n"]) == (True, "3") and "re2.max_program_size.error_level" not in static
    assert data["node"]["metadata"]["FLAG"] == "true" and "BAD" not in data["node"]["metadata"]


def test_override_is_merged_like_config_yaml():
    data = bootstrap.build_bootstrap(make_config("override"))
    assert data["node"]["metadata"]["HOST_IP_FROM_OVERRIDE"] == "10.0.0.1"
    assert data["node"]["metadata"]["NAME"] == "productpage-v1-abc"  # merged, not replaced
    names = [c["name"] for c in data["static_resources"]["clusters"]]
    assert names[-1] == "override_extra" and "xds-grpc" in names  # lists append


def test_stats_matcher_order_and_pod_ip_expansion():
    patterns = bootstrap.build_bootstrap(make_config("options"))["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert patterns[0] == {"prefix": "reporter="}
    assert patterns[1] == {"prefix": "upstream_rq"}
    assert {"suffix": "downstream_cx_active"} in patterns
    assert {"safe_regex": {"regex": ".*10.1.1.7.*"}} in patterns
    assert patterns[-3:-1] == [{"prefix": "component"}, {"prefix": "istio"}]
    assert patterns[-1] == {"safe_regex": {"regex": bootstrap_parts.DRAIN_STATS_REGEX}}  # the drain's, last


@pytest.mark.parametrize("name, kept", [
    ("listener.0.0.0.0_15006.downstream_cx_active", True), ("listener.0.0.0.0_15006.downstream_cx_total", True),
    ("listener.[__]_15006.downstream_cx_active", True), ("http.inbound_0.0.0.0_8080;.downstream_rq_active", True),
    ("http.inbound_0.0.0.0_8080.downstream_cx_active", True), ("http.inbound____8080;.downstream_cx_active", True),
    ("http.InboundPassthroughCluster;.downstream_rq_active", True),
    ("listener.0.0.0.0_15001.downstream_cx_active", False), ("listener.0.0.0.0_15006.downstream_cx_destroy", False),
    ("listener.10.96.0.1_15006.downstream_cx_active", False), ("http.outbound_0.0.0.0_80;.downstream_rq_active", False),
    ("http.inbound_0.0.0.0_8080;.downstream_rq_total", False),
    ("listener.0.0.0.0_15006.http.inbound_0.0.0.0_8080;.downstream_rq_active", False),
])
def test_drain_stats_pattern_keeps_only_the_inbound_side(name, kept):
    """Envoy's safe_regex matches the whole stat name (checked on Envoy 1.40 by tests/mesh_e2e/test_drain_in_flight.py)."""
    assert (re.fullmatch(bootstrap_parts.DRAIN_STATS_REGEX, name) is not None) is kept


def test_standalone_is_original_destination_passthrough():
    data = bootstrap.build_bootstrap(make_config("standalone"))
    assert "dynamic_resources" not in data
    listeners = {lst["name"]: lst for lst in data["static_resources"]["listeners"]}
    assert listeners["virtualOutbound"]["address"]["socket_address"]["port_value"] == 15001
    assert listeners["virtualInbound"]["address"]["socket_address"]["port_value"] == 15006
    assert {"0.0.0.0_15090", "0.0.0.0_15021"} <= set(listeners)
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    assert clusters["InboundPassthroughCluster"]["type"] == "ORIGINAL_DST"
    assert clusters["InboundPassthroughCluster"]["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"
    assert "upstream_bind_config" not in clusters["PassthroughCluster"]


def test_write_is_atomic(tmp_path, monkeypatch):
    cfg = config.load(["--standalone", "--configPath", str(tmp_path / "proxy")], {}, read_file=lambda p: None)
    path = bootstrap.write_bootstrap(cfg, bootstrap.build_bootstrap(cfg))
    assert path == str(tmp_path / "proxy" / "envoy-rev.json")
    assert json.loads(Path(path).read_text())["admin"]["address"]["socket_address"]["port_value"] == 15000
    assert oct(os.stat(tmp_path / "proxy").st_mode & 0o777) == "0o700"
    before = Path(path).read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bootstrap.os, "replace", boom)
    with pytest.raises(OSError):
        bootstrap.write_bootstrap(cfg, {"changed": True})
    assert Path(path).read_text() == before  # the old file is intact
    assert os.listdir(tmp_path / "proxy") == ["envoy-rev.json"]  # no temp file left behind


def test_write_fails_cleanly_when_the_directory_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    cfg = config.load(["--standalone", "--configPath", str(tmp_path / "file" / "proxy")], {},
                      read_file=lambda p: None)
    with pytest.raises(OSError):
        bootstrap.write_bootstrap(cfg, bootstrap.build_bootstrap(cfg))


def test_custom_config_file_is_used_as_given(tmp_path):
    cfg = config.load(["--customConfigFile", "/etc/my-envoy.yaml", "--configPath", str(tmp_path)], {},
                      read_file=lambda p: None, path_exists=lambda p: False)
    assert bootstrap.bootstrap_path(cfg) == "/etc/my-envoy.yaml"  # Envoy's -c (agent.sidecar.startup)
    assert os.listdir(tmp_path) == []


def _clusters(data: dict) -> dict:
    return {c["name"]: c for c in data["static_resources"]["clusters"]}


def _pipe(cluster: dict) -> str:
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"]


def test_agent_in_front_is_istios_layout():
    """Envoy's ADS goes to the agent's socket, never to istiod; delta by default."""
    data = bootstrap.build_bootstrap(make_config("agent_in_front"))
    clusters = _clusters(data)
    assert _pipe(clusters["xds-grpc"]) == "./etc/istio/proxy/XDS"
    assert "transport_socket" not in clusters["xds-grpc"] and clusters["xds-grpc"]["max_requests_per_connection"] == 1
    assert _pipe(clusters["sds-grpc"]) == "./var/run/secrets/workload-spiffe-uds/socket"
    ads = data["dynamic_resources"]["ads_config"]
    assert (ads["api_type"], ads["set_node_on_first_message_only"]) == ("DELTA_GRPC", True)
    meta = data["node"]["metadata"]
    assert (meta["WORKLOAD_IDENTITY_SOCKET_FILE"], meta["PILOT_SAN"]) == ("socket", ["istiod.istio-system.svc"])


def test_delta_unless_set_and_the_socket_file_name():
    assert make_config("none_2020").xds_type == "DELTA_GRPC"  # the 2020 pod too: its Envoy talks to the agent
    sotw = make_config("agent_in_front_sotw")
    assert (sotw.xds_type, sotw.workload_identity_socket_file) == ("GRPC", "spire.sock")
    data = bootstrap.build_bootstrap(sotw)
    assert _pipe(_clusters(data)["sds-grpc"]) == "./var/run/secrets/workload-spiffe-uds/spire.sock"
    assert _pipe(_clusters(data)["xds-grpc"]) == "/etc/istio/proxy/XDS"


def test_xds_socket_too_long_for_a_socket_is_written_relative():
    deep = "/srv/" + "d" * 100 + "/proxy"
    cfg = config.load(["--controlPlaneAuthPolicy", "NONE", "--configPath", deep], {},
                      read_file=lambda p: None, path_exists=lambda p: False, cwd=lambda: "/srv/" + "d" * 100)
    assert cfg.xds_socket_path == "proxy/XDS"
    assert _pipe(_clusters(bootstrap.build_bootstrap(cfg))["xds-grpc"]) == "proxy/XDS"


def test_metadata_keys_istio_leaves_out_when_false():
    meta = bootstrap.build_bootstrap(make_config("none_2020"))["node"]["metadata"]
    assert "EXIT_ON_ZERO_ACTIVE_CONNECTIONS" not in meta and "LABELS" not in meta and "ANNOTATIONS" not in meta
    assert "ENVOY_SECURE_METRICS_PORT" not in meta
    assert (meta["METADATA_DISCOVERY"], meta["ENVOY_SKIP_DEPRECATED_LOGS"]) == ("false", "true")  # always / true
    meta = bootstrap.build_bootstrap(make_config("options"))["node"]["metadata"]
    assert meta["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"] == "true"


def test_metajson_objects_and_the_locality_label_as_istio_writes_them():
    env = {**POD_ENV, "ISTIO_METAJSON_LABELS": '{"app": "x", "istio-locality": "r.z.s"}',
           "ISTIO_METAJSON_ANNOTATIONS": '{"a/b": "c"}'}
    cfg = config.load(["--controlPlaneAuthPolicy", "NONE"], env, read_file=lambda p: None, path_exists=lambda p: False)
    node = bootstrap.build_bootstrap(cfg)["node"]
    assert node["locality"] == {"region": "r", "zone": "z", "sub_zone": "s"}
    meta = node["metadata"]
    assert (meta["app"], meta["istio-locality"], meta["a/b"]) == ("x", "r.z.s", "c")  # keys merged as given
    assert meta["LABELS"] == meta["STATIC_LABELS"] == {"app": "x", "istio-locality": "r/z/s"}
    # A labels file makes LABELS a new map: the static labels keep their dots.
    files = {"./etc/istio/pod/labels": 'topology.istio.io/locality="eu.eu-b"\n'}
    cfg = config.load(["--controlPlaneAuthPolicy", "NONE"], env, read_file=files.get, path_exists=lambda p: False)
    node = bootstrap.build_bootstrap(cfg)["node"]
    assert node["locality"] == {"region": "eu", "zone": "eu-b"}
    assert node["metadata"]["STATIC_LABELS"]["istio-locality"] == "r.z.s"
    assert node["metadata"]["LABELS"]["istio-locality"] == "eu/eu-b"


def test_telemetry_collectors():
    data = bootstrap.build_bootstrap(make_config("telemetry"))
    clusters = _clusters(data)
    assert clusters["datadog_agent"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == \
        {"socket_address": {"address": "10.0.0.9", "port_value": 8126}}  # $(HOST_IP) replaced
    assert data["tracing"]["http"]["typed_config"]["service_name"] == "reviews.ns1"
    ms = clusters["envoy_metrics_service"]
    common = ms["transport_socket"]["typed_config"]["common_tls_context"]
    assert [s["name"] for s in common["tls_certificate_sds_secret_configs"]] == ["file-cert:/etc/ms/cert.pem~/etc/ms/key.pem"]
    assert common["combined_validation_context"]["validation_context_sds_secret_config"]["name"] == "file-root:/etc/ms/ca.pem"
    assert ms["upstream_connection_options"] == {"tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": 10}}
    als = clusters["envoy_accesslog_service"]["transport_socket"]["typed_config"]
    assert (als["sni"], als["common_tls_context"]["alpn_protocols"]) == ("envoy_accesslog_service", ["istio", "h2"])
    assert als["common_tls_context"]["combined_validation_context"]["default_validation_context"] == \
        {"match_subject_alt_names": [{"exact": "spiffe://cluster.local/ns/telemetry/sa/als"}]}
    assert [s["name"] for s in data["stats_sinks"]] == ["envoy.stat_sinks.metrics_service", "envoy.stat_sinks.statsd"]
    assert data["cluster_manager"]["load_stats_config"] == {"api_type": "GRPC", "transport_api_version": "V3"}
    assert data["layered_runtime"]["layers"][0]["static_layer"]["envoy.reloadable_features.google_grpc_disable_tls_13"]


def test_stats_annotations_and_secure_metrics_listeners():
    data = bootstrap.build_bootstrap(make_config("telemetry"))
    assert (data["stats_flush_interval"], data["stats_eviction_interval"]) == ("10s", "20s")
    assert [b["match"]["prefix"] for b in data["stats_config"]["histogram_bucket_settings"]] == ["cluster", "istio"]
    patterns = data["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert patterns[:2] == [{"prefix": "reporter="}, {"prefix": "workload_discovery"}]  # PEER_METADATA_DISCOVERY, delta
    listeners = {lst["name"]: lst for lst in data["static_resources"]["listeners"]}
    assert list(listeners) == ["0.0.0.0_15090", "0.0.0.0_15091", "0.0.0.0_15092", "0.0.0.0_15021"]
    tls = listeners["0.0.0.0_15092"]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    routes = listeners["0.0.0.0_15092"]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    assert [r["match"] for r in routes["virtual_hosts"][0]["routes"]] == [
        {"path": "/stats/prometheus"}, {"path": "/metrics"}, {"prefix": "/"}]  # the rest: 404


@pytest.mark.parametrize("notes, warning", [
    ({"sidecar.istio.io/statsEvictionInterval": "7s"}, "not a multiple of the stats flush interval"),
    ({"sidecar.istio.io/statsFlushInterval": "soon"}, "statsFlushInterval: not a duration from 1ms to 5m0s"),
    ({"sidecar.istio.io/statsFlushInterval": "5m"}, "statsFlushInterval: not a duration from 1ms to 5m0s"),
    ({"sidecar.istio.io/statsHistogramBuckets": '{"istio": [1, "x"]}'}, "statsHistogramBuckets"),
    ({"sidecar.istio.io/statsHistogramBuckets": '{"istio": [1, 1]}'}, "distinct positive buckets"),
    ({"sidecar.istio.io/statsHistogramBuckets": '{"istio": []}'}, "distinct positive buckets"),
    ({"sidecar.istio.io/statsHistogramBuckets": '{"istio": [[1]]}'}, "distinct positive buckets"),
])
def test_bad_stats_annotations_are_warnings_as_in_istio(notes, warning):
    files = {"./etc/istio/pod/annotations": "".join(f"{k}={json.dumps(v)}\n" for k, v in notes.items())}
    cfg = config.load(["--controlPlaneAuthPolicy", "NONE"], {}, read_file=files.get, path_exists=lambda p: False)
    assert any(warning in w for w in cfg.warnings), cfg.warnings
    data = bootstrap.build_bootstrap(cfg)
    assert not {"stats_flush_interval", "stats_eviction_interval"} & set(data)
    assert "histogram_bucket_settings" not in data["stats_config"]


def test_lightstep_token_file_is_written_with_the_bootstrap(tmp_path):
    argv, env, files = CASES["lightstep"]
    cfg = config.load([*argv, "--configPath", str(tmp_path / "proxy")], env, read_file=files.get,
                      path_exists=lambda p: False)
    bootstrap.write_bootstrap(cfg, bootstrap.build_bootstrap(cfg))
    token = tmp_path / "proxy" / "lightstep_access_token.txt"
    assert token.read_text() == "t0ken" and oct(token.stat().st_mode & 0o777) == "0o600"
    tracer = json.loads((tmp_path / "proxy" / "envoy-rev.json").read_text())["tracing"]["http"]
    assert tracer["typed_config"]["grpc_service"]["initial_metadata"] == [{"key": "lightstep-access-token", "value": "t0ken"}]


def test_standalone_has_no_secure_metrics_listeners():
    cfg = config.load(["--standalone"], {"ENVOY_SECURE_METRICS_PORT": "15091"}, read_file=lambda p: None,
                      path_exists=lambda p: False)
    names = [lst["name"] for lst in bootstrap.build_bootstrap(cfg)["static_resources"]["listeners"]]
    assert "0.0.0.0_15091" not in names


def test_dual_stack_proxy_protocol_and_self_discovery():
    data = bootstrap.build_bootstrap(make_config("dual_stack"))
    assert data["admin"]["address"]["socket_address"]["address"] == "::1"  # the first IP is IPv6
    listeners = {lst["name"]: lst for lst in data["static_resources"]["listeners"]}
    assert listeners["::_15021"]["additional_addresses"] == [
        {"address": {"socket_address": {"address": "0.0.0.0", "port_value": 15021}}}]
    assert listeners["::_15021"]["listener_filters"][0]["typed_config"]["allow_requests_without_proxy_protocol"]
    assert _clusters(data)["local_cluster"]["eds_cluster_config"]["service_name"] == "local_cluster"
    assert data["cluster_manager"] == {"local_cluster_name": "local_cluster", "enable_deferred_cluster_creation": True}
    # Without ISTIO_DUAL_STACK a dual-stack pod is IPv4 only, as in Istio.
    argv, env, _ = CASES["dual_stack"]
    cfg = config.load(argv, {**env, "ISTIO_DUAL_STACK": "false"}, read_file=lambda p: None,
                      path_exists=lambda p: False, host_ips=HOST_IPS["dual_stack"])
    listeners = bootstrap.build_bootstrap(cfg)["static_resources"]["listeners"]
    assert [lst["name"] for lst in listeners] == ["0.0.0.0_15090", "0.0.0.0_15021"]
    assert not any("additional_addresses" in lst for lst in listeners)
