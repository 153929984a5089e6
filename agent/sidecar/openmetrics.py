"""Prometheus text (0.0.4) turned into OpenMetrics as it streams, for a merged answer that says
OpenMetrics (https://github.com/prometheus/OpenMetrics/blob/main/specification/OpenMetrics.md).

Envoy has no OpenMetrics output, so when the app's part is OpenMetrics, Envoy's part (and a text
app target's) is converted rather than passed on as text under an OpenMetrics content type (which
Istio does, and which a strict parser refuses: `Clashing name: istio_agent_scrapes_total`).

Sample lines pass through untouched (Envoy's stats can be megabytes: only the metadata lines are
looked at, by one regular expression per chunk). What changes:

- `# TYPE x_total counter` becomes `# TYPE x counter` (OpenMetrics names a counter's family
  without the `_total` its sample keeps); a counter whose samples lack `_total` (most of Envoy's)
  and `untyped` become `unknown`, so no sample is renamed;
- `# HELP` follows its family's new name and OpenMetrics' escaping; other comments and blank lines,
  which OpenMetrics does not allow, are dropped;
- a family whose names another family already holds (across the agent's, Envoy's and the apps'
  parts) is dropped whole, with a debug line: one exposition may not have two;
- with `timestamps` (an app's text), a sample's millisecond timestamp becomes seconds.

An app's own OpenMetrics body is not looked at: a clash between it and the rest is the app's, as
it is in text.
"""
from __future__ import annotations

import re

from agent.sidecar import logs

log = logs.get()

#: The names each OpenMetrics type reserves besides its own.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_count", "_sum", "_bucket", "_created"),
            "summary": ("_count", "_sum", "_created")}
METADATA = re.compile(rb"^(?:#[^\n]*|[ \t]*)\n", re.M)  # a comment or a blank line
TYPE_LINE = re.compile(rb"^# TYPE ([^ \n]+) ([^ \n]+)\n", re.M)
# A sample's timestamp: an integer after a value that is neither label text nor the metric's name.
TIMESTAMP = re.compile(rb"(?<=[ \t])([^ \t{}\"\n]+)[ \t]+(-?\d+)[ \t]*$", re.M)


def claims(name: str, kind: str) -> list[str]:
    return [name, *(name + s for s in SUFFIXES.get(kind, ()))]


class Names:
    """The names the families already written hold, for one merged answer."""

    def __init__(self) -> None:
        self.held: set[str] = set()

    def free(self, name: str, kind: str) -> bool:
        return not any(n in self.held for n in claims(name, kind))

    def take(self, name: str, kind: str) -> None:
        self.held.update(claims(name, kind))

    def take_rendered(self, body: bytes) -> None:
        """Every family of an OpenMetrics body (the agent's own, rendered by prometheus_client)."""
        for m in TYPE_LINE.finditer(body):
            self.take(m[1].decode(), m[2].decode())


def _help_text(text: bytes) -> bytes:
    """Text format escapes `\\` and newline in HELP; OpenMetrics also the double quote."""
    raw = re.sub(rb"\\(.)", lambda m: b"\n" if m[1] == b"n" else m[1], text)
    return raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b'"', b'\\"')


def _seconds(m: re.Match) -> bytes:
    ms = int(m[2])
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    return m[1] + f" {sign}{ms // 1000}.{ms % 1000:03d}".encode()


class TextToOpenMetrics:
    """`feed(chunk)` -> converted bytes (whole lines only), `close(complete)` -> the rest."""

    def __init__(self, names: Names, *, timestamps: bool = False):
        self.names = names
        self.timestamps = timestamps
        self.partial = b""
        self.current: tuple[str, str] | None = None  # the family being read: its text and OpenMetrics names
        self.dropping = False  # that family is left out
        self.help: tuple[str, bytes] | None = None  # a HELP waiting for its TYPE

    def feed(self, chunk: bytes) -> bytes:
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return self._lines(data[:cut]) if cut else b""

    def close(self, complete: bool = True) -> bytes:
        """The last line (dropped unless the source ended cleanly: it may be cut) and a lone HELP."""
        last, self.partial = self.partial, b""
        out = self._lines(last + b"\n") if complete and last.strip() else b""
        return out + self._flush_help()

    def _lines(self, data: bytes) -> bytes:
        out, at = [], 0
        for m in METADATA.finditer(data):
            if m.start() > at:
                out.append(self._samples(data[at:m.start()]))
            out.append(self._metadata(m[0]))
            at = m.end()
        if at < len(data):
            out.append(self._samples(data[at:]))
        return b"".join(out)

    def _samples(self, block: bytes) -> bytes:
        pending = self._flush_help()  # a HELP right before samples: their family has no TYPE
        if self.dropping:
            return pending
        return pending + (TIMESTAMP.sub(_seconds, block) if self.timestamps else block)

    def _metadata(self, line: bytes) -> bytes:
        parts = line.split(None, 3)
        if len(parts) < 3 or parts[0] != b"#" or parts[1] not in (b"TYPE", b"HELP"):
            return b""  # a blank line or a free comment
        name = parts[2].decode(errors="replace")
        if parts[1] == b"HELP":
            text = parts[3].rstrip(b"\n") if len(parts) > 3 else b""
            if self.current is not None and name == self.current[0]:  # after its family's TYPE
                return b"" if self.dropping else b"# HELP %s %s\n" % (self.current[1].encode(), _help_text(text))
            out = self._flush_help()
            self.help = (name, text)
            return out
        kind = parts[3].strip().decode(errors="replace") if len(parts) > 3 else "untyped"
        return self._type(name, kind)

    def _type(self, name: str, kind: str) -> bytes:
        om_name, om_kind = name, kind if kind in ("gauge", "histogram", "summary") else "unknown"
        if kind == "counter" and name.endswith("_total") and self.names.free(name[:-6], "counter"):
            om_name, om_kind = name[:-6], "counter"
        help_, self.help = self.help, None
        out = b""
        if help_ is not None and help_[0] != name:  # a HELP of another family, with no TYPE of its own
            out, help_ = self._help_family(help_), None
        out += self._start(om_name, om_kind, name)
        if help_ is not None and not self.dropping:
            out += b"# HELP %s %s\n" % (om_name.encode(), _help_text(help_[1]))
        return out

    def _claim(self, name: str, om_name: str, om_kind: str) -> bool:
        """Start reading the family `name`, written as `om_name`; False (left out) when another
        family holds its names."""
        self.current = (name, om_name)
        self.dropping = not self.names.free(om_name, om_kind)
        if not self.dropping:
            self.names.take(om_name, om_kind)
        return not self.dropping

    def _start(self, om_name: str, om_kind: str, name: str) -> bytes:
        if not self._claim(name, om_name, om_kind):
            log.debug("metrics family dropped from the OpenMetrics answer: its name is taken", family=name)
            return b""
        return b"# TYPE %s %s\n" % (om_name.encode(), om_kind.encode())

    def _flush_help(self) -> bytes:
        help_, self.help = self.help, None
        return self._help_family(help_) if help_ is not None else b""

    def _help_family(self, help_: tuple[str, bytes]) -> bytes:
        """A HELP with no TYPE: an unknown family of that name."""
        name, text = help_
        return b"# HELP %s %s\n" % (name.encode(), _help_text(text)) if self._claim(name, name, "unknown") else b""
