"""Scrape targets and the Prometheus exposition details of the merged `/stats/prometheus` (pure).

The app's targets come from ISTIO_PROMETHEUS_ANNOTATIONS, which the injector writes from the pod's
`prometheus.io/*` annotations (https://github.com/istio/istio/blob/master/pkg/kube/inject/inject.go);
they are validated before Envoy is spawned, so a bad value is a start-up error, not a silent gap.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_1 = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPENMETRICS_0 = "application/openmetrics-text; version=0.0.1; charset=utf-8"
DEFAULT_ACCEPT = "text/plain;version=0.0.4"
RESERVED_PORTS = frozenset({15000, 15001, 15004, 15006, 15008, 15020, 15021, 15053, 15090})
BODY_CAP = 10 * 1024 * 1024


class MetricsConfigError(ValueError):
    """Bad ISTIO_PROMETHEUS_ANNOTATIONS; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Target:
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


def is_openmetrics(content_type: str | None) -> bool:
    return (content_type or "").lower().lstrip().startswith("application/openmetrics-text")


def response_content_type(app_types: Sequence[str | None]) -> str:
    """The merged answer is OpenMetrics (the first such target's version) when an app target answered
    OpenMetrics, else text. Istio answers text when targets disagree, with the OpenMetrics bodies in
    it unchanged; here the text parts are converted instead (agent.sidecar.openmetrics), so the
    OpenMetrics-only types an app may use (info, stateset) survive."""
    for ctype in app_types:
        if is_openmetrics(ctype):
            low = (ctype or "").lower().replace(" ", "")
            return OPENMETRICS_1 if "version=1.0.0" in low else OPENMETRICS_0
    return TEXT


def strip_eof(body: bytes) -> bytes:
    stripped = body.rstrip()
    if stripped.endswith(b"# EOF"):
        body = stripped[: -len(b"# EOF")]
    return body if not body or body.endswith(b"\n") else body + b"\n"


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
