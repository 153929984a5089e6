"""The DNS proxy on port 15053: mesh names from istiod's NDS table, everything else forwarded.

    proxy = DnsProxy(DnsOptions(pod_namespace="ns1", proxy_domain="ns1.svc.cluster.local"))
    await proxy.start()            # DnsProxyError: one line (resolv.conf unreadable, port taken)
    proxy.update(name_table)       # build and swap now (atomic: one assignment)
    XdsProxy(..., on_name_table=proxy.on_name_table)   # the same, built off the event loop
    await proxy.stop()

`pilot-agent istio-iptables --redirect-dns` sends the app's queries to the resolv.conf nameservers
here; the proxy's own upstream queries are not redirected because the agent runs as uid 1337
(agent/mesh/dns_forward.py). What it answers and how is in agent/mesh/dns_table.py (mesh names)
and agent/mesh/dns_forward.py (the rest), after Istio's
https://github.com/istio/istio/blob/master/pkg/dns/client/dns.go.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode

from agent.mesh.dns_forward import DnsStats, Forwarder, ForwardSettings, servfail
from agent.mesh.dns_server import TcpServer, UdpServer, fit
from agent.mesh.dns_table import LookupTable, ResolvConf, TableSettings
from agent.mesh.protos import nds_pb2
from agent.sidecar import logs

log = logs.get("dns")

#: The readiness failure while DNS capture is on and no table has arrived, as Istio words it.
NOT_READY = "istio DNS capture is turned ON and DNS lookup table is not ready yet"


class DnsProxyError(Exception):
    """A start-up failure, already worded as the one line to print."""


@dataclass(frozen=True, slots=True)
class DnsOptions:
    """The proxy's settings; the sidecar start-up maps Istio's environment onto them.

    address: DNS_PROXY_ADDR. Host `localhost` listens on 127.0.0.1 if resolv.conf has an IPv4
    nameserver and on [::1] if it has an IPv6 one (both when both), as Istio does; any other host
    as given. Port 0 (tests) takes one free port for every listener.
    resolv_conf: the upstream servers (port `upstream_port`) and the search list.
    pod_namespace, proxy_domain: POD_NAMESPACE and --domain (`<ns>.svc.cluster.local`), for the
    Kubernetes short names (`reviews.ns2.`, `productpage.`).
    forward_parallel: DNS_FORWARD_PARALLEL, every server at once instead of one after another.
    timeout: the bound of a forwarded query (DNS_FORWARD_TIMEOUT); the client gets SERVFAIL then.
    Kept under glibc's 5 s so the SERVFAIL arrives before the client gives up on its own.
    attempt_timeout: one exchange with one server within that bound.
    istio_cnames: Istio's answers for search-domain forms (agent/mesh/dns_table.py).
    forward_before_table: answer by forwarding before the first table (Istio's root `:53` mode);
    otherwise SERVFAIL until then.
    max_pending: forwarded queries waiting for an upstream at once; more get SERVFAIL at once.
    tcp_idle_timeout: a client TCP connection with nothing to read for this long is closed.
    log_burst, log_interval: at most that many lines of one kind per interval."""

    address: str = "localhost:15053"
    resolv_conf: str = "/etc/resolv.conf"
    pod_namespace: str = ""
    proxy_domain: str = ""
    forward_parallel: bool = False
    timeout: float = 4.0
    attempt_timeout: float = 2.0
    upstream_port: int = 53
    istio_cnames: bool = False
    forward_before_table: bool = False
    max_pending: int = 1024
    tcp_idle_timeout: float = 10.0
    log_burst: int = 10
    log_interval: float = 60.0


class RateLimitedLog:
    """At most `burst` lines per `interval` per kind; the next line allowed says how many were
    left out, so a client sending a flood of bad queries cannot flood the agent's log."""

    def __init__(self, burst: int, interval: float) -> None:
        self.burst, self.interval = burst, interval
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind -> (start, lines, dropped)

    def __call__(self, level: str, kind: str, message: str) -> None:
        now = time.monotonic()
        start, lines, dropped = self._windows.get(kind, (now, 0, 0))
        if now - start >= self.interval:
            start, lines = now, 0
        if lines >= self.burst:
            self._windows[kind] = (start, lines, dropped + 1)
            return
        if dropped:
            message += f" ({dropped} similar lines suppressed)"
        self._windows[kind] = (start, lines + 1, 0)
        getattr(log, level)(message)


def listen_addresses(address: str, resolv: ResolvConf) -> list[tuple[str, int]]:
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise DnsProxyError(f"dns address must be a valid host:port: {address!r}")
    if host != "localhost":
        return [(host, port)]
    families = {":" in s for s in resolv.nameservers} or {False}
    return [(h, port) for v6, h in ((False, "127.0.0.1"), (True, "::1")) if v6 in families]


class DnsProxy:
    """UDP and TCP listeners answering from the current `LookupTable`. Counters in `stats`;
    `ready` once the first table arrived (the readiness probe reports NOT_READY until then)."""

    def __init__(self, options: DnsOptions) -> None:
        self.options = options
        self.stats = DnsStats()
        self.table: LookupTable | None = None
        self.name_table: nds_pb2.NameTable | None = None  # the last one, for /debug/ndsz
        self.resolv = ResolvConf()
        self.addresses: list[tuple[str, int]] = []  # bound (host, port), filled by start()
        self._settings = TableSettings()
        self._forwarder: Forwarder | None = None
        self._servers: list[UdpServer | TcpServer] = []
        self._pending = 0
        self._received = 0  # NameTables handed to on_name_table, and the newest one swapped in
        self._swapped = 0
        self.log = RateLimitedLog(options.log_burst, options.log_interval)

    @property
    def ready(self) -> bool:
        return self.table is not None

    async def start(self) -> None:
        o = self.options
        try:
            with open(o.resolv_conf, encoding="utf-8", errors="replace") as f:
                self.resolv = ResolvConf.parse(f.read())
        except OSError as e:
            raise DnsProxyError(f"dns proxy: cannot read {o.resolv_conf}: {e.strerror or e}") from None
        self._settings = TableSettings(o.pod_namespace, o.proxy_domain, self.resolv.search,
                                       o.istio_cnames)
        self._forwarder = Forwarder(ForwardSettings(
            self.resolv.nameservers, o.upstream_port, o.forward_parallel, o.timeout,
            min(o.attempt_timeout, o.timeout)),
            self.stats, lambda message: self.log("info", "upstream", message))
        if self.name_table is not None:
            self.update(self.name_table)  # a table that came before start() gets our settings
        addresses = listen_addresses(o.address, self.resolv)
        # Port 0 (tests): the port the first listener got may be taken for the others; try again.
        tries = 1 if addresses[0][1] else 10
        for attempt in range(tries):
            try:
                return await self._listen(addresses)
            except DnsProxyError:
                if attempt == tries - 1:
                    raise

    async def _listen(self, addresses: list[tuple[str, int]]) -> None:
        port = 0
        try:
            for host, wanted in addresses:
                for kind in (UdpServer, TcpServer):
                    server = kind(self, self.options.tcp_idle_timeout)
                    port = await server.start(host, wanted or port)
                    self._servers.append(server)
                    log.info(f"Starting local {server.protocol} DNS server on "
                             f"{_hostport(host, port)}")
                self.addresses.append((host, port))
        except OSError as e:
            await self.stop()
            self.addresses = []
            raise DnsProxyError(f"dns proxy: cannot listen on {server.protocol} "
                                f"{_hostport(host, wanted or port)}: {e.strerror or e}") from None

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            await server.close()

    def update(self, name_table: nds_pb2.NameTable) -> None:
        """Build the new table, then swap it in with one assignment: a query in flight keeps the
        table it started with, the next one sees the new one."""
        table = LookupTable(name_table, self._settings)
        self._received += 1
        self._swapped = self._received  # a build still running in a thread is older: dropped
        self.table, self.name_table = table, name_table
        log.debug(f"updated lookup table with {table.hosts} hosts")

    def on_name_table(self, name_table: nds_pb2.NameTable) -> asyncio.Future:
        """The xDS proxy's callback (called on the event loop). Building 10,000 names takes about
        0.2 s of CPU, so it runs in a worker thread and the loop keeps answering meanwhile (a few
        ms at worst, the interpreter's thread switch interval); tables are swapped in the order
        they arrived and one overtaken by a newer one is dropped. The future completes once this
        table (or a newer one) is in use."""
        self._received += 1
        generation, settings = self._received, self._settings
        built = asyncio.get_running_loop().run_in_executor(None, LookupTable, name_table, settings)
        built.add_done_callback(lambda f: self._swap(f, generation, name_table))
        return built

    def _swap(self, built: asyncio.Future, generation: int, name_table: nds_pb2.NameTable) -> None:
        if built.cancelled():
            return
        if built.exception() is not None:
            log.error(f"dns proxy: building the lookup table failed: {built.exception()!r}")
        elif generation > self._swapped:
            self._swapped = generation
            self.table, self.name_table = built.result(), name_table
            log.debug(f"updated lookup table with {self.table.hosts} hosts")

    # ---- answering (called by the listeners) ---------------------------------------------

    def parse(self, wire: bytes) -> tuple[dns.message.Message | None, bytes | None]:
        """(query, None) to answer, or (None, reply-or-None) when the bytes are not a query we
        can read: FORMERR if at least its header and question are readable, else nothing."""
        try:
            query = dns.message.from_wire(wire)
        except Exception as e:  # whatever a client sends, dnspython's verdict is the answer
            self.stats.malformed += 1
            self.log("warning", "malformed", f"malformed dns query: {type(e).__name__}")
            return None, self._formerr(wire)
        if query.flags & dns.flags.QR:
            self.stats.malformed += 1  # a response sent to us: answering could start a loop
            return None, None
        return query, None

    def local(self, query: dns.message.Message) -> dns.message.Message | None:
        """The reply made without any upstream, or None to forward."""
        self.stats.requests += 1
        if not query.question:
            return servfail(query)
        table = self.table
        if table is None:
            if self.options.forward_before_table:
                return None
            self.stats.before_table += 1
            name = query.question[0].name.to_text().lower()
            self.log("debug", "before_table",
                     f'dns request for host "{name}" before lookup table is loaded')
            return servfail(query)
        reply = table.answer(query) if query.opcode() == dns.opcode.QUERY else None
        if reply is not None:
            self.stats.local_answers += 1
        return reply

    async def forwarded(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        if self._pending >= self.options.max_pending or self._forwarder is None:
            self.stats.overloaded += 1
            self.log("warning", "overloaded",
                     f"dns proxy: {self._pending} queries waiting for an upstream; SERVFAIL")
            return servfail(query)
        self._pending += 1
        try:
            return await self._forwarder.forward(query, tcp)
        finally:
            self._pending -= 1

    def wire(self, query: dns.message.Message, reply: dns.message.Message, tcp: bool) -> bytes:
        data, truncated = fit(query, reply, tcp)
        self.stats.truncated += truncated
        return data

    def _formerr(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire, question_only=True)
            if query.flags & dns.flags.QR:
                return None
            reply = dns.message.make_response(query)
        except Exception:
            return None
        reply.question = reply.question[:1]
        reply.set_rcode(dns.rcode.FORMERR)
        return reply.to_wire(max_size=512, prefer_truncation=True)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
