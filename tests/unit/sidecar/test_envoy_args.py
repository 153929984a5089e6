"""Envoy's argv (Istio's, https://github.com/istio/istio/blob/master/pkg/envoy/proxy.go), log-level
splitting, exit descriptions and the restart budget."""
import signal

import pytest

from agent.sidecar import envoy

TYPICAL = ("envoy -c etc/istio/proxy/envoy-rev.json --drain-time-s 45 --drain-strategy immediate "
           "--local-address-ip-version v4 --file-flush-interval-msec 1000 --disable-hot-restart "
           "--allow-unknown-static-fields -l warning --component-log-level misc:error "
           "--skip-deprecated-logs --concurrency 2").split()


def test_typical_sidecar_matches_istio_exactly():
    got = envoy.envoy_args("envoy", "etc/istio/proxy/envoy-rev.json", drain_duration=45.0,
                           node_ips=["10.0.0.1"], proxy_log_level="warning",
                           proxy_component_log_level="misc:error", concurrency=2)
    assert got == TYPICAL


@pytest.mark.parametrize("kwargs, present, absent", [
    ({}, ["--skip-deprecated-logs", "-l"], ["--concurrency", "--enable-core-dump", "--config-yaml",
                                           "--component-log-level"]),
    ({"concurrency": 0}, [], ["--concurrency"]),
    ({"skip_deprecated_logs": False}, [], ["--skip-deprecated-logs"]),
    ({"enable_core_dump": True}, ["--enable-core-dump"], []),
])
def test_optional_flags(kwargs, present, absent):
    got = envoy.envoy_args("envoy", "b.json", **kwargs)
    for flag in present:
        assert flag in got
    for flag in absent:
        assert flag not in got


def test_order_of_all_optional_flags():
    got = envoy.envoy_args("e", "b", proxy_log_level="info,misc:error", enable_core_dump=True, concurrency=3)
    flags_only = [a for a in got if a.startswith("-")]
    assert flags_only == ["-c", "--drain-time-s", "--drain-strategy", "--local-address-ip-version",
                          "--file-flush-interval-msec", "--disable-hot-restart", "--allow-unknown-static-fields",
                          "-l", "--component-log-level", "--skip-deprecated-logs", "--enable-core-dump",
                          "--concurrency"]


@pytest.mark.parametrize("seconds, text", [(45.0, "45"), (5.9, "5"), (0.0, "0"), (120.0, "120")])
def test_drain_time_whole_seconds(seconds, text):
    got = envoy.envoy_args("e", "b", drain_duration=seconds)
    assert got[got.index("--drain-time-s") + 1] == text


@pytest.mark.parametrize("ips, family", [
    (["10.0.0.1"], "v4"), (["2001:db8::1"], "v6"), (["2001:db8::1", "10.0.0.1"], "v4"), ([], "v4"),
    (["not-an-ip", "2001:db8::1"], "v6"),
])
def test_ip_version_v6_only_if_all_ipv6(ips, family):
    got = envoy.envoy_args("e", "b", node_ips=ips)
    assert got[got.index("--local-address-ip-version") + 1] == family


@pytest.mark.parametrize("level, component, want", [
    ("warning", "", ("warning", "")),
    ("warning", "misc:error", ("warning", "misc:error")),
    ("info,misc:error,upstream:debug", "rbac:debug", ("info", "misc:error,upstream:debug")),
    ("debug,info", "", ("info", "")),
    ("misc:error", "", ("", "misc:error")),
])
def test_split_log_level(level, component, want):
    assert envoy.split_log_level(level, component) == want


def test_describe_exit():
    assert envoy.describe_exit(0) == {"code": 0}
    assert envoy.describe_exit(1) == {"code": 1}
    assert envoy.describe_exit(-signal.SIGTERM) == {"signal": "SIGTERM"}
    killed = envoy.describe_exit(-signal.SIGKILL)
    assert killed["signal"] == "SIGKILL" and "out of memory" in killed["hint"]


def test_restart_budget_window_and_backoff():
    b = envoy.RestartBudget(limit=3, window=600, base_delay=1.0, max_delay=3.0)
    delays = []
    for t in (0, 10, 20):
        assert b.allow(t)
        delays.append(b.record(t))
    assert delays == [1.0, 2.0, 3.0]
    assert not b.allow(30)
    assert b.allow(601)  # the first restart left the window


def test_restart_budget_zero_never_allows():
    assert not envoy.RestartBudget(limit=0).allow(0)
