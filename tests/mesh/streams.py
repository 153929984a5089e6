"""A grpc.aio client stream for tests, with reads that can time out."""
from __future__ import annotations

import asyncio

import grpc
import grpc.aio


class Stream:
    """A client stream whose reads can time out without cancelling the RPC (grpc.aio cancels the call
    when a pending read() is cancelled)."""

    def __init__(self, call) -> None:
        self.call = call
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                self._inbox.put_nowait(message)
            self._inbox.put_nowait(grpc.aio.EOF)
        except grpc.aio.AioRpcError as e:
            self._inbox.put_nowait(e)

    async def write(self, message) -> None:
        await self.call.write(message)

    async def read(self, timeout: float = 5.0):
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.call.cancel()


async def nothing_within(stream: Stream, seconds=0.3) -> bool:
    try:
        await stream.read(seconds)
    except asyncio.TimeoutError:
        return True
    return False
