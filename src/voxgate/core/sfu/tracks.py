"""Published tracks and their fan-out.

A :class:`TrackSource` is one published audio track: Opus packets come in once (from a
WebRTC publisher's receiver, or from :class:`PcmPublisher`, which encodes PCM once) and
go to every :class:`Subscriber` as the same bytes. Subscribers never block the source:
each one queues and drops on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from voxgate.core.sfu.loops import surviving
from voxgate.opus import FRAME_BYTES, FRAME_SAMPLES, OpusEncoder

log = logging.getLogger("voxgate.sfu.tracks")


class Subscriber(Protocol):
    def push(self, payload: bytes, timestamp: int) -> None:
        """One Opus packet; ``timestamp`` in 48 kHz samples (any origin). Never blocks."""

    def end(self) -> None:
        """The source is gone; no more packets will come."""


@dataclass(eq=False)
class TrackSource:
    """One published track, keyed by the session that publishes it and its name."""

    session_id: str
    name: str
    created: float
    #: Monotonic time of the last packet (``created`` until the first one).
    last_packet: float = 0.0
    packets: int = 0
    octets: int = 0
    ended: bool = False
    subscribers: set[Subscriber] = field(default_factory=set)
    #: Called once when the track ends, so its owner can forget it.
    on_end: Callable[[TrackSource], None] | None = None
    #: Called when the last subscriber unsubscribes (a feed from another node closes).
    on_idle: Callable[[TrackSource], None] | None = None

    def __post_init__(self) -> None:
        self.last_packet = self.created

    def deliver(self, payload: bytes, timestamp: int, now: float) -> None:
        self.last_packet = now
        self.packets += 1
        self.octets += len(payload)
        for sub in self.subscribers:
            sub.push(payload, timestamp)

    def subscribe(self, sub: Subscriber) -> None:
        if self.ended:
            sub.end()
        else:
            self.subscribers.add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        if not self.subscribers and self.on_idle is not None:
            self.on_idle(self)

    def end(self) -> None:
        """Idempotent: every subscriber hears the end once."""
        if self.ended:
            return
        self.ended = True
        subs, self.subscribers = self.subscribers, set()
        for sub in subs:
            sub.end()
        if self.on_end is not None:
            self.on_end(self)


class PcmPublisher:
    """Feeds a :class:`TrackSource` from 48 kHz stereo PCM16, encoded once for everyone.

    :meth:`write` takes any amount of PCM; whole 20 ms frames are encoded off the event
    loop in order, and a partial frame waits for the rest. Call :meth:`aclose` when done.
    A batch that fails to encode is logged and skipped; the track goes on.
    """

    def __init__(self, source: TrackSource, now: Callable[[], float]) -> None:
        self.source = source
        self._now = now
        self._encoder = OpusEncoder()
        self._pending = b""
        self._samples = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"opus-{source.name}")

    def write(self, pcm: bytes) -> None:
        data = self._pending + pcm
        whole = len(data) - len(data) % FRAME_BYTES
        self._pending = data[whole:]
        if whole:
            self._queue.put_nowait(data[:whole])

    async def aclose(self) -> None:
        self._queue.put_nowait(None)
        await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while (pcm := await self._queue.get()) is not None:
            # Drain what else is waiting so one executor hop encodes it all.
            while not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    self._queue.put_nowait(None)
                    break
                pcm += nxt
            with surviving(log, "track %s: encoding %d bytes", self.source.name, len(pcm)):
                packets = await loop.run_in_executor(None, self._encoder.encode, pcm)
                now = self._now()
                for payload in packets:
                    self.source.deliver(payload, self._samples, now)
                    self._samples += FRAME_SAMPLES
