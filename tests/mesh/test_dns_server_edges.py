"""The DNS proxy's listeners at their edges: TCP pipelining and half-close, bad input, start-up
errors, listen addresses, rate-limited logs."""
from __future__ import annotations

import asyncio
import os
import socket

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
from structlog.testing import capture_logs

from agent.mesh.dns import DnsOptions, DnsProxy, DnsProxyError, RateLimitedLog, listen_addresses
from agent.mesh.dns_table import ResolvConf
from tests.mesh.dns_helpers import Upstream, resolv_conf, start_proxy, worked_example
from tests.mesh.test_dns_server import ips, udp


@pytest.fixture
def tmp(tmp_path):
    return str(tmp_path)


@pytest.fixture
async def silent():
    up = await Upstream(silent=True).start()
    yield up
    await up.close()


@pytest.fixture
async def proxy(tmp, silent):
    p = await start_proxy(tmp, [silent], worked_example(), timeout=1.0, attempt_timeout=0.5)
    yield p
    await p.stop()


async def frame(writer: asyncio.StreamWriter, name: str, rdtype: str = "A") -> int:
    q = dns.message.make_query(name, rdtype)
    writer.write(q.to_wire(prepend_length=True))
    await writer.drain()
    return q.id


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5) -> dns.message.Message:
    async with asyncio.timeout(timeout):
        length = int.from_bytes(await reader.readexactly(2), "big")
        return dns.message.from_wire(await reader.readexactly(length))


# ---- TCP ------------------------------------------------------------------------------------------

async def test_tcp_pipelined_queries_answered_as_they_are_ready(proxy):
    reader, writer = await asyncio.open_connection(*proxy.addresses[0])
    slow = await frame(writer, "stuck.test.")  # forwarded to the silent upstream
    fast = await frame(writer, "productpage.")
    first = await read_frame(reader)
    assert first.id == fast and ips(first) == ["10.0.0.1"]  # not held up behind the slow one
    second = await read_frame(reader)
    assert second.id == slow and second.rcode() == dns.rcode.SERVFAIL
    writer.close()


async def test_tcp_half_closed_connection_still_gets_its_answer(proxy):
    reader, writer = await asyncio.open_connection(*proxy.addresses[0])
    qid = await frame(writer, "stuck.test.")
    writer.write_eof()  # the client is done sending; the upstream has not answered yet
    reply = await read_frame(reader)
    assert reply.id == qid and reply.rcode() == dns.rcode.SERVFAIL
    assert await reader.read() == b""  # then, and only then, the proxy closes
    writer.close()


async def test_tcp_garbage_closes_that_connection_only(proxy):
    reader, writer = await asyncio.open_connection(*proxy.addresses[0])
    writer.write(b"\x00\x05hello")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert ips(await udp(proxy, "productpage.")) == ["10.0.0.1"]


async def test_tcp_idle_connection_is_closed(tmp, silent):
    p = await start_proxy(tmp, [silent], worked_example(), tcp_idle_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection(*p.addresses[0])
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
    finally:
        await p.stop()


# ---- bad input over UDP ---------------------------------------------------------------------------

def raw_udp(proxy: DnsProxy, data: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, proxy.addresses[0])
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


async def test_bad_datagrams_never_hurt_the_listener(proxy):
    q = dns.message.make_query("productpage.", "A")
    wire = q.to_wire()
    loop = asyncio.get_running_loop()
    # a readable question followed by junk in the answer count: FORMERR with the query's id
    broken = wire[:6] + b"\x00\x05" + wire[8:]
    formerr = await loop.run_in_executor(None, raw_udp, proxy, broken)
    reply = dns.message.from_wire(formerr)
    assert reply.id == q.id and reply.rcode() == dns.rcode.FORMERR
    for junk in (b"", b"\x01", os.urandom(11), b"\xff" * 600):
        assert await loop.run_in_executor(None, raw_udp, proxy, junk, 0.2) is None
    # a response sent to the proxy is dropped (answering responses can loop two servers)
    response = dns.message.make_response(q).to_wire()
    assert await loop.run_in_executor(None, raw_udp, proxy, response, 0.2) is None
    assert ips(await udp(proxy, "productpage.")) == ["10.0.0.1"]
    assert proxy.stats.malformed >= 6


async def test_query_without_question_is_servfail(proxy):
    q = dns.message.Message()
    loop = asyncio.get_running_loop()
    reply = dns.message.from_wire(await loop.run_in_executor(None, raw_udp, proxy, q.to_wire()))
    assert reply.id == q.id and reply.rcode() == dns.rcode.SERVFAIL


async def test_a_flood_of_bad_queries_logs_a_few_lines(tmp, silent):
    p = await start_proxy(tmp, [silent], worked_example(), log_burst=3, log_interval=60)
    loop = asyncio.get_running_loop()
    bad = dns.message.make_query("x.", "A").to_wire()
    bad = bad[:6] + b"\x00\x09" + bad[8:]
    try:
        with capture_logs() as logs:
            for _ in range(50):
                await loop.run_in_executor(None, raw_udp, p, bad)
        lines = [e for e in logs if "malformed" in e["event"]]
        assert len(lines) == 3 and p.stats.malformed == 50
    finally:
        await p.stop()


def test_rate_limited_log_reports_what_it_left_out(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("agent.mesh.dns.time.monotonic", lambda: clock[0])
    rl = RateLimitedLog(burst=2, interval=10)
    with capture_logs() as logs:
        for _ in range(5):
            rl("info", "upstream", "upstream failure: x")
        rl("info", "other", "another kind")
        clock[0] += 11
        rl("info", "upstream", "upstream failure: x")
    events = [e["event"] for e in logs]
    assert events == ["upstream failure: x", "upstream failure: x", "another kind",
                      "upstream failure: x (3 similar lines suppressed)"]


# ---- start-up --------------------------------------------------------------------------------------

async def test_port_taken_is_one_startup_error_and_nothing_stays_bound(tmp, silent):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = DnsProxy(DnsOptions(address=f"127.0.0.1:{port}", resolv_conf=resolv_conf(tmp, ["127.0.0.1"])))
        with pytest.raises(DnsProxyError) as err:
            await p.start()
        assert str(err.value).startswith(f"dns proxy: cannot listen on tcp 127.0.0.1:{port}: ")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", port))  # the UDP listener bound first was closed again


async def test_unreadable_resolv_conf_and_bad_address(tmp):
    with pytest.raises(DnsProxyError, match=r"^dns proxy: cannot read /nonexistent/resolv.conf: "):
        await DnsProxy(DnsOptions(resolv_conf="/nonexistent/resolv.conf")).start()
    for bad in ("localhost", "localhost:port", ":15053", "localhost:70000"):
        p = DnsProxy(DnsOptions(address=bad, resolv_conf=resolv_conf(tmp, ["127.0.0.1"])))
        with pytest.raises(DnsProxyError, match="^dns address must be a valid host:port"):
            await p.start()


def test_listen_addresses_follow_the_nameserver_families():
    v4, v6 = ResolvConf(("198.18.0.20",)), ResolvConf(("2001:db8::20",))
    both = ResolvConf(("198.18.0.20", "2001:db8::20"))
    assert listen_addresses("localhost:15053", v4) == [("127.0.0.1", 15053)]
    assert listen_addresses("localhost:15053", v6) == [("::1", 15053)]
    assert listen_addresses("localhost:15053", both) == [("127.0.0.1", 15053), ("::1", 15053)]
    assert listen_addresses("localhost:15053", ResolvConf()) == [("127.0.0.1", 15053)]
    assert listen_addresses("[::1]:5353", v4) == [("::1", 5353)]


async def test_both_families_listen_on_one_port(tmp, silent):
    path = resolv_conf(tmp, ["127.0.0.1", "::1"])
    p = await start_proxy(tmp, [silent], worked_example(), resolv_conf=path, address="localhost:0")
    try:
        assert [h for h, _ in p.addresses] == ["127.0.0.1", "::1"]
        assert len({port for _, port in p.addresses}) == 1
        host, port = p.addresses[1]
        reply = await dns.asyncquery.udp(dns.message.make_query("productpage.", "A"), host, 3, port)
        assert ips(reply) == ["10.0.0.1"]
    finally:
        await p.stop()
