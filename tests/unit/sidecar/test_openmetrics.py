"""Prometheus text -> OpenMetrics as it streams (agent.sidecar.openmetrics): what comes out parses with
prometheus_client's strict OpenMetrics parser and keeps every sample of what went in."""
from __future__ import annotations

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import parser as text_parser
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics import parser as om_parser

from agent.sidecar.openmetrics import Names, TextToOpenMetrics

#: Envoy's shape (its /stats/prometheus): a TYPE line per family, no HELP, `{}` on unlabelled
#: counters, counters with and without `_total`, gauges, a histogram.
ENVOY = b"""# TYPE envoy_cluster_manager_cluster_added counter
envoy_cluster_manager_cluster_added{} 1
# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{envoy_cluster_name="xds-grpc"} 3
envoy_cluster_upstream_cx_total{envoy_cluster_name="prometheus_stats"} 4
# TYPE envoy_server_live gauge
envoy_server_live{} 1
# TYPE envoy_cluster_membership_total gauge
envoy_cluster_membership_total{envoy_cluster_name="xds-grpc"} 1
# TYPE envoy_server_initialization_time_ms histogram
envoy_server_initialization_time_ms_bucket{le="0.5"} 0
envoy_server_initialization_time_ms_bucket{le="1"} 0
envoy_server_initialization_time_ms_bucket{le="+Inf"} 1
envoy_server_initialization_time_ms_sum{} 23.5
envoy_server_initialization_time_ms_count{} 1
"""


def convert(text: bytes, size: int | None = None, names: Names | None = None, **kw) -> bytes:
    c = TextToOpenMetrics(names or Names(), **kw)
    size = size or len(text) or 1
    return b"".join(c.feed(text[i:i + size]) for i in range(0, len(text), size)) + c.close()


def om_families(body: bytes) -> dict:
    return {f.name: f for f in om_parser.text_string_to_metric_families(body.decode() + "# EOF\n")}


def samples(families) -> set:
    return {(s.name, tuple(sorted(s.labels.items())), s.value, s.timestamp) for f in families for s in f.samples}


def test_envoy_text_becomes_openmetrics_and_keeps_every_sample():
    out = convert(ENVOY)
    families = om_families(out)
    assert {n: f.type for n, f in families.items()} == {
        "envoy_cluster_manager_cluster_added": "unknown",  # a counter without _total: no sample renamed
        "envoy_cluster_upstream_cx": "counter",
        "envoy_server_live": "gauge", "envoy_cluster_membership_total": "gauge",
        "envoy_server_initialization_time_ms": "histogram"}
    assert [line for line in out.splitlines() if not line.startswith(b"#")] == \
           [line for line in ENVOY.splitlines() if not line.startswith(b"#")]  # sample lines untouched


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_answer(size):
    assert convert(ENVOY, size) == convert(ENVOY)


def test_help_type_comments_and_blank_lines():
    text = (b"# a free comment\n\n"
            b"# HELP req_total Requests \\\\ \"served\"\\nand more\n# TYPE req_total counter\nreq_total 3\n\n"
            b"# HELP lonely Only a help line\nlonely 1\n"
            b"# HELP orphan No samples and no TYPE\n# TYPE temp gauge\n# HELP temp Degrees\ntemp 21.5\n"
            b"untyped_sample{a=\"1\"} 2\n# TYPE legacy untyped\nlegacy 4\n")
    out = convert(text)
    assert b"\n\n" not in out and b"free comment" not in out
    families = om_families(out)
    assert families["req"].type == "counter" and families["req"].documentation == 'Requests \\ "served"\nand more'
    assert families["lonely"].documentation == "Only a help line" and families["orphan"].samples == []
    assert families["temp"].documentation == "Degrees" and families["legacy"].type == "unknown"
    assert families["untyped_sample"].type == "unknown"


def test_a_name_already_taken_drops_the_later_family_only():
    names = Names()
    names.take("istio_agent_scrapes", "counter")  # what the agent's part holds
    text = (b"# TYPE x gauge\nx 1\n"
            b"# TYPE x_total counter\nx_total 2\n"  # x is taken: kept as unknown x_total
            b"# TYPE y_total counter\ny_total 3\n"
            b"# TYPE y gauge\ny 4\n"  # y is the counter's family now: dropped
            b"# TYPE y_created gauge\ny_created 5\n"  # prometheus_client's text _created: the counter's name
            b"# TYPE istio_agent_scrapes_total counter\nistio_agent_scrapes_total 9\n"  # the agent's: dropped
            b"# TYPE z gauge\nz 6\n# TYPE z gauge\nz 7\n")  # a family twice: the second dropped
    families = om_families(convert(text, names=names))
    assert {n: [s.value for s in f.samples] for n, f in families.items()} == {
        "x": [1], "x_total": [2], "y": [3], "z": [6]}
    assert families["x_total"].type == "unknown" and families["y"].type == "counter"


def test_millisecond_timestamps_become_seconds_and_label_text_is_left_alone():
    text = (b'# TYPE m gauge\nm 1 1700000000123\nm{a="b 5"} 2\nm{a="c 5 6"} 3\n'
            b'# TYPE n gauge\nn{a="x"} 4 -1500\nn{b="y"} 5 1700000000000\n')
    out = convert(text, timestamps=True)
    assert b"m 1 1700000000.123\n" in out and b'm{a="b 5"} 2\n' in out and b'm{a="c 5 6"} 3\n' in out
    assert b'n{a="x"} 4 -1.500\n' in out
    stamps = {s.labels.get("a") or s.labels.get("b") or "": s.timestamp for f in om_families(out).values()
              for s in f.samples}
    assert float(stamps[""]) == pytest.approx(1700000000.123) and float(stamps["y"]) == 1700000000.0
    assert convert(text) == convert(text.replace(b"1700000000123", b"1700000000123"))  # Envoy's: no rewrite


def test_a_cut_last_line_is_dropped_a_clean_end_kept():
    c = TextToOpenMetrics(Names())
    assert c.feed(b"# TYPE a gauge\na 1\na{x=\"cut") == b"# TYPE a gauge\na 1\n"
    assert c.close(complete=False) == b""
    c = TextToOpenMetrics(Names())
    assert c.feed(b"# TYPE a gauge\na 1") + c.close() == b"# TYPE a gauge\na 1\n"


def test_prometheus_client_text_of_every_type():
    """An app answering text to a merged OpenMetrics answer: prometheus_client's own text, _created on."""
    reg = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("jobs", "Jobs done", ["queue"], registry=reg).labels("a b").inc(3)
    prometheus_client.Gauge("depth", "Queue depth", registry=reg).set(-2.5)
    prometheus_client.Histogram("latency_seconds", "Latency", registry=reg).observe(0.3)
    prometheus_client.Summary("size_bytes", "Sizes", registry=reg).observe(12)
    prometheus_client.Info("build", "Build", registry=reg).info({"version": "1.2"})
    prometheus_client.Enum("state", "State", states=["up", "down"], registry=reg).state("up")
    text = prometheus_client.generate_latest(reg)
    families = om_families(convert(text, timestamps=True))
    want = {s for s in samples(text_parser.text_string_to_metric_families(text.decode())) if "_created" not in s[0]}
    assert samples(families.values()) == want
    assert families["jobs"].type == "counter" and families["latency_seconds"].type == "histogram"


NAME = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
LABEL_VALUE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)


@st.composite
def families(draw):
    out = []
    for name in draw(st.lists(NAME, min_size=1, max_size=6, unique=True)):
        kind = draw(st.sampled_from(["counter", "gauge", "histogram"]))
        labels = draw(st.lists(LABEL_VALUE, min_size=1, max_size=3, unique=True))
        value = st.floats(min_value=0, max_value=1e9, allow_nan=False)
        if kind == "counter":
            f = CounterMetricFamily(name, "c", labels=["l"])
            for v in labels:
                f.add_metric([v], draw(value))
        elif kind == "gauge":
            f = GaugeMetricFamily(name, 'g "q" \\', labels=["l"])
            for v in labels:
                f.add_metric([v], draw(st.floats(allow_nan=False)))
        else:
            f = HistogramMetricFamily(name, "h", labels=["l"])
            for v in labels:
                low = draw(st.integers(0, 100))
                f.add_metric([v], [("0.5", low), ("+Inf", low + draw(st.integers(0, 100)))], draw(value))
        out.append(f)
    return out


class Fixed:
    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return self.fams


@settings(max_examples=150, deadline=None)
@given(families(), st.integers(1, 40))
def test_any_text_exposition_converts_to_valid_openmetrics(fams, size):
    reg = prometheus_client.CollectorRegistry()
    reg.register(Fixed(fams))
    text = prometheus_client.generate_latest(reg)
    out = convert(text, size)
    parsed = om_families(out)  # strict: raises on anything invalid
    got = {(n, l, v) for n, l, v, _ in samples(parsed.values())}
    want = {(n, l, v) for n, l, v, _ in samples(text_parser.text_string_to_metric_families(text.decode()))}
    assert got <= want  # nothing invented or changed
    # every sample kept, unless two families share a name (a counter `a` beside a gauge `a_total`):
    # then the later one is dropped
    reserved = {"counter": ("", "_total", "_created"), "gauge": ("",),
                "histogram": ("", "_bucket", "_count", "_sum", "_created")}
    held = [f.name + suffix for f in fams for suffix in reserved[f.type]]
    if len(held) == len(set(held)):
        assert got == want
