"""Forwarding what the mesh table does not answer to the pod's resolv.conf nameservers.

Istio's agent (https://github.com/istio/istio/blob/master/pkg/dns/client/proxy.go) sends the query
as is over the transport it came on, to the servers in a random order, each with the whole
DNS_FORWARD_TIMEOUT (5 s, glibc's own timeout: one dead server makes the client give up first),
and reads UDP answers into a 512-byte buffer unless the client sent EDNS (a bigger answer without
TC then fails to unpack and becomes SERVFAIL, istio#61371). Here instead:

- the servers are tried in resolv.conf order (the first is the primary, as for glibc), each
  attempt bounded by `attempt_timeout`, the whole query by `timeout`, after which the client gets
  SERVFAIL; a server that refuses (ICMP unreachable, TCP reset) is skipped for the rest of the
  query (UDP sockets are connected, so the ICMP error fails the attempt at once), one that is
  merely slow is tried again while time remains (a lost UDP datagram);
- the client's query goes upstream byte for byte, the answer is read whatever its size, and a
  truncated UDP answer is fetched again over TCP, so the client gets the whole answer whenever it
  fits its own limit (the server cuts it to the client's UDP limit with TC set otherwise, and the
  client comes back over TCP); an answer that fits goes back byte for byte too.

The queries leave from the agent's own sockets, and the agent runs as uid 1337: istio-iptables
exempts that uid from the DNS redirect (and gives its packets their own conntrack zone), so the
upstream queries reach the real nameservers instead of looping back to port 15053.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.rcode

#: Istio's buckets for dns_upstream_request_duration_seconds.
BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0, 5.0)


@dataclass(slots=True)
class Histogram:
    """A Prometheus-style histogram: `counts[i]` observations <= `bounds[i]`, the last one +Inf
    (not cumulative; a metrics exporter sums them up)."""

    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


@dataclass(slots=True)
class DnsStats:
    """The proxy's metrics as plain counts. Istio's names: requests = dns_requests_total,
    upstream_requests = dns_upstream_requests_total, upstream_failures =
    dns_upstream_failures_total, upstream_duration = dns_upstream_request_duration_seconds."""

    requests: int = 0
    local_answers: int = 0
    upstream_requests: int = 0
    upstream_failures: int = 0
    upstream_duration: Histogram = field(default_factory=Histogram)
    before_table: int = 0  # SERVFAIL: no name table yet
    malformed: int = 0  # not a DNS query we could read: FORMERR, or dropped if not even that
    overloaded: int = 0  # SERVFAIL: too many queries waiting for an upstream already
    truncated: int = 0  # replies cut to the client's UDP limit (TC set)


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    servers: tuple[str, ...]
    port: int = 53
    parallel: bool = False
    timeout: float = 4.0
    attempt_timeout: float = 2.0


class AllFailed(Exception):
    pass


def servfail(query: dns.message.Message) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.question = reply.question[:1]
    reply.set_rcode(dns.rcode.SERVFAIL)
    return reply


def _consume(task: asyncio.Task) -> None:
    """Losers of a parallel race may fail after the winner returned: read their error so asyncio
    does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class Forwarder:
    """`await forward(query, tcp)` -> the upstream's reply (any rcode), or SERVFAIL when no server
    answered within the timeout. Never raises for anything an upstream sends or fails to send."""

    def __init__(self, settings: ForwardSettings, stats: DnsStats,
                 failure: Callable[[str], None]) -> None:
        self.settings = settings
        self.stats = stats
        self._failure = failure

    async def forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        self.stats.upstream_requests += 1
        start = time.monotonic()
        reply = None
        try:
            async with asyncio.timeout(self.settings.timeout):
                if self.settings.parallel and len(self.settings.servers) > 1:
                    reply = await self._parallel(query, tcp)
                else:
                    reply = await self._sequential(query, tcp)
        except TimeoutError:
            self._failure(f"no answer from {', '.join(self.settings.servers)} within "
                          f"{self.settings.timeout:g}s")
        except AllFailed:
            pass
        self.stats.upstream_duration.observe(time.monotonic() - start)
        if reply is None:
            self.stats.upstream_failures += 1
            return servfail(query)
        return reply

    async def _sequential(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        refused: set[str] = set()
        while len(refused) < len(self.settings.servers):
            for server in self.settings.servers:
                if server in refused:
                    continue
                try:
                    return await self._exchange(server, query, tcp)
                except (TimeoutError, dns.exception.Timeout):
                    self._failure(f"upstream failure: {server}: timed out after "
                                  f"{self.settings.attempt_timeout:g}s")
                except Exception as e:  # anything the network or a broken upstream produces
                    refused.add(server)
                    self._failure(f"upstream failure: {server}: {_describe(e)}")
        raise AllFailed

    async def _parallel(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        tasks = [asyncio.create_task(self._exchange(s, query, tcp, self.settings.timeout))
                 for s in self.settings.servers]
        for task in tasks:
            task.add_done_callback(_consume)
        try:
            for next_done in asyncio.as_completed(tasks):
                try:
                    return await next_done
                except Exception as e:
                    self._failure(f"upstream failure: {_describe(e)}")
            self._failure("upstream failure: all upstream failed")
            raise AllFailed
        finally:
            for task in tasks:
                task.cancel()

    async def _exchange(self, server: str, query: dns.message.Message, tcp: bool,
                        timeout: float | None = None) -> dns.message.Message:
        timeout = timeout or self.settings.attempt_timeout
        port = self.settings.port
        if tcp:
            return await dns.asyncquery.tcp(query, server, timeout, port)
        async with asyncio.timeout(timeout):
            reply = await self._udp(server, port, query)
        if not reply.flags & dns.flags.TC:
            return reply
        try:
            return await dns.asyncquery.tcp(query, server, timeout, port)
        except Exception as e:  # a server without TCP: its truncated answer is still an answer
            self._failure(f"upstream failure: {server}: over TCP after a truncated answer: {_describe(e)}")
            return reply

    @staticmethod
    async def _udp(server: str, port: int, query: dns.message.Message) -> dns.message.Message:
        """One UDP exchange on a fresh socket (a random source port per query). The socket is
        connected: the kernel drops datagrams from anyone but the server, and a server that is
        down (ICMP port unreachable) fails the attempt at once instead of after the timeout.

        The reply is read up to its question only, which is all it takes to know it answers our
        query (id, opcode, question) and whether it is truncated; the server sends the bytes
        on as they came, and reads the rest only if it must cut the reply to the client's size.
        A datagram that is not the answer is skipped and the wait goes on."""
        loop = asyncio.get_running_loop()
        with socket.socket(dns.inet.af_for_address(server), socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((server, port))
            await loop.sock_sendall(sock, query.wire or query.to_wire())
            while True:
                data = await loop.sock_recv(sock, 65535)
                try:
                    reply = dns.message.from_wire(data, question_only=True)
                except Exception:
                    continue
                if query.is_response(reply):
                    return reply


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
