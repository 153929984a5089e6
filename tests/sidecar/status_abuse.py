"""Misbehave against a status server and print what happened as one JSON object (stdlib only).

    status_abuse.py <host> <port> <slow connections> <seconds to wait for them to be closed>

Sends malformed requests (one connection each), then holds <slow connections> connections that
send their request head a byte at a time while a readiness probe is made every 0.1 s, then waits
for the server to close the slow ones.
"""
import asyncio
import json
import sys
import time

MALFORMED = [
    b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nX-A: \x00\x1b[2J\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n",
    b"POST /healthz/ready HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n",
    b"GET /\xc3\xa9\xff\x85\xe2\x80\xa8 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\n2026-01-01T00:00:00.000000Z\terror\tforged\r\n\r\n",
    b"GET /healthz/ready HTTP/9.9\r\nHost: x\r\n\r\n",
]


async def answer(host, port, data):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    try:
        got = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/") else 0


async def hang_up_after_expect(host, port):
    """Expect: 100-continue, then gone before the server answers."""
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
    writer.close()


async def closed_after(reader, t0, within):
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return round(time.monotonic() - t0, 2)


async def main(host, port, slow, wait):
    malformed = [await answer(host, port, data) for data in MALFORMED]
    for _ in range(5):
        await hang_up_after_expect(host, port)
    conns = [await asyncio.open_connection(host, port) for _ in range(slow)]
    t0 = time.monotonic()

    async def trickle(writer):
        writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n")
        while not writer.is_closing():
            writer.write(b"X")
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(trickle(w)) for _, w in conns]
    ready = []
    for _ in range(30):
        ready.append(await answer(host, port, b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        await asyncio.sleep(0.1)
    closed = await asyncio.gather(*(closed_after(r, t0, wait) for r, _ in conns))
    for task in tasks:
        task.cancel()
    print(json.dumps({"malformed": malformed, "ready": ready, "closed_after": closed}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
