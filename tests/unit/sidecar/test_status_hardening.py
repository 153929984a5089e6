"""The status server against callers that misbehave, on a real socket: a malformed request is one log
line (no traceback, the configured format, the caller's bytes escaped), a slow or idle connection is
closed within the limits, a flood of connections neither piles up nor stops readiness answering."""
from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from agent.sidecar.http_server import Limits
from tests.support.status_server import Calls, bad_lines, start_status

#: Generous slack over a configured limit: "closed within the limit", not a speed measurement.
SLACK = 3.0


@pytest.fixture
async def status(capture):
    """`await status(limits, as_json=..., level=...)` -> (Running, log buffer); stopped at teardown."""
    running = []

    async def start(limits: Limits = Limits(), *, as_json: bool = False, level: str = "default:debug,aiohttp:debug",
                    calls: Calls | None = None):
        buf = capture(level, as_json)
        running.append(await start_status(limits, calls))
        return running[-1], buf

    yield start
    for r in running:
        await r.server.stop()


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> float | None:
    """Seconds until the server closed the connection (reading and dropping any answer), None if not."""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - t0


async def get_ready(port: int) -> int:
    answer = await exchange(port, b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


MALFORMED = {
    "NUL and an escape sequence in a header": b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nX-A: \x00\x1b[2J\r\n\r\n",
    "TLS on the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n",
    "a bad chunk size": b"POST /healthz/ready HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n",
    "bytes that are not a URL": b"GET /\xc3\xa9\xff\x85\xe2\x80\xa8 HTTP/1.1\r\nHost: x\r\n\r\n",
    "a header line over the limit": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    "a request line over the limit": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    "a bare LF inside a header, forging a log line": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\n"
                                                     b"2026-01-01T00:00:00.000000Z\terror\tforged\r\n\r\n"),
    "HTTP/1.1 without Host": b"GET /healthz/ready HTTP/1.1\r\n\r\n",
    "a Content-Length that is not a number": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "two Content-Lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "Content-Length and chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "an unknown HTTP version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "a NUL in the method, after a good request": (b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n"
                                                 b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n"),
}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("name", MALFORMED)
async def test_a_malformed_request_is_one_debug_line(status, name, as_json):
    running, buf = await status(as_json=as_json)
    answer = await exchange(running.port, MALFORMED[name])
    assert re.findall(rb"HTTP/1\.[01] (\d)\d\d ", answer)[-1] == b"4"  # the last answer is a 4xx
    lines = buf.getvalue().splitlines()
    assert bad_lines(buf.getvalue(), as_json) == []
    assert len(lines) == 1, lines
    rec = json.loads(lines[0]) if as_json else dict(zip(("level", "scope", "msg"), lines[0].split("\t")[1:]))
    assert (rec["level"], rec["scope"]) == ("debug", "aiohttp")


async def test_malformed_requests_are_not_logged_at_info(status):
    running, buf = await status(level="default:info")
    for data in MALFORMED.values():
        await exchange(running.port, data)
    assert buf.getvalue() == ""


@pytest.mark.parametrize("path", [b"/healthz/ready", b"/app-health/x/livez"])
async def test_a_caller_gone_before_its_answer_is_not_an_error(status, path):
    """Found by the fuzz property: `Expect: 100-continue`, then a close before the server wrote
    "100 Continue", was an error line per request."""
    running, buf = await status(level="default:info")
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
        writer.close()
        await asyncio.sleep(0.1)
    assert buf.getvalue() == ""


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_a_failing_handler_is_one_error_line_without_traceback(status, as_json):
    running, buf = await status(as_json=as_json, level="default:info")
    answer = await exchange(running.port, b"GET /metrics?fail HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert bad_lines(buf.getvalue(), as_json) == []
    [line] = buf.getvalue().splitlines()
    if as_json:
        rec = json.loads(line)
        assert (rec["level"], rec["scope"]) == ("error", "aiohttp")
        assert rec["error"] == "RuntimeError: merge failed second line of the message"
    else:
        assert line.split("\t")[1:3] == ["error", "aiohttp"]
        assert line.endswith(' error="RuntimeError: merge failed second line of the message"')


async def test_a_slow_head_is_closed_at_the_header_timeout(status):
    running, _ = await status(Limits(header_timeout=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n")

    async def trickle():
        for _ in range(200):  # one byte every 50 ms, for 10 s at most: a slowloris
            writer.write(b"X")
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(trickle())
    try:
        took = await closed_by_server(reader, 0.5 + SLACK)
    finally:
        dripping.cancel()
        writer.close()
    assert took is not None, "a connection sending its head a byte at a time was kept past the header timeout"


async def test_a_handler_slower_than_the_header_timeout_still_answers(status):
    """The timer bounds the caller's head, not the agent's work (an app probe may take its timeoutSeconds)."""
    calls = Calls(hold=asyncio.Event())
    running, _ = await status(Limits(header_timeout=0.3), calls=calls)
    asyncio.get_running_loop().call_later(1.0, calls.hold.set)
    assert await get_ready(running.port) == 200


async def test_an_idle_connection_is_closed_at_the_header_timeout(status):
    running, _ = await status(Limits(header_timeout=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        assert await closed_by_server(reader, 0.5 + SLACK) is not None
    finally:
        writer.close()


async def test_keepalive_requests_each_get_the_header_timeout(status):
    running, _ = await status(Limits(header_timeout=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        for _ in range(3):  # each well inside the timeout: the connection serves them all
            writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(0.1)
        assert await closed_by_server(reader, 0.5 + SLACK) is not None  # then idle: closed
    finally:
        writer.close()


async def test_an_unread_slow_body_is_cut_after_the_linger(status):
    running, _ = await status(Limits(header_timeout=30, body_linger=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"POST /healthz/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
    try:
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")

        async def trickle():
            for _ in range(200):
                writer.write(b"b")
                await asyncio.sleep(0.05)

        dripping = asyncio.create_task(trickle())
        try:
            assert await closed_by_server(reader, 0.5 + SLACK) is not None
        finally:
            dripping.cancel()
    finally:
        writer.close()


async def test_past_the_connection_limit_the_oldest_idle_ones_are_closed(status):
    running, buf = await status(Limits(header_timeout=60, max_connections=8), level="default:info")
    idle = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(20)]
    try:
        await asyncio.sleep(0.2)  # every one accepted
        assert running.open_connections() <= 8
        assert await get_ready(running.port) == 200  # the newcomer is served
        await asyncio.sleep(0.2)
        closed = [i for i, (reader, _) in enumerate(idle) if await closed_by_server(reader, 0.05) is not None]
        assert closed == list(range(13)), closed  # 12 to let the last 8 in, one more for the probe
        assert running.open_connections() <= 8
    finally:
        for _, writer in idle:
            writer.close()
    [line] = buf.getvalue().splitlines()  # said once, not once per connection
    assert "connection limit reached" in line and "limit=8" in line


async def test_a_request_in_its_handler_is_not_closed_for_room(status):
    calls = Calls(hold=asyncio.Event())
    running, _ = await status(Limits(header_timeout=60, max_connections=2), calls=calls)
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", running.port)
    busy_w.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        while calls.ready_calls == 0:
            await asyncio.sleep(0.01)
        third_r, third_w = await asyncio.open_connection("127.0.0.1", running.port)
        assert await closed_by_server(idle_r, SLACK) is not None  # the idle one made room
        calls.hold.set()
        assert (await asyncio.wait_for(busy_r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
        third_w.close()
    finally:
        busy_w.close()
        idle_w.close()


async def test_readiness_answers_through_150_slowloris_connections_and_they_are_closed(status):
    """The issue's case: 150 connections each sending its head a byte at a time."""
    limits = Limits(header_timeout=1.0)  # the rest as shipped: 128 connections at most
    running, _ = await status(limits)
    conns = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(150)]
    stop = asyncio.Event()

    async def slowloris(writer):
        writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n")
        while not stop.is_set() and not writer.is_closing():
            writer.write(b"X")
            await asyncio.sleep(0.2)

    dripping = [asyncio.create_task(slowloris(w)) for _, w in conns]
    try:
        answers, most_open = [], 0
        for _ in range(20):
            answers.append(await get_ready(running.port))
            most_open = max(most_open, running.open_connections())
            await asyncio.sleep(0.05)
        assert answers == [200] * 20
        assert most_open <= limits.max_connections
        gone = await asyncio.gather(*(closed_by_server(r, limits.header_timeout + SLACK) for r, _ in conns))
        assert all(t is not None for t in gone), f"{sum(t is None for t in gone)} of 150 still open"
    finally:
        stop.set()
        for task in dripping:
            task.cancel()
        for _, writer in conns:
            writer.close()


async def test_a_caller_that_hangs_up_cancels_its_handler(status):
    calls = Calls(hold=asyncio.Event())
    running, buf = await status(calls=calls, level="default:info")
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    while calls.ready_calls == 0:
        await asyncio.sleep(0.01)
    writer.close()
    async with asyncio.timeout(SLACK):
        while calls.cancelled == 0:
            await asyncio.sleep(0.01)
    assert buf.getvalue() == ""  # a hang-up is not an error


async def test_a_drain_is_carried_out_when_its_caller_hangs_up(status):
    calls = Calls(drain_delay=0.3)
    running, _ = await status(calls=calls)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    while calls.drain == 0:
        await asyncio.sleep(0.01)
    writer.close()
    async with asyncio.timeout(SLACK):
        while calls.drained == 0:
            await asyncio.sleep(0.01)
