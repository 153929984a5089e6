"""Hypothesis strategies for bad (and nearly good) input to both command lines and the JSON env settings.

Each strategy mixes values that are *almost* right (a port one past the range, a CIDR with a bad
prefix, a probe whose port is a string) with plain garbage (control characters, newlines, huge
numbers, NaN/Infinity in JSON), because the first kind finds wrong error paths and the second kind
finds missing ones.
"""
from __future__ import annotations

import json
from collections import Counter

from hypothesis import strategies as st

#: How many generated inputs each property tried (reported by conftest.py, quoted in docs/testing.md).
TRIED: Counter = Counter()

# --- scalars -------------------------------------------------------------------------------------

#: Line breaks inside a value are tested on their own (test_line_breaks.py, a fixed table per
#: setting), so that one known bug does not hide every other one from the generated runs.
LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
#: Text an argv can carry (no NUL), with no line breaks (see LINE_BREAKS).
ARG_ALPHABET = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00" + "".join(LINE_BREAKS))
NASTY = st.sampled_from([
    "", " ", "*", ",", ",,", "-1", "0", "65535", "65536", "99999999999999999999", "1e3", "0x10", "１２３",
    "\t", "\x1b[31m", "\u00a0", "%", "/", "::", "[::1]", "10.0.0.1/33", "10.0.0.1", "300.1.1.1/8",
    "fe80::1%eth0/64", "01.2.3.4/8", "1.2.3.4/08", "true", "false", "TRUE", "yes", "1s", "-5s", "1h2m3.5s",
    "9999999999h", "nan", "inf", "NaN", "-0", "\x7f", "é", "🙂", "--", "-", "=", "a=b", "$(HOST_IP)",
])
PORTISH = st.one_of(st.integers(-70000, 140000).map(str), st.sampled_from(["15001", "15006", "1", "65535"]))
CIDRISH = st.one_of(
    st.builds(lambda a, b, c, d, n: f"{a}.{b}.{c}.{d}/{n}", *[st.integers(0, 300)] * 4, st.integers(-1, 40)),
    st.builds(lambda h, n: f"2001:db8::{h:x}/{n}", st.integers(0, 0xFFFFF), st.integers(-1, 140)),
    st.sampled_from(["*", "10.0.0.0/8", "0.0.0.0/0", "::/0"]),
)
TEXT = st.text(ARG_ALPHABET, max_size=24)
VALUE = st.one_of(NASTY, PORTISH, CIDRISH, TEXT,
                  st.lists(st.one_of(PORTISH, CIDRISH, NASTY), min_size=1, max_size=4).map(",".join))


def argv_forms(flag_name: str, short: str, value: str, is_bool: bool) -> st.SearchStrategy[list[str]]:
    """Every way pflag lets a user spell one flag, plus a missing value."""
    forms = [st.just([f"--{flag_name}={value}"]), st.just([f"--{flag_name}", value]), st.just([f"--{flag_name}"])]
    if short:
        forms += [st.just([f"-{short}", value]), st.just([f"-{short}{value}"]), st.just([f"-{short}={value}"])]
    if is_bool:
        forms.append(st.just([f"--{flag_name}"]))
    return st.one_of(forms)


@st.composite
def mutated_argv(draw, flag_table, *, unknown=("bogus", "envoy_port", "p0rt", "h"), max_flags: int = 3):
    """argv with 1..max_flags flags from `flag_table` (or unknown ones) given generated values."""
    argv: list[str] = []
    for _ in range(draw(st.integers(1, max_flags))):
        if draw(st.integers(0, 9)) == 0:
            name, short, is_bool = draw(st.sampled_from(unknown)), "", False
        else:
            flag = draw(st.sampled_from(flag_table))
            name, short, is_bool = flag.name, flag.short or "", flag.kind == "bool"
        argv += draw(argv_forms(name, short, draw(VALUE), is_bool))
    if draw(st.integers(0, 19)) == 0:
        argv.append(draw(TEXT))  # a stray positional
    return argv


# --- JSON ----------------------------------------------------------------------------------------

JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), TEXT, NASTY)
JSON_ANY = st.recursive(JSON_SCALAR, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
                        max_leaves=8)


def dumps(value) -> str:
    """Python's json writes NaN/Infinity, which Python's json also reads: exactly the edge we want."""
    return json.dumps(value)


PROXY_CONFIG_FIELDS = (
    "configPath binaryPath serviceCluster drainDuration parentShutdownDuration discoveryAddress zipkinAddress "
    "proxyAdminPort controlPlaneAuthPolicy customConfigFile statNameLength concurrency proxyBootstrapTemplatePath "
    "tracing proxyMetadata runtimeValues statusPort extraStatTags terminationDrainDuration proxyStatsMatcher "
    "fileFlushInterval holdApplicationUntilProxyStarts meshId readinessProbe drain_duration proxy_admin_port"
).split()
FIELD_VALUE = st.one_of(
    JSON_ANY, PORTISH.map(int), st.sampled_from(["45s", "0s", "-1s", "1.5s", "5", "NONE", "MUTUAL_TLS", "x:1"]),
    st.builds(lambda a: {"zipkin": a}, JSON_ANY), st.builds(lambda a: {"address": a}, JSON_ANY),
    st.builds(lambda a: {"inclusionPrefixes": a}, JSON_ANY),
)


def _yamlish(obj) -> str:
    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in obj.items())


PROXY_CONFIG = st.one_of(
    st.dictionaries(st.sampled_from(PROXY_CONFIG_FIELDS), FIELD_VALUE, min_size=1, max_size=3).map(dumps),
    st.dictionaries(st.sampled_from(PROXY_CONFIG_FIELDS), FIELD_VALUE, min_size=1, max_size=3).map(_yamlish),
    JSON_ANY.map(dumps), TEXT, NASTY, st.sampled_from(["{", "[1,2]", "a: [", "- x", "{'a': 1}", "null", "{}"]),
)

PROBE_PATH = st.one_of(st.sampled_from(["/app-health/app/livez", "/app-health/app/readyz", "/app-health/a/startupz",
                                        "/app-health/", "/healthz", "app-health/x/livez", ""]), TEXT)
PROBE_HANDLER = st.one_of(
    st.fixed_dictionaries({"port": st.one_of(PORTISH.map(int), JSON_SCALAR)},
                          optional={"path": JSON_SCALAR, "scheme": st.sampled_from(["HTTP", "HTTPS", "ftp", ""]),
                                    "host": TEXT, "httpHeaders": JSON_ANY, "service": JSON_SCALAR}),
    JSON_ANY,
)
PROBE = st.one_of(
    st.dictionaries(st.sampled_from(["httpGet", "tcpSocket", "grpc"]), PROBE_HANDLER, min_size=1, max_size=2).flatmap(
        lambda d: st.fixed_dictionaries({}, optional={"timeoutSeconds": JSON_SCALAR}).map(lambda t: {**d, **t})),
    JSON_ANY,
)
APP_PROBERS = st.one_of(st.dictionaries(PROBE_PATH, PROBE, min_size=1, max_size=3).map(dumps),
                        JSON_ANY.map(dumps), TEXT, NASTY)

PROM_TARGET = st.one_of(st.fixed_dictionaries({"port": JSON_SCALAR}, optional={"path": JSON_SCALAR}), JSON_ANY)
PROM_ANNOTATIONS = st.one_of(
    st.fixed_dictionaries({}, optional={
        "scrape": st.one_of(st.sampled_from(["true", "false", "False", ""]), JSON_SCALAR),
        "port": st.one_of(PORTISH, JSON_SCALAR), "path": JSON_SCALAR,
        "targets": st.one_of(st.lists(PROM_TARGET, max_size=3), st.lists(PROM_TARGET, max_size=3).map(dumps),
                             JSON_ANY),
    }).map(dumps),
    JSON_ANY.map(dumps), TEXT, NASTY,
)
