"""agent.flags: pflag semantics and Istio's precedence (default < env < flag)."""
import pytest

from agent import flags
from agent.flags import Flag, UsageError

TABLE = [
    Flag("envoy-port", short="p", default="15001"),
    Flag("istio-service-exclude-cidr", short="x", env=("ISTIO_SERVICE_EXCLUDE_CIDR",)),
    Flag("istio-inbound-ports", short="b", env=("ISTIO_INBOUND_PORTS",)),
    Flag("redirect-dns", kind="bool", default=False, env=("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE")),
    Flag("probe-timeout", kind="duration", default=5.0, env=("PROBE_TIMEOUT",)),
    Flag("iptables-probe-port", kind="uint16", default=15002),
]


@pytest.mark.parametrize(
    "argv, env, attr, expected",
    [
        ([], {}, "envoy_port", "15001"),
        (["-p", "1"], {}, "envoy_port", "1"),
        (["-p=2"], {}, "envoy_port", "2"),
        (["-p3"], {}, "envoy_port", "3"),
        (["--envoy-port", "4"], {}, "envoy_port", "4"),
        (["--envoy-port=5"], {}, "envoy_port", "5"),
        (["-x", "", "-b", "*"], {}, "istio_service_exclude_cidr", ""),
        (["-x", "", "-b", "*"], {}, "istio_inbound_ports", "*"),
        ([], {"ISTIO_INBOUND_PORTS": "80"}, "istio_inbound_ports", "80"),
        (["-b", "81"], {"ISTIO_INBOUND_PORTS": "80"}, "istio_inbound_ports", "81"),
        (["--redirect-dns"], {}, "redirect_dns", True),
        (["--redirect-dns=false"], {"REDIRECT_DNS": "true"}, "redirect_dns", False),
        ([], {"REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true"}, "redirect_dns", True),
        ([], {"REDIRECT_DNS": "maybe"}, "redirect_dns", False),  # bad env value ignored
        ([], {"PROBE_TIMEOUT": "1m30s"}, "probe_timeout", 90.0),
        (["--probe-timeout", "250ms"], {}, "probe_timeout", 0.25),
    ],
)
def test_precedence_and_forms(argv, env, attr, expected):
    assert flags.parse(TABLE, argv, env).values[attr] == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nope"], "unknown flag: --nope"),
        (["-Z", "1"], "unknown flag: -Z"),
        (["--probe-timeout", "45x"], 'invalid argument "45x" for "--probe-timeout" flag'),
        (["--iptables-probe-port", "70000"], 'invalid argument "70000" for "--iptables-probe-port" flag'),
        (["--redirect-dns=maybe"], 'invalid argument "maybe" for "--redirect-dns" flag'),
        (["-p"], "flag needs an argument: -p"),
    ],
)
def test_bad_command_lines(argv, message):
    with pytest.raises(UsageError, match=message):
        flags.parse(TABLE, argv, {})


def test_unknown_flags_allowed_swallow_their_value():
    parsed = flags.parse(TABLE, ["sidecar", "--old", "v", "--other=1", "-p", "9"], {}, allow_unknown=True)
    assert parsed.unknown == ["--old", "v", "--other=1"]
    assert parsed.positional == ["sidecar"]
    assert parsed.values["envoy_port"] == "9"


@pytest.mark.parametrize("text, seconds", [("45s", 45), ("1m0s", 60), ("300ms", 0.3), ("1h2m3s", 3723), ("0", 0)])
def test_durations_round_trip(text, seconds):
    assert flags.parse_duration(text) == pytest.approx(seconds)
    assert flags.parse_duration(flags.format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["45x", "", "s", "1.2.3s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        flags.parse_duration(text)


def test_usage_lists_env_and_default():
    text = flags.usage("t", TABLE)
    assert "-b, --istio-inbound-ports" in text and "[env ISTIO_INBOUND_PORTS]" in text
    assert "(default 5s)" in text and "REDIRECT_DNS, ISTIO_META_DNS_CAPTURE" in text


@pytest.mark.parametrize("argv, shown", [(["--probe-timeout", "1\nx"], '"1\\nx"'), (["--no\rpe"], "--no\\rpe"),
                                         (["-p", "1", "--iptables-probe-port=x\u2028"], '"x\\u2028"')])
def test_bad_values_stay_on_one_line(argv, shown):
    """A line break in a value must not split the one-line error (pflag quotes values with %q)."""
    with pytest.raises(UsageError) as e:
        flags.parse(TABLE, argv, {})
    assert len(str(e.value).splitlines()) == 1 and shown in str(e.value)
