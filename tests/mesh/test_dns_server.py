"""The DNS proxy over real sockets: dnspython as the client, the test resolver of dns_helpers as the
upstream (silent on demand), on loopback addresses."""
from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest

from agent.mesh.dns import DnsProxy
from agent.mesh.protos import nds_pb2
from tests.mesh.dns_helpers import Upstream, external, resolv_conf, start_proxy, worked_example


@pytest.fixture
def tmp(tmp_path):
    return str(tmp_path)


@pytest.fixture
async def upstream():
    up = await Upstream(records={"www.external.test.": ["198.18.5.5", "2001:db8::5"]}).start()
    yield up
    await up.close()


@pytest.fixture
async def proxy(tmp, upstream):
    p = await start_proxy(tmp, [upstream], worked_example(), timeout=1.5, attempt_timeout=0.5)
    yield p
    await p.stop()


def where(proxy: DnsProxy) -> tuple[str, int]:
    return proxy.addresses[0]


async def udp(proxy, name, rdtype="A", timeout=5, **kw) -> dns.message.Message:
    host, port = where(proxy)
    return await dns.asyncquery.udp(dns.message.make_query(name, rdtype, **kw), host, timeout, port)


async def tcp(proxy, name, rdtype="A", timeout=5, **kw) -> dns.message.Message:
    host, port = where(proxy)
    return await dns.asyncquery.tcp(dns.message.make_query(name, rdtype, **kw), host, timeout, port)


def ips(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype in (1, 28))


# ---- local answers and the table ----------------------------------------------------------------

async def test_mesh_names_over_udp_and_tcp(proxy, upstream):
    for ask in (udp, tcp):
        assert ips(await ask(proxy, "productpage.")) == ["10.0.0.1"]
        assert ips(await ask(proxy, "reviews.ns2.ns1.svc.cluster.local.")) == ["10.0.0.2"]
        assert ips(await ask(proxy, "api.example.com.", "AAAA")) == ["2001:2::f0f0:5"]
        empty = await ask(proxy, "productpage.", "AAAA")
        assert empty.rcode() == dns.rcode.NOERROR and empty.answer == []
    assert upstream.received == {"udp": 0, "tcp": 0}
    assert proxy.stats.requests == proxy.stats.local_answers == 8


async def test_servfail_before_the_first_table_then_answers(tmp, upstream):
    p = await start_proxy(tmp, [upstream], None)
    try:
        assert not p.ready
        assert (await udp(p, "productpage.")).rcode() == dns.rcode.SERVFAIL
        assert (await udp(p, "www.external.test.")).rcode() == dns.rcode.SERVFAIL
        assert p.stats.before_table == 2 and upstream.received["udp"] == 0
        p.update(worked_example())
        assert p.ready and ips(await udp(p, "productpage.")) == ["10.0.0.1"]
    finally:
        await p.stop()


async def test_forward_before_table_option(tmp, upstream):
    p = await start_proxy(tmp, [upstream], None, forward_before_table=True)
    try:
        assert ips(await udp(p, "www.external.test.")) == ["198.18.5.5"]
    finally:
        await p.stop()


async def test_update_adds_and_removes_names_without_restart(proxy):
    table = worked_example()
    del table.table["reviews.ns2.svc.cluster.local"]
    external(table, "new.example.com", "198.18.7.7")
    proxy.update(table)
    assert ips(await udp(proxy, "new.example.com.")) == ["198.18.7.7"]
    assert (await udp(proxy, "reviews.ns2.")).rcode() == dns.rcode.NXDOMAIN  # forwarded now
    proxy.update(nds_pb2.NameTable())
    assert (await udp(proxy, "productpage.")).rcode() == dns.rcode.NXDOMAIN


async def test_tables_from_the_xds_callback_are_built_off_the_loop_and_swapped_in_order(proxy):
    first, second = worked_example(), worked_example()
    external(first, "first.example.com", "198.18.7.1")
    external(second, "second.example.com", "198.18.7.2")
    done = [proxy.on_name_table(first), proxy.on_name_table(second)]
    assert ips(await udp(proxy, "productpage.")) == ["10.0.0.1"]  # the loop answers meanwhile
    await asyncio.gather(*done)
    assert proxy.name_table is second
    assert ips(await udp(proxy, "second.example.com.")) == ["198.18.7.2"]
    assert (await udp(proxy, "first.example.com.")).rcode() == dns.rcode.NXDOMAIN
    late = proxy.on_name_table(first)
    proxy.update(second)  # newer than the build still running: that one is dropped
    await late
    assert proxy.name_table is second


# ---- forwarding ------------------------------------------------------------------------------------

async def test_unknown_names_and_other_types_are_forwarded_as_is(proxy, upstream):
    q = dns.message.make_query("www.external.test.", "A")
    host, port = where(proxy)
    reply = await dns.asyncquery.udp(q, host, 5, port)
    assert reply.id == q.id and ips(reply) == ["198.18.5.5"] and reply.flags & dns.flags.RA
    assert upstream.raw[-1] == q.to_wire()  # byte for byte
    edns = dns.message.make_query("www.external.test.", "AAAA", use_edns=0, payload=1400, want_dnssec=True)
    reply = await dns.asyncquery.udp(edns, host, 5, port)
    assert upstream.raw[-1] == edns.to_wire() and reply.edns == 0 and ips(reply) == ["2001:db8::5"]
    assert (await udp(proxy, "nowhere.test.")).rcode() == dns.rcode.NXDOMAIN  # passed through
    txt = await udp(proxy, "productpage.", "TXT")  # known name, other type: the upstream's answer
    assert txt.rcode() == dns.rcode.NXDOMAIN and upstream.received["udp"] == 4
    assert proxy.stats.upstream_requests == 4 and proxy.stats.upstream_duration.count == 4


async def test_large_answer_truncated_for_udp_complete_over_tcp(proxy, upstream):
    small = await udp(proxy, "100.big.test.")
    assert small.flags & dns.flags.TC and len(small.to_wire()) <= 512
    # upstream: UDP came back truncated (512 bytes), so the proxy fetched it again over TCP
    assert upstream.received == {"udp": 1, "tcp": 1}
    assert len(ips(await tcp(proxy, "100.big.test."))) == 100
    edns = await udp(proxy, "100.big.test.", use_edns=0, payload=4096)
    assert not edns.flags & dns.flags.TC and len(ips(edns)) == 100
    assert proxy.stats.truncated == 1


async def test_oversized_udp_answer_is_cut_for_the_client_not_lost(proxy, upstream):
    upstream.oversize = True  # 1.6 kB to a query without EDNS0: Istio's 512-byte read fails (istio#61371)
    reply = await udp(proxy, "100.big.test.")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.TC
    assert upstream.received == {"udp": 1, "tcp": 0} and proxy.stats.truncated == 1


async def test_truncated_answer_passed_on_when_the_upstream_has_no_tcp(tmp):
    up = await Upstream(tcp=False).start()
    p = await start_proxy(tmp, [up], worked_example(), timeout=2)
    try:
        reply = await udp(p, "100.big.test.")
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.TC
        assert p.stats.upstream_failures == 0
    finally:
        await p.stop(), await up.close()


async def test_servers_in_order_a_silent_one_costs_one_attempt(tmp):
    silent = await Upstream(host="127.0.0.2", silent=True).start()
    good = await Upstream(host="127.0.0.3", records={"x.test.": ["198.18.9.9"]}).start(silent.port)
    p = await start_proxy(tmp, [silent, good], worked_example(), timeout=3, attempt_timeout=0.3)
    try:
        t0 = time.monotonic()
        assert ips(await udp(p, "x.test.")) == ["198.18.9.9"]
        assert 0.25 < time.monotonic() - t0 < 1.5
        assert silent.received["udp"] == 1 and good.received["udp"] == 1
    finally:
        await p.stop(), await silent.close(), await good.close()


async def test_parallel_asks_every_server_and_takes_the_first_answer(tmp):
    silent = await Upstream(host="127.0.0.2", silent=True).start()
    good = await Upstream(host="127.0.0.3", records={"x.test.": ["198.18.9.9"]}).start(silent.port)
    p = await start_proxy(tmp, [silent, good], worked_example(), forward_parallel=True, timeout=3)
    try:
        t0 = time.monotonic()
        assert ips(await tcp(p, "x.test.")) == ["198.18.9.9"]
        assert time.monotonic() - t0 < 0.5
        assert silent.received["tcp"] == 1 and good.received["tcp"] == 1
    finally:
        await p.stop(), await silent.close(), await good.close()


@pytest.mark.parametrize("parallel", [False, True])
async def test_silent_upstreams_give_servfail_within_the_timeout(tmp, parallel):
    a = await Upstream(host="127.0.0.2", silent=True).start()
    b = await Upstream(host="127.0.0.3", silent=True).start(a.port)
    p = await start_proxy(tmp, [a, b], worked_example(), forward_parallel=parallel, timeout=1.0,
                          attempt_timeout=0.4)
    try:
        for ask in (udp, tcp):
            t0 = time.monotonic()
            assert (await ask(p, "x.test.")).rcode() == dns.rcode.SERVFAIL
            assert 0.9 < time.monotonic() - t0 < 1.5
        assert p.stats.upstream_failures == 2
        assert sum(p.stats.upstream_duration.counts[4:6]) == 2  # about 1 s: (0.1, 1] or (1, 5]
    finally:
        await p.stop(), await a.close(), await b.close()


async def test_refusing_upstream_gives_servfail_at_once(tmp):
    path = resolv_conf(tmp, ["127.0.0.4"])
    p = await start_proxy(tmp, [], worked_example(), resolv_conf=path, upstream_port=9, timeout=3)
    try:
        for ask in (udp, tcp):  # ICMP port unreachable, TCP reset: no waiting for the timeout
            t0 = time.monotonic()
            assert (await ask(p, "x.test.")).rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - t0 < 0.5
    finally:
        await p.stop()


async def test_no_nameserver_at_all_is_servfail(tmp):
    p = await start_proxy(tmp, [], worked_example(), resolv_conf=resolv_conf(tmp, []))
    try:
        assert (await udp(p, "x.test.")).rcode() == dns.rcode.SERVFAIL
        assert ips(await udp(p, "productpage.")) == ["10.0.0.1"]
    finally:
        await p.stop()


async def test_too_many_pending_forwards_are_refused_with_servfail(tmp):
    silent = await Upstream(silent=True).start()
    p = await start_proxy(tmp, [silent], worked_example(), max_pending=1, timeout=1)
    try:
        first = asyncio.ensure_future(udp(p, "a.test."))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        assert (await udp(p, "b.test.")).rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < 0.3 and p.stats.overloaded == 1
        assert ips(await udp(p, "productpage.")) == ["10.0.0.1"]  # local answers are not limited
        assert (await first).rcode() == dns.rcode.SERVFAIL
    finally:
        await p.stop(), await silent.close()
