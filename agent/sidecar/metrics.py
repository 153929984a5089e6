"""The agent's own Prometheus registry and the merged `/stats/prometheus` endpoint.

Merging is concatenation in Istio's order (agent metrics, all `istio_agent_*`; then Envoy's, from
its :15090 listener; then the app's, ISTIO_PROMETHEUS_ANNOTATIONS), as in Istio's status server
(https://github.com/istio/istio/blob/master/pilot/cmd/pilot-agent/status/server.go). A failing source
is counted in `istio_agent_scrape_failures_total{type=agent|envoy|application}` and skipped; the
answer is always 200.

The answer is OpenMetrics when an app target answered OpenMetrics (Prometheus asks for it first),
else text. Unlike Istio, which sends its own and Envoy's parts as text under an OpenMetrics content
type, an OpenMetrics answer is OpenMetrics throughout: the agent's registry is rendered as such,
Envoy's text (it has no OpenMetrics output) and a text app target's are converted as they stream
(agent.sidecar.openmetrics), each app's `# EOF` is dropped and one ends the document.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from agent.sidecar.openmetrics import Names, TextToOpenMetrics
from agent.sidecar.scrape import (BODY_CAP, TEXT, Target, is_openmetrics, negotiate_accept, response_content_type,
                                  strip_eof)
from agent.sidecar.statelog import Note, StateLog

# ---------------------------------------------------------------------------------------------
# The agent's registry


class MeshCollector:
    """The mesh services' counts under Istio's agent metric names
    (https://github.com/istio/istio/blob/master/security/pkg/monitoring/monitoring.go and
    https://github.com/istio/istio/blob/master/pkg/istio-agent/metrics/metrics.go), read at scrape time."""

    def __init__(self, mesh: Any):
        self.mesh = mesh

    def collect(self):
        m = self.mesh
        if m.ca is not None:
            stats = m.ca.stats
            for name, value, doc in (("num_outgoing_requests", stats.requests, "Certificate requests sent"),
                                     ("num_outgoing_retries", stats.retries, "Certificate request retries"),
                                     ("num_failed_outgoing_requests", stats.failures, "Failed certificate requests"),
                                     ("outgoing_latency", stats.latency_ms, "Certificate request time, ms (sum)")):
                family = CounterMetricFamily(f"istio_agent_{name}", doc, labels=["request_type"])
                family.add_metric(["csr"], value)
                yield family
        if m.secrets is not None:
            expiry = m.secrets.cert_expiry_seconds()
            if expiry is not None:
                family = GaugeMetricFamily("istio_agent_cert_expiry_seconds", "Seconds until the workload "
                                           "certificate expires", labels=["resource_name"])
                family.add_metric(["default"], expiry)
                yield family
            yield CounterMetricFamily("istio_agent_num_file_secret_failures", "Failed reads of file secrets",
                                      value=m.secrets.stats.file_secret_failures)
        if m.dns is not None:
            yield from _dns_metrics(m.dns.stats)
        c = m.xds.counters
        yield CounterMetricFamily("istio_agent_istiod_connection_failures", "Failed connections to istiod",
                                  value=c.istiod_connection_failures)
        for name, counts in (("istiod_connection_terminations", c.istiod_connection_terminations),
                             ("envoy_connection_terminations", c.envoy_connection_terminations)):
            family = CounterMetricFamily(f"istio_agent_{name}", f"Ended {name.split('_')[0]} streams", labels=["type"])
            for kind in sorted(set(counts) | {"cancelled", "error"}):
                family.add_metric([kind], counts.get(kind, 0))
            yield family
        yield CounterMetricFamily("istio_agent_xds_proxy_requests", "Requests Envoy sent through the xDS proxy",
                                  value=c.xds_proxy_requests)
        yield CounterMetricFamily("istio_agent_xds_proxy_responses", "Responses istiod sent through the xDS proxy",
                                  value=c.xds_proxy_responses)


def _dns_metrics(stats: Any):
    """Istio's DNS proxy metrics (https://github.com/istio/istio/blob/master/pkg/dns/client/monitoring.go)."""
    for name, value, doc in (("dns_requests", stats.requests, "DNS queries the proxy received"),
                             ("dns_upstream_requests", stats.upstream_requests, "Queries forwarded upstream"),
                             ("dns_upstream_failures", stats.upstream_failures, "Forwarded queries that failed")):
        yield CounterMetricFamily(f"istio_agent_{name}", doc, value=value)
    h = stats.upstream_duration
    buckets, total = [], 0
    for bound, count in zip((*h.bounds, float("inf")), h.counts):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    family = HistogramMetricFamily("istio_agent_dns_upstream_request_duration_seconds",
                                   "Time of forwarded queries", buckets=buckets, sum_value=h.sum)
    yield family


class AgentMetrics:
    """Istio's istio_agent_* names for what this agent does, plus Envoy process gauges.

    Names as in https://github.com/istio/istio/blob/master/pkg/istio-agent/metrics/metrics.go where
    Istio has them; the Envoy process collector is beyond Istio.
    """

    def __init__(self, envoy_pid: Callable[[], int | None] = lambda: None, mesh: Any = None):
        prometheus_client.disable_created_metrics()  # Istio exposes no *_created series
        self.registry = reg = prometheus_client.CollectorRegistry(auto_describe=True)
        self.startup_duration = prometheus_client.Gauge(
            "istio_agent_startup_duration_seconds", "The time from the process starting to being marked ready",
            registry=reg)
        self.scrapes = prometheus_client.Counter("istio_agent_scrapes", "Merged metrics requests", registry=reg)
        self.scrape_failures = prometheus_client.Counter(
            "istio_agent_scrape_failures", "Failed scrapes per source", ["type"], registry=reg)
        self.envoy_restarts = prometheus_client.Counter(
            "istio_agent_envoy_restarts", "Envoy restarts after unexpected exits", registry=reg)
        for kind in ("agent", "envoy", "application"):
            self.scrape_failures.labels(kind)
        prometheus_client.ProcessCollector(namespace="istio_agent", registry=reg)
        # Envoy's RSS, CPU seconds and open fds (beyond Istio), read from /proc like the agent's own;
        # no Envoy running: no /proc entry to read, no series.
        prometheus_client.ProcessCollector(namespace="istio_agent_envoy", pid=lambda: envoy_pid() or "none",
                                           registry=reg)
        if mesh is not None:
            reg.register(MeshCollector(mesh))

    def set_startup_duration(self, seconds: float) -> None:
        self.startup_duration.set(seconds)

    def render(self, openmetrics: bool = False) -> bytes:
        """The registry as Prometheus text, or as OpenMetrics (its `# EOF` included)."""
        try:
            if openmetrics:
                return openmetrics_exposition.generate_latest(self.registry)
            return prometheus_client.generate_latest(self.registry)
        except Exception:  # one broken collector must not take the endpoint down
            self.scrape_failures.labels("agent").inc()
            return b""


class _Source:
    """One upstream whose headers arrived: its body is streamed later."""

    def __init__(self, kind: str, url: str, resp: Any):
        self.kind, self.url, self.resp = kind, url, resp

    @property
    def content_type(self) -> str | None:
        return self.resp.headers.get("Content-Type")


class Scrape:
    """One merged answer: `content_type` is known up front, `chunks()` streams the body.

    Memory stays at about one chunk per upstream, whatever the size of Envoy's stats; only a
    trailing `# EOF` (a few bytes) is held back from each app body so it can be dropped.
    """

    def __init__(self, merger: MetricsMerger, envoy: _Source | None, apps: list[_Source], content_type: str):
        self.merger, self.envoy, self.apps, self.content_type = merger, envoy, apps, content_type

    async def chunks(self):
        openmetrics = self.content_type != TEXT
        names = Names()  # with OpenMetrics: the family names written so far, across the parts
        try:
            agent = self.merger.metrics.render(openmetrics)
            if openmetrics:
                names.take_rendered(agent)
            yield strip_eof(agent)
            if self.envoy:
                convert = TextToOpenMetrics(names) if openmetrics else None
                async for chunk in self.merger.stream(self.envoy, strip=False, convert=convert):
                    yield chunk
            for app in self.apps:
                convert = None
                if openmetrics and not is_openmetrics(app.content_type):
                    convert = TextToOpenMetrics(names, timestamps=True)
                async for chunk in self.merger.stream(app, strip=True, convert=convert):
                    yield chunk
            if openmetrics:
                yield b"# EOF\n"
        finally:
            self.close()

    def close(self) -> None:
        for source in ([self.envoy] if self.envoy else []) + self.apps:
            source.resp.release()


class MetricsMerger:
    """Answers one scrape: agent + Envoy + app, never failing as a whole.

    A source's failure is counted every time but logged when it changes, then every 30 s while it
    lasts (`states`), and its recovery once: whoever scrapes does not set the log rate."""

    def __init__(self, metrics: AgentMetrics, session: aiohttp.ClientSession, *,
                 envoy_port: int | None, targets: Sequence[Target] | None, log: Any, states: StateLog | None = None):
        self.metrics = metrics
        self.session = session
        self.envoy_port = envoy_port
        self.targets = list(targets or [])
        self.log = log
        self.states = states or StateLog()

    def _failed(self, kind: str, url: str, error: Any) -> None:
        self.metrics.scrape_failures.labels(kind).inc()
        why = str(error) or type(error).__name__
        report = self.states.observe((kind, url), why, repeat=True)
        if report is not None and report.note is Note.STILL:
            self.log.warning(f"metrics scrape still failing for {report.seconds:.0f}s ({report.checks} scrapes)",
                             source=kind, url=url, error=why)
        elif report is not None:
            self.log.warning("metrics scrape failed", source=kind, url=url, error=why)

    def _answered(self, kind: str, url: str) -> None:
        report = self.states.observe((kind, url), None, repeat=False)
        if report is not None and not report.first:
            self.log.info("metrics scrape succeeded again", source=kind, url=url)

    async def _connect(self, kind: str, url: str, headers: Mapping[str, str], timeout: float) -> _Source | None:
        try:
            resp = await self.session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout))
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self._failed(kind, url, e)
            return None
        if resp.status != 200:
            resp.release()
            self._failed(kind, url, f"HTTP status code {resp.status}")
            return None
        return _Source(kind, url, resp)

    async def stream(self, source: _Source, strip: bool, convert: TextToOpenMetrics | None = None):
        """The upstream body in chunks, capped at 10 MiB, ending with a newline; `# EOF` dropped if
        `strip`; text turned into OpenMetrics by `convert` (a line cut by a failure is dropped)."""
        size, tail, failed = 0, b"", False
        try:
            async for chunk in source.resp.content.iter_any():
                size += len(chunk)
                if size > BODY_CAP:
                    raise ValueError("body over 10 MiB")
                if convert is not None:
                    if out := convert.feed(chunk):
                        yield out
                    continue
                if not strip:  # passed on as it came (no copy); only its last byte is remembered
                    yield chunk
                    tail = chunk[-1:]
                    continue
                data = tail + chunk
                data, tail = data[:-16], data[-16:]  # hold back enough to see a final "# EOF"
                if data:
                    yield data
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            self._failed(source.kind, source.url, e)
            failed = True
        else:
            self._answered(source.kind, source.url)  # the whole body: a failure after the headers is a failure
        if convert is not None:
            if out := convert.close(complete=not failed):
                yield out
        elif strip:
            last = strip_eof(tail)
            if last or size:
                yield last if last.endswith(b"\n") or not last else last + b"\n"
        elif size and tail != b"\n":
            yield b"\n"

    async def open(self, query: str, headers: Mapping[str, str]) -> Scrape:
        """Start every upstream request; returns once all headers are in (or failed)."""
        self.metrics.scrapes.inc()
        timeout = 5.0
        try:
            asked = float(headers.get("X-Prometheus-Scrape-Timeout-Seconds", "") or timeout)
            timeout = asked if math.isfinite(asked) and asked > 0 else timeout
        except ValueError:
            pass
        fwd = {k: headers[k] for k in ("User-Agent", "X-Prometheus-Scrape-Timeout-Seconds") if k in headers}
        jobs = []
        if self.envoy_port:
            url = f"http://127.0.0.1:{self.envoy_port}/stats/prometheus" + (f"?{query}" if query else "")
            # identity: on loopback, Envoy gzipping megabytes for the agent to inflate them again is pure cost
            envoy_headers = {**fwd, "Accept": negotiate_accept(headers.get("Accept"), False), "Accept-Encoding": "identity"}
            jobs.append(self._connect("envoy", url, envoy_headers, timeout))
        app_accept = negotiate_accept(headers.get("Accept"), True)
        for t in self.targets:
            jobs.append(self._connect("application", f"http://127.0.0.1:{t.port}{t.path}", {**fwd, "Accept": app_accept}, timeout))
        results = list(await asyncio.gather(*jobs))
        envoy = results.pop(0) if self.envoy_port else None
        apps = [r for r in results if r is not None]
        ctype = response_content_type([a.content_type for a in apps]) if apps else TEXT
        return Scrape(self, envoy, apps, ctype)

    async def scrape(self, query: str, headers: Mapping[str, str]) -> tuple[bytes, str]:
        """The whole answer in memory (tests, small bodies)."""
        scrape = await self.open(query, headers)
        return b"".join([chunk async for chunk in scrape.chunks()]), scrape.content_type
