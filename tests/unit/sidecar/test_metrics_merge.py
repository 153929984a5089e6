"""Metrics merging (the agent's, Envoy's and the app's metrics in one /stats/prometheus answer, as
Istio's status server does): targets, Accept negotiation, content type, real scrapes."""
import aiohttp
import pytest
from aiohttp import web
from prometheus_client import parser as text_parser
from prometheus_client.openmetrics import parser as openmetrics_parser

from agent.sidecar import logs
from agent.sidecar.metrics import AgentMetrics, MetricsMerger
from agent.sidecar.scrape import (OPENMETRICS_0, OPENMETRICS_1, TEXT, MetricsConfigError, Target, negotiate_accept,
                                  response_content_type, scrape_targets)
from tests.support.process import free_port


@pytest.mark.parametrize("raw, want", [
    (None, None), ("", None),
    ('{"scrape":"false","port":"8080"}', None),
    ('{"scrape":"true"}', [Target(80, "/metrics")]),
    ('{"scrape":"true","port":"9100","path":"/m"}', [Target(9100, "/m")]),
    ('{"targets":[{"port":"8080"},{"port":"08081","path":"/x"}]}', [Target(8080), Target(8081, "/x")]),
    ({"port": "9100"}, [Target(9100)]),
])
def test_scrape_targets(raw, want):
    assert scrape_targets(raw, 15020) == want


@pytest.mark.parametrize("raw, message", [
    ("{nope", "not JSON"), ('{"port":"15020"}', "status port"), ('{"port":"15090"}', "reserved"),
    ('{"port":"http"}', "not a number"), ('{"port":"70000"}', "out of range"),
    ('{"targets":[{"port":"8080"},{"port":"15000"}]}', "reserved"),
])
def test_scrape_target_errors_name_the_setting(raw, message):
    with pytest.raises(MetricsConfigError, match=message) as e:
        scrape_targets(raw, 15020)
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" in str(e.value)


PROM = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def test_negotiate_accept():
    assert negotiate_accept(None, True) == "text/plain;version=0.0.4"
    assert negotiate_accept("application/json", True) == "text/plain;version=0.0.4"
    assert negotiate_accept(PROM, False) == "text/plain;version=0.0.4;q=0.1"
    assert negotiate_accept(PROM, True) == ("application/openmetrics-text;version=1.0.0;q=0.3,"
                                            "application/openmetrics-text;version=0.0.1;q=0.2,"
                                            "text/plain;version=0.0.4;q=0.1")
    assert negotiate_accept("application/*", True) == "application/openmetrics-text;version=0.0.1;q=0.1"
    assert negotiate_accept("application/vnd.google.protobuf", False) == "text/plain;version=0.0.4"


@pytest.mark.parametrize("types, want", [
    ([], TEXT), (["text/plain; version=0.0.4"], TEXT), ([None], TEXT),
    (["application/openmetrics-text; version=1.0.0; charset=utf-8"], OPENMETRICS_1),
    (["application/openmetrics-text"], OPENMETRICS_0),
    # targets that disagree: OpenMetrics, the text ones converted (Istio answers text, the OpenMetrics bodies unchanged)
    (["application/openmetrics-text; version=1.0.0", "text/plain"], OPENMETRICS_1),
    (["text/plain", "application/openmetrics-text"], OPENMETRICS_0),
])
def test_response_content_type(types, want):
    assert response_content_type(types) == want


def test_agent_registry_names():
    m = AgentMetrics(envoy_pid=lambda: None)
    m.scrapes.inc()
    m.envoy_restarts.inc()
    text = m.render().decode()
    for name in ("istio_agent_scrapes_total 1.0", "istio_agent_envoy_restarts_total 1.0",
                 'istio_agent_scrape_failures_total{type="envoy"} 0.0', "istio_agent_startup_duration_seconds",
                 "istio_agent_process_resident_memory_bytes"):
        assert name in text
    assert "_created" not in text
    assert all(line.startswith(("#", "istio_agent_")) for line in text.splitlines())


def test_envoy_process_metrics_for_a_real_process():
    import os
    m = AgentMetrics(envoy_pid=os.getpid)
    text = m.render().decode()
    assert "istio_agent_envoy_process_resident_memory_bytes" in text
    assert "istio_agent_envoy_process_cpu_seconds_total" in text
    assert "istio_agent_envoy_process_open_fds" in text


async def _merge(serve, app_up: bool):
    seen = {}

    async def envoy_stats(request):
        seen.setdefault("envoy_accept", request.headers.get("Accept"))
        seen.setdefault("envoy_query", request.query_string)
        seen.setdefault("envoy_encoding", request.headers.get("Accept-Encoding"))
        return web.Response(text="envoy_x 1\n", content_type="text/plain")

    async def app_metrics(request):
        seen.setdefault("app_accept", request.headers.get("Accept"))
        return web.Response(body=b"app_y 2\n# EOF\n",
                            headers={"Content-Type": "application/openmetrics-text; version=1.0.0; charset=utf-8"})

    envoy_port = await serve({"/stats/prometheus": envoy_stats})
    port = await serve({"/metrics": app_metrics}) if app_up else free_port()
    m = AgentMetrics()
    async with aiohttp.ClientSession() as session:
        merger = MetricsMerger(m, session, envoy_port=envoy_port, targets=[Target(port)], log=logs.get())
        body, ctype = await merger.scrape("usedonly", {"Accept": PROM, "User-Agent": "prometheus"})
        body2, _ = await merger.scrape("", {})
    return body.decode(), ctype, seen, m.render().decode(), body2.decode()


async def test_merge_with_app(serve):
    body, ctype, seen, registry, _ = await _merge(serve, True)
    assert ctype == OPENMETRICS_1
    agent_at, envoy_at, app_at = body.index("istio_agent_scrapes_total"), body.index("envoy_x 1"), body.index("app_y 2")
    assert agent_at < envoy_at < app_at and body.endswith("# EOF\n") and body.count("# EOF") == 1
    families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(body)}  # strict: raises if not
    assert families["istio_agent_scrapes"].type == "counter" and families["envoy_x"].type == "unknown"
    assert seen["envoy_query"] == "usedonly" and seen["envoy_accept"] == "text/plain;version=0.0.4;q=0.1"
    assert seen["envoy_encoding"] == "identity"  # no gzip on loopback only to inflate it again
    assert seen["app_accept"].startswith("application/openmetrics-text;version=1.0.0")
    assert 'istio_agent_scrape_failures_total{type="application"} 0.0' in registry


async def test_merge_with_app_down_still_answers_and_counts(serve):
    body, ctype, _, registry, body2 = await _merge(serve, False)
    assert ctype == TEXT and "envoy_x 1" in body and "app_y" not in body
    families = {f.name: f for f in text_parser.text_string_to_metric_families(body)}
    assert families["istio_agent_scrapes"].type == "counter" and "envoy_x" in families
    assert 'istio_agent_scrape_failures_total{type="application"} 2.0' in registry
    assert "istio_agent_scrapes_total 2.0" in registry


async def test_merge_reads_a_streamed_body_to_the_end(serve):
    async def envoy_stats(request):
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        for i in range(200):  # many chunks, as Envoy streams its stats
            await resp.write(b"".join(b"envoy_metric_%d_%d 1\n" % (i, j) for j in range(50)))
        await resp.write_eof()
        return resp

    envoy_port = await serve({"/stats/prometheus": envoy_stats})
    async with aiohttp.ClientSession() as session:
        merger = MetricsMerger(AgentMetrics(), session, envoy_port=envoy_port, targets=None, log=logs.get())
        body = (await merger.scrape("", {}))[0].decode()
    assert body.count("\nenvoy_metric_") == 200 * 50 and body.endswith("envoy_metric_199_49 1\n")


async def test_a_failing_source_is_logged_on_change_not_per_scrape(serve):
    """50 scrapes with the app down, then up, then over the size cap: each change one line, every
    failure counted."""
    import io

    from agent.sidecar.scrape import BODY_CAP

    state = {"body": None}

    async def app(_):
        if state["body"] is None:
            return web.Response(status=503)
        return web.Response(body=state["body"], content_type="text/plain")

    port = await serve({"/metrics": app})
    buf = io.StringIO()
    logs.configure("default:info", stream=buf)
    m = AgentMetrics()
    async with aiohttp.ClientSession() as session:
        merger = MetricsMerger(m, session, envoy_port=None, targets=[Target(port)], log=logs.get())
        for body in [None] * 50 + [b"app_y 1\n"] * 5 + [b"x" * (BODY_CAP + 1)] * 5:
            state["body"] = body
            await merger.scrape("", {})
    lines = [line.split("\t", 2)[2] for line in buf.getvalue().splitlines() if "metrics scrape" in line]
    assert len(lines) == 3, lines
    assert lines[0].startswith("metrics scrape failed source=application") and "HTTP status code 503" in lines[0]
    assert lines[1].startswith("metrics scrape succeeded again source=application")
    assert lines[2].startswith("metrics scrape failed") and "over 10 MiB" in lines[2]
    assert 'istio_agent_scrape_failures_total{type="application"} 55.0' in m.render().decode()
