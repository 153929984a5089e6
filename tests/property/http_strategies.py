"""Hypothesis strategies for what a caller can send an HTTP/1 server: request lines, headers and bodies
that are right, nearly right (a chunk size off by one, a Content-Length too long, `HTTP/1.10`) or
garbage (NULs, bare CR/LF, non-ASCII, TLS records, huge lines), pipelined, and sent in pieces, slowly,
cut short, or closed with a reset."""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

ROUTES = [b"/healthz/ready", b"/app-health/app/livez", b"/app-health/app/readyz", b"/app-health/tcp/livez",
          b"/app-health/nope/livez", b"/app-lifecycle/app/prestopz", b"/stats/prometheus", b"/metrics",
          b"/quitquitquit", b"/drain", b"/"]
ODD_TARGETS = [b"*", b"", b"http://127.0.0.1:15020/healthz/ready", b"//healthz//ready", b"/healthz/ready/../ready",
               b"/%2e%2e/drain", b"/healthz%2Fready", b"/HEALTHZ/READY", b"/healthz/ready;x=1", b"/a\\..\\drain",
               b"/stats/prometheus?usedonly&filter=.*", b"/stats/prometheus?%zz", b"/metrics?" + b"q" * 3000,
               b"/\xc3\xa9\xe2\x80\xa8", b"/\x00", b"/\r", b"/ /", "/pod-é/livez".encode()]
METHODS = st.one_of(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT",
                     b"PRI", b"get", b"G\x00T", b"", b"GET GET", b"\x16\x03\x01\x00\xa5\x01"]),
    st.binary(min_size=1, max_size=10))
TARGETS = st.one_of(
    st.sampled_from(ROUTES),
    st.sampled_from(ROUTES).flatmap(lambda r: st.binary(max_size=20).map(lambda q: r + b"?" + q)),
    st.sampled_from(ODD_TARGETS),
    st.text(max_size=30).map(lambda t: b"/" + t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40))
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.10",
                            b"http/1.1", b"HTTP/1.1\x00", b"HTTP/9", b"", b"HTTP/1.1 extra"])
EOLS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n", b"\n\r"])
NAMES = st.one_of(
    st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Accept",
                     b"Accept-Encoding", b"Expect", b"Upgrade", b"User-Agent", b"Cookie", b"Content-Type",
                     b"X-Prometheus-Scrape-Timeout-Seconds", b"X-Forwarded-For", b"host", b"Host ", b" Host",
                     b"Content-Length\x00", b""]),
    st.binary(min_size=1, max_size=16))
VALUES = st.one_of(
    st.sampled_from([b"127.0.0.1:15020", b"chunked", b"gzip, chunked", b"chunked, chunked", b"identity",
                     b"close", b"keep-alive", b"Upgrade", b"100-continue", b"websocket", b"h2c", b"-1", b"0",
                     b"99999999999999999999", b"1e3", b" 5", b"0x10", b"gzip", b"deflate", b"br, gzip;q=0",
                     b"application/openmetrics-text; version=1.0.0", b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                     b"", b"\xff\xfe", b"a\x00b", b"\x1b[2J", "é🙂".encode(), b"2.5", b"nan"]),
    st.binary(max_size=40),
    st.integers(8000, 20000).map(lambda n: b"v" * n))  # past the header line limit, or just under it


@st.composite
def chunked_body(draw) -> bytes:
    """A chunked body, each part right or wrong: the size (hex, off by some, negative, huge, with an
    extension or spaces), the data, the CRLFs, the last chunk and trailers."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=40))
        size = draw(st.sampled_from(["{:x}", "{:X}", "{:x};ext=1", " {:x}", "{:x} ", "-{:x}", "0x{:x}", "fffffffffffffffff",
                                     "{:x}\x00"])).format(len(data) + draw(st.sampled_from([0, 0, 0, 1, -1])))
        out += size.encode() + draw(EOLS) + data + draw(EOLS)
    out += draw(st.sampled_from([b"0\r\n\r\n", b"0\r\n", b"", b"0\r\nX-Trailer: 1\r\n\r\n", b"0\r\nbad trailer\r\n\r\n",
                                 b"zz\r\n", b"1\r\n"]))
    return out


#: Header values a real client sends (Prometheus, kubelet, curl, Envoy), the handlers' own inputs.
GOOD_HEADERS = st.sampled_from([
    (b"Accept", b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    (b"Accept", b"text/plain"), (b"Accept", b"*/*"), (b"Accept", b"application/openmetrics-text; version=1.0.0"),
    (b"Accept-Encoding", b"gzip"), (b"Accept-Encoding", b"deflate, br;q=0.5"), (b"Accept-Encoding", b"identity"),
    (b"User-Agent", b"kube-probe/1.30"), (b"User-Agent", b"Prometheus/2.42.0"), (b"User-Agent", b"grpc-go/1.60"),
    (b"X-Prometheus-Scrape-Timeout-Seconds", b"10"), (b"X-Prometheus-Scrape-Timeout-Seconds", b"0.001"),
    (b"Connection", b"close"), (b"Connection", b"keep-alive"), (b"Connection", b"Upgrade"),
    (b"Upgrade", b"websocket"), (b"Upgrade", b"h2c"), (b"Expect", b"100-continue"),
    (b"Host", b"127.0.0.1:15020"), (b"Host", b"app.ns.svc:8080"), (b"Cookie", b"a=b"),
    (b"X-Forwarded-For", b"198.18.0.1"), (b"x-request-id", b"abc")])
CUSTOM_HEADERS = st.tuples(st.from_regex(rb"\AX-[A-Za-z0-9-]{1,12}\Z"), st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7f)))  # printable and obs-text bytes, as HTTP allows
MUTATIONS = ("method", "target", "version", "eol", "separator", "header", "value", "huge", "many", "framing",
             "chunked", "nul", "binary")


@st.composite
def request(draw) -> bytes:
    """One request: a right one, then none to three things made wrong, so that both the handlers
    (a request that parses) and the parser's error paths are reached."""
    wrong = set(draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)) if draw(st.integers(0, 9)) >= 4 else ())
    method = draw(METHODS if "method" in wrong else st.sampled_from([b"GET"] * 4 + [b"POST", b"HEAD", b"PUT", b"OPTIONS"]))
    target = draw(TARGETS if "target" in wrong else st.sampled_from(ROUTES).flatmap(
        lambda r: st.sampled_from([r, r + b"?usedonly", r + b"?filter=server", r + b"?a=%00&b=%e9"])))
    version = draw(VERSIONS if "version" in wrong else st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    eol = draw(EOLS if "eol" in wrong else st.just(b"\r\n"))
    sep = draw(st.sampled_from([b":", b" : ", b":\t", b"\x00:"]) if "separator" in wrong else st.just(b": "))
    headers = [(b"Host", b"127.0.0.1")] + draw(st.lists(st.one_of(GOOD_HEADERS, CUSTOM_HEADERS), max_size=6))
    if "header" in wrong:
        headers.append(draw(st.tuples(NAMES, VALUES)))
    if "value" in wrong:
        headers.append((b"X-Bad", draw(st.sampled_from([b"a\x00b", b"\x1b[2J", b"a\rb", b"a\nb", b"\x7f", b"\xff"]))))
    if "huge" in wrong:
        headers.append((b"X-Huge", b"v" * draw(st.integers(8000, 70000))))
    if "many" in wrong:
        headers += [(b"X-Many-%d" % i, b"x") for i in range(draw(st.integers(50, 300)))]
    body = draw(chunked_body() if "chunked" in wrong else st.binary(max_size=200))
    framing = draw(st.sampled_from(["none", "length+1", "length-1", "both", "te-only", "two-lengths"])
                   if "framing" in wrong else st.just("chunked" if "chunked" in wrong else "length"))
    if framing in ("length", "length+1", "length-1", "both", "two-lengths"):
        delta = {"length+1": 1, "length-1": -1}.get(framing, 0)
        headers.append((b"Content-Length", b"%d" % max(0, len(body) + delta)))
    if framing == "two-lengths":
        headers.append((b"Content-Length", b"%d" % (len(body) + 1)))
    if framing in ("chunked", "both", "te-only"):
        headers.append((b"Transfer-Encoding", b"chunked"))
    if framing == "none":
        body = body if draw(st.booleans()) else b""
    data = method + b" " + target + b" " + version + eol + b"".join(n + sep + v + eol for n, v in headers) + eol + body
    if "nul" in wrong:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00" + data[at:]
    return draw(st.binary(min_size=1, max_size=200)) if "binary" in wrong else data


@dataclass(frozen=True)
class Plan:
    """How one connection sends its bytes and ends."""

    data: bytes  # one request, or several pipelined
    cuts: tuple[int, ...]  # send in pieces split at these offsets
    pause: float  # seconds between pieces
    keep: int  # send only the first `keep` bytes (a request cut short); -1: all
    end: str  # "read": read the answers; "close": close at once; "half": shut down writes, then read; "reset": RST


PLANS = st.builds(
    lambda reqs, cuts, pause, keep, end: Plan(b"".join(reqs), tuple(sorted(set(cuts))), pause, keep, end),
    st.lists(request(), min_size=1, max_size=3),
    st.lists(st.integers(1, 400), max_size=4),
    st.sampled_from([0.0, 0.0, 0.0, 0.005, 0.03]),
    st.one_of(st.just(-1), st.just(-1), st.integers(0, 300)),
    st.sampled_from(["read", "read", "read", "close", "half", "reset"]))
