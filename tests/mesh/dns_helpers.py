"""Shared by the DNS proxy tests: NameTables, a controllable upstream resolver on real sockets
(dnspython for the wire format), a proxy started against it, and a dnsmasq process.

The in-process upstream answers `<n>.big.test.` with n A records (so sizes are chosen by name),
every other name from `records`, and NXDOMAIN otherwise; `silent` makes it read and never answer.
It counts what it received per transport and keeps the last queries, so tests can see what the
proxy sent upstream.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from agent.mesh.dns import DnsOptions, DnsProxy
from agent.mesh.protos import nds_pb2

SEARCH = ("ns1.svc.cluster.local", "svc.cluster.local", "cluster.local")
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def kube(table: nds_pb2.NameTable, short: str, ns: str, *ips: str, domain: str = "svc.cluster.local"):
    info = table.table[f"{short}.{ns}.{domain}"]
    info.ips.extend(ips)
    info.registry, info.shortname, info.namespace = "Kubernetes", short, ns


def external(table: nds_pb2.NameTable, host: str, *ips: str):
    info = table.table[host]
    info.ips.extend(ips)
    info.registry = "External"


def worked_example() -> nds_pb2.NameTable:
    """The table of Istio's worked example: a pod in ns1, two services, a ServiceEntry with
    auto-allocated VIPs (240.240.0.0/16, 2001:2::/48) and a wildcard ServiceEntry."""
    t = nds_pb2.NameTable()
    kube(t, "productpage", "ns1", "10.0.0.1")
    kube(t, "reviews", "ns2", "10.0.0.2")
    external(t, "api.example.com", "240.240.0.5", "2001:2::f0f0:5")
    external(t, "*.wild.com", "1.2.3.4")
    return t


def big_ips(n: int) -> list[str]:
    return [str(ipaddress.ip_address("198.19.0.1") + i) for i in range(n)]


@dataclass
class Upstream:
    """A real resolver on `host`:`port` (UDP and TCP)."""

    host: str = "127.0.0.1"
    records: dict[str, list[str]] = field(default_factory=dict)
    silent: bool = False
    oversize: bool = False  # answer over UDP whatever the size, without TC (a broken resolver)
    tcp: bool = True  # False: no TCP listener at all
    port: int = 0
    received: dict[str, int] = field(default_factory=lambda: {"udp": 0, "tcp": 0})
    queries: list[dns.message.Message] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    async def start(self, port: int = 0) -> "Upstream":
        """Listen on `port`, or on a port free for both UDP and TCP (retried: the one UDP got
        may be in use for TCP)."""
        loop = asyncio.get_running_loop()
        for attempt in range(1 if port else 10):
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpSide(self),
                                                               local_addr=(self.host, port))
            self.port = self._udp.get_extra_info("sockname")[1]
            try:
                self._tcp = (await asyncio.start_server(self._tcp_client, self.host, self.port)
                             if self.tcp else None)
                return self
            except OSError:
                self._udp.close()
                if port or attempt == 9:
                    raise
                await asyncio.sleep(0)
        return self

    async def close(self) -> None:
        self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    def reply(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        self.received[transport] += 1
        self.queries.append(query)
        self.raw.append(wire)
        if self.silent:
            return None
        reply = dns.message.make_response(query, recursion_available=True)
        q = query.question[0]
        name = q.name.to_text().lower()
        ips = big_ips(int(name.split(".")[0])) if name.endswith(".big.test.") else self.records.get(name)
        if ips is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif q.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            family = 4 if q.rdtype == dns.rdatatype.A else 6
            chosen = [ip for ip in ips if ipaddress.ip_address(ip).version == family]
            if chosen:
                reply.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", q.rdtype, chosen))
        elif q.rdtype == dns.rdatatype.TXT:
            reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", '"from upstream"'))
        limit = 65535 if transport == "tcp" or self.oversize else (query.payload if query.edns >= 0 else 512)
        return reply.to_wire(max_size=limit, prefer_truncation=True)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                out = self.reply(await reader.readexactly(length), "tcp")
                if out is not None:
                    writer.write(len(out).to_bytes(2, "big") + out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _UdpSide(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        out = self.upstream.reply(data, "udp")
        if out is not None:
            self.transport.sendto(out, addr)


def resolv_conf(directory: str, servers: list[str], search: tuple[str, ...] = SEARCH) -> str:
    path = os.path.join(directory, "resolv.conf")
    with open(path, "w") as f:
        f.write("".join(f"nameserver {s}\n" for s in servers))
        f.write(f"search {' '.join(search)}\noptions ndots:5\n" if search else "")
    return path


async def start_proxy(directory: str, upstreams: list[Upstream], table: nds_pb2.NameTable | None,
                      **options) -> DnsProxy:
    """A proxy on 127.0.0.1:<free port> whose resolv.conf names `upstreams` (all on one port)."""
    if "resolv_conf" not in options:
        options["resolv_conf"] = resolv_conf(directory, [u.host for u in upstreams])
    options.setdefault("upstream_port", upstreams[0].port if upstreams else 53)
    options.setdefault("address", "127.0.0.1:0")
    options.setdefault("pod_namespace", "ns1")
    options.setdefault("proxy_domain", "ns1.svc.cluster.local")
    proxy = DnsProxy(DnsOptions(**options))
    await proxy.start()
    if table is not None:
        proxy.update(table)
    return proxy


def readable_dir(prefix: str) -> Path:
    """A temporary directory uid 1337 and 1000 can read (not under /root)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


def dnsmasq_argv(listen: list[str], hosts_file: Path, *, port: int = 53) -> list[str]:
    """Debian's dnsmasq as a plain authoritative-for-test resolver: no upstream of its own, no
    /etc/hosts, answers from `hosts_file` (addn-hosts) and NXDOMAIN for everything else."""
    return [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            "--bind-interfaces", "--pid-file=", "--user=root", f"--port={port}",
            "--log-facility=-", f"--addn-hosts={hosts_file}", "--local-ttl=60",
            "--local=/#/", "--txt-record=txt.external.test,from dnsmasq",
            *(f"--listen-address={a}" for a in listen)]
