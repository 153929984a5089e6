"""The DNS proxy's UDP and TCP listeners (agent/mesh/dns.py owns what they answer).

A query answered from the mesh table is answered inside the read callback; a forwarded one becomes
a task, so a slow upstream never holds up other clients. Over TCP the queries of one connection are
answered as their replies become ready (RFC 7766 pipelining), at most `PIPELINE` at a time, and a
connection the client closes after its last query still gets every answer before we close it.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import dns.exception
import dns.message

from agent.mesh.dns_forward import servfail

if TYPE_CHECKING:
    from agent.mesh.dns import DnsProxy

#: A UDP datagram carries at most 65,507 bytes of payload.
UDP_MAX = 65507
PIPELINE = 64


def fit(query: dns.message.Message, reply: dns.message.Message, tcp: bool) -> tuple[bytes, bool]:
    """The reply in wire format within the client's limit: over UDP the EDNS0 buffer it advertised
    (at least 512 bytes, the limit without EDNS0), over TCP 65,535. Names are always compressed;
    what still does not fit is left out whole RRset by RRset, with TC set so the client asks again
    over TCP (istio#29675). An upstream's answer that fits goes back as it came. (wire, truncated)."""
    limit = 65535 if tcp else min(max(512, query.payload if query.edns >= 0 else 512), UDP_MAX)
    if reply.wire is not None and len(reply.wire) <= limit:
        return reply.wire, False
    try:
        if reply.wire is not None and not reply.answer:  # read up to its question only, so far
            reply = dns.message.from_wire(reply.wire)
        try:
            return reply.to_wire(max_size=limit), False
        except dns.exception.TooBig:
            return reply.to_wire(max_size=limit, prefer_truncation=True), True
    except Exception:  # an upstream reply dnspython read but cannot write back: SERVFAIL instead
        return servfail(query).to_wire(max_size=limit, prefer_truncation=True), False


class UdpServer(asyncio.DatagramProtocol):
    protocol = "udp"

    def __init__(self, proxy: "DnsProxy", idle_timeout: float) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            query, early = self.proxy.parse(data)
            if query is None:
                if early:
                    self.transport.sendto(early, addr)
                return
            reply = self.proxy.local(query)
            if reply is not None:
                self.transport.sendto(self.proxy.wire(query, reply, False), addr)
                return
            task = asyncio.ensure_future(self._forward(query, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception as e:  # never let one datagram take the listener down
            self.proxy.log("error", "internal", f"dns proxy: udp query failed: {e!r}")

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for replies to vanished clients: nothing to do

    async def _forward(self, query: dns.message.Message, addr) -> None:
        reply = await self.proxy.forwarded(query, False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(self.proxy.wire(query, reply, False), addr)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            await asyncio.sleep(0)  # the transport closes its socket on the next loop turn
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class TcpServer:
    protocol = "tcp"

    def __init__(self, proxy: "DnsProxy", idle_timeout: float) -> None:
        self.proxy = proxy
        self.idle_timeout = idle_timeout
        self.server: asyncio.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._client, host, port, reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients.add(task)
        lock = asyncio.Lock()
        pending: set[asyncio.Task] = set()
        try:
            while (wire := await self._read(reader)) is not None:
                if len(pending) >= PIPELINE:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                job = asyncio.ensure_future(self._answer(wire, writer, lock))
                pending.add(job)
                job.add_done_callback(pending.discard)
            if pending:  # the client is done sending: its answers still go out
                await asyncio.gather(*pending, return_exceptions=True)
        except (ConnectionError, OSError):
            pass
        finally:
            for job in pending:
                job.cancel()
            writer.close()
            self._clients.discard(task)

    async def _read(self, reader: asyncio.StreamReader) -> bytes | None:
        """One message of the TCP framing (a two-byte big-endian length, then that many bytes);
        None when the client closed or stayed idle for `idle_timeout`."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                length = int.from_bytes(await reader.readexactly(2), "big")
                return await reader.readexactly(length)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return None

    async def _answer(self, wire: bytes, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        try:
            data = await self._reply(wire)
            if data is None:
                writer.close()  # not a DNS message at all: nothing sensible to say on this stream
                return
            async with lock:
                writer.write(len(data).to_bytes(2, "big") + data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.close()
        except Exception as e:  # never a traceback for what one client sent
            self.proxy.log("error", "internal", f"dns proxy: tcp query failed: {e!r}")
            writer.close()

    async def _reply(self, wire: bytes) -> bytes | None:
        query, early = self.proxy.parse(wire)
        if query is None:
            return early
        reply = self.proxy.local(query)
        if reply is None:
            reply = await self.proxy.forwarded(query, True)
        return self.proxy.wire(query, reply, True)
