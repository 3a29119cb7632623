"""An in-memory WebSocket pair with the :class:`Channel` interface."""

from __future__ import annotations

import asyncio

from voxgate.transports.ws import Closed


class MemoryChannel:
    """One end of an in-memory WebSocket. Create pairs with :func:`memory_pair`.

    Queues are bounded (``maxsize`` frames), so a reader that stops reading slows the
    sender, as a real socket would.
    """

    def __init__(self, inbox: asyncio.Queue[str | bytes | Closed]) -> None:
        self._inbox = inbox
        self.peer: MemoryChannel | None = None
        self.closed_with: Closed | None = None

    async def receive(self) -> str | bytes | Closed:
        return await self._inbox.get()

    async def _deliver(self, item: str | bytes | Closed) -> None:
        if self.closed_with is not None:
            raise ConnectionResetError("memory channel is closed")
        assert self.peer is not None
        await self.peer._inbox.put(item)

    async def send_text(self, data: str) -> None:
        await self._deliver(data)

    async def send_bytes(self, data: bytes) -> None:
        await self._deliver(data)

    async def close(self, code: int, reason: str) -> None:
        if self.closed_with is not None:
            return
        self.closed_with = Closed(code, reason, clean=True)
        assert self.peer is not None
        if self.peer.closed_with is None:
            self.peer._inbox.put_nowait(Closed(code, reason, clean=True))

    def drop(self) -> None:
        """Vanish without a close frame: the peer sees an unclean close (1006)."""
        self.closed_with = Closed(1006, "", clean=False)
        assert self.peer is not None
        self.peer._inbox.put_nowait(Closed(1006, "", clean=False))


def memory_pair(maxsize: int = 64) -> tuple[MemoryChannel, MemoryChannel]:
    a = MemoryChannel(asyncio.Queue(maxsize))
    b = MemoryChannel(asyncio.Queue(maxsize))
    a.peer, b.peer = b, a
    return a, b
