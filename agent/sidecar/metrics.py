"""The agent's own Prometheus registry and the merged `/stats/prometheus` endpoint (spec §6.5, §8).

Merging is plain concatenation in Istio's order: agent metrics (all `istio_agent_*`), then Envoy's
(from its :15090 listener), then the app's (ISTIO_PROMETHEUS_ANNOTATIONS), so an OpenMetrics `# EOF`
from the app ends the document. A failing source is counted in
`istio_agent_scrape_failures_total{type=agent|envoy|application}` and skipped; the answer is always 200.

The pure parts (targets, Accept negotiation, joining) import nothing heavy: the edge validates
ISTIO_PROMETHEUS_ANNOTATIONS before spawning Envoy. aiohttp, prometheus_client and psutil are
imported when the registry and merger are built, after Envoy is on its way.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from agent.record import Record

TYPE_CHECKING = False  # typing and aiohttp are not imported here at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

    import aiohttp


TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_1 = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPENMETRICS_0 = "application/openmetrics-text; version=0.0.1; charset=utf-8"
DEFAULT_ACCEPT = "text/plain;version=0.0.4"
RESERVED_PORTS = frozenset({15000, 15001, 15004, 15006, 15008, 15020, 15021, 15053, 15090})
BODY_CAP = 10 * 1024 * 1024


class MetricsConfigError(ValueError):
    """Bad ISTIO_PROMETHEUS_ANNOTATIONS; the message names the setting."""


class Target(Record):
    port: int
    path: str = "/metrics"


# ---------------------------------------------------------------------------------------------
# Pure parts


def _target_port(text: Any, status_port: int) -> int:
    try:
        port = int(str(text), 10)
    except ValueError:
        raise MetricsConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS: port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise MetricsConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS: port {text!r} out of range")
    if port == status_port:
        raise MetricsConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS: port {port} is the status port (recursive scrape)")
    if port in RESERVED_PORTS:
        raise MetricsConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS: port {port} is reserved by Istio")
    return port


def scrape_targets(raw: str | Mapping[str, Any] | None, status_port: int) -> list[Target] | None:
    """ISTIO_PROMETHEUS_ANNOTATIONS -> the app targets to scrape, or None (no app scraping)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise MetricsConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS (not JSON): {raw[:80]!r}") from None
    if not isinstance(raw, Mapping):
        raise MetricsConfigError("invalid ISTIO_PROMETHEUS_ANNOTATIONS: expected a JSON object")
    if str(raw.get("scrape", "")).lower() == "false":
        return None
    targets = raw.get("targets")
    if isinstance(targets, str):
        try:
            targets = json.loads(targets)
        except ValueError:
            raise MetricsConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS: targets {targets!r}") from None
    if not targets:
        return [Target(_target_port(raw.get("port") or "80", status_port), str(raw.get("path") or "/metrics"))]
    if not isinstance(targets, list) or not all(isinstance(t, Mapping) for t in targets):
        raise MetricsConfigError(f"invalid ISTIO_PROMETHEUS_ANNOTATIONS: targets must be a list of objects, got {targets!r}")
    return [Target(_target_port(t.get("port"), status_port), str(t.get("path") or "/metrics")) for t in targets]


def negotiate_accept(header: str | None, openmetrics: bool) -> str:
    """Rewrite a scraper's Accept for an upstream: text only for Envoy, plus OpenMetrics for the app."""
    if not header:
        return DEFAULT_ACCEPT
    kept: list[str] = []
    for part in header.split(","):
        params = [p.strip() for p in part.split(";") if p.strip()]
        if not params:
            continue
        media = params[0].lower()
        rest = [p for p in params[1:] if not p.lower().startswith("q=")]
        if media in ("*", "*/*"):
            value = DEFAULT_ACCEPT
        elif media == "application/*" and openmetrics:
            value = "application/openmetrics-text;version=0.0.1"
        elif media in ("text/*", "text/plain") or (openmetrics and media == "application/openmetrics-text"):
            value = ";".join([media, *rest])
        else:
            continue
        if value not in kept:
            kept.append(value)
    if not kept:
        return DEFAULT_ACCEPT
    kept = kept[:9]
    return ",".join(f"{v};q=0.{len(kept) - i}" for i, v in enumerate(kept))


def response_content_type(app_types: Sequence[str | None]) -> str:
    """The merged answer's format follows the app's (first successful target; disagreement -> text)."""
    formats = set()
    for ctype in app_types:
        low = (ctype or "").lower().replace(" ", "")
        if low.startswith("application/openmetrics-text"):
            formats.add(OPENMETRICS_1 if "version=1.0.0" in low else OPENMETRICS_0)
        else:
            formats.add(TEXT)
    return formats.pop() if len(formats) == 1 else TEXT


def strip_eof(body: bytes) -> bytes:
    stripped = body.rstrip()
    if stripped.endswith(b"# EOF"):
        body = stripped[: -len(b"# EOF")]
    return body if not body or body.endswith(b"\n") else body + b"\n"


def join(agent: bytes, envoy: bytes, apps: Sequence[bytes], content_type: str) -> bytes:
    """Concatenate in Istio's order; one final `# EOF` when the answer is OpenMetrics."""
    parts = [strip_eof(b) for b in (agent, envoy, *apps) if b]
    out = b"".join(parts)
    return out + b"# EOF\n" if content_type != TEXT else out


async def read_capped(stream: Any, limit: int) -> bytes:
    """Read until EOF or `limit` bytes (StreamReader.read(n) returns whatever has arrived so far)."""
    chunks, size = [], 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# The agent's registry


class EnvoyProcessCollector:
    """RSS, CPU seconds and open fds of the current Envoy process (psutil), beyond Istio."""

    def __init__(self, envoy_pid: Callable[[], int | None]):
        self.envoy_pid = envoy_pid

    def collect(self):
        import psutil
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pid = self.envoy_pid()
        if not pid:
            return
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                rss, cpu = proc.memory_info().rss, proc.cpu_times()
                fds = proc.num_fds()
        except (psutil.Error, OSError):
            return
        yield GaugeMetricFamily("istio_agent_envoy_process_resident_memory_bytes", "Envoy resident memory", value=rss)
        yield CounterMetricFamily("istio_agent_envoy_process_cpu_seconds", "Envoy user+system CPU seconds",
                                  value=cpu.user + cpu.system)
        yield GaugeMetricFamily("istio_agent_envoy_process_open_fds", "Envoy open file descriptors", value=fds)


class AgentMetrics:
    """Istio's istio_agent_* names (§8) for what this agent does, plus Envoy process gauges.

    The prometheus_client registry is built on first use (the first scrape or restart), not at
    start-up: importing prometheus_client costs tens of milliseconds that would otherwise delay the
    status server, and so the pod's readiness. The start-up duration is kept until then.
    """

    def __init__(self, envoy_pid: Callable[[], int | None] = lambda: None,
                 on_first_use: Callable[[], None] | None = None):
        self.envoy_pid = envoy_pid
        self.on_first_use = on_first_use  # other deferred start-up work, done before the registry's
        self._built = False
        self._startup: float | None = None

    def _build(self) -> None:
        if self.on_first_use is not None:
            self.on_first_use()
        import prometheus_client

        prometheus_client.disable_created_metrics()  # Istio exposes no *_created series
        self.registry = reg = prometheus_client.CollectorRegistry(auto_describe=True)
        self._startup_duration = prometheus_client.Gauge(
            "istio_agent_startup_duration_seconds", "Process start to first successful readiness", registry=reg)
        self._scrapes = prometheus_client.Counter("istio_agent_scrapes", "Merged metrics requests", registry=reg)
        self._scrape_failures = prometheus_client.Counter(
            "istio_agent_scrape_failures", "Failed scrapes per source", ["type"], registry=reg)
        self._envoy_restarts = prometheus_client.Counter(
            "istio_agent_envoy_restarts", "Envoy restarts after unexpected exits", registry=reg)
        for kind in ("agent", "envoy", "application"):
            self._scrape_failures.labels(kind)
        prometheus_client.ProcessCollector(namespace="istio_agent", registry=reg)
        reg.register(EnvoyProcessCollector(self.envoy_pid))
        self._built = True
        if self._startup is not None:
            self._startup_duration.set(self._startup)

    def _metric(self, name: str) -> Any:
        if not self._built:
            self._build()
        return getattr(self, name)

    startup_duration = property(lambda self: self._metric("_startup_duration"))
    scrapes = property(lambda self: self._metric("_scrapes"))
    scrape_failures = property(lambda self: self._metric("_scrape_failures"))
    envoy_restarts = property(lambda self: self._metric("_envoy_restarts"))

    def set_startup_duration(self, seconds: float) -> None:
        """Readiness' first success: recorded now, exposed from the registry whenever it exists."""
        self._startup = seconds
        if self._built:
            self._startup_duration.set(seconds)

    def render(self) -> bytes:
        import prometheus_client

        registry = self._metric("registry")
        try:
            return prometheus_client.generate_latest(registry)
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

    def __init__(self, merger: "MetricsMerger", envoy: _Source | None, apps: list[_Source], content_type: str):
        self.merger, self.envoy, self.apps, self.content_type = merger, envoy, apps, content_type

    async def chunks(self):
        try:
            yield strip_eof(self.merger.metrics.render())
            if self.envoy:
                async for chunk in self.merger.stream(self.envoy, strip=False):
                    yield chunk
            for app in self.apps:
                async for chunk in self.merger.stream(app, strip=True):
                    yield chunk
            if self.content_type != TEXT:
                yield b"# EOF\n"
        finally:
            self.close()

    def close(self) -> None:
        for source in ([self.envoy] if self.envoy else []) + self.apps:
            source.resp.release()


class MetricsMerger:
    """Answers one scrape: agent + Envoy + app, never failing as a whole."""

    def __init__(self, metrics: AgentMetrics, session: "aiohttp.ClientSession", *,
                 envoy_port: int | None, targets: Sequence[Target] | None, log: Any):
        self.metrics = metrics
        self.session = session
        self.envoy_port = envoy_port
        self.targets = list(targets or [])
        self.log = log

    def _failed(self, kind: str, url: str, error: Any) -> None:
        self.metrics.scrape_failures.labels(kind).inc()
        self.log.warning("metrics scrape failed", source=kind, url=url, error=str(error) or type(error).__name__)

    async def _connect(self, kind: str, url: str, headers: Mapping[str, str], timeout: float) -> _Source | None:
        import aiohttp

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

    async def stream(self, source: _Source, strip: bool):
        """The upstream body in chunks, capped at 10 MiB, ending with a newline; `# EOF` dropped if `strip`."""
        import aiohttp

        size, tail = 0, b""
        try:
            async for chunk in source.resp.content.iter_any():
                size += len(chunk)
                if size > BODY_CAP:
                    raise ValueError("body over 10 MiB")
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
        if strip:
            last = strip_eof(tail)
            if last or size:
                yield last if last.endswith(b"\n") or not last else last + b"\n"
        elif size and tail != b"\n":
            yield b"\n"

    async def open(self, query: str, headers: Mapping[str, str]) -> Scrape:
        """Start every upstream request; returns once all headers are in (or failed)."""
        import asyncio
        import math

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
