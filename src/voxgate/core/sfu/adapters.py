"""WebSocket adapters (spec/sfu.md): PCM over a WebSocket into a track, and back out.

- :class:`IngestAdapter` reads ``Packet`` frames of 48 kHz stereo PCM16 from the
  endpoint it dialled and plays them into a new track at real-time pace (buffer mode:
  the sender may send ahead; reading pauses while more than ``max_buffer_seconds``
  waits, so nothing accepted is dropped). When the WebSocket ends, what is buffered
  still plays, then the adapter closes.
- :class:`StreamAdapter` subscribes to a track, decodes its Opus once per adapter and
  sends one ``Packet`` per 20 ms frame. If its WebSocket drops it redials the same URL
  for up to ``reconnect_seconds``, holding a bounded backlog, then gives up and closes.

Both are one direction, and :meth:`close` is idempotent. Their loops outlive a frame
that fails (it is logged and dropped), and ``close`` releases everything even when a
loop had failed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable

from voxgate.channels import Channel, Closed, Dial, DialError
from voxgate.core.sfu.loops import stop_task, surviving
from voxgate.core.sfu.tracks import PcmPublisher, TrackSource
from voxgate.opus import FRAME_BYTES, OpusDecoder
from voxgate.protocols.adapter import MAX_INGEST_MESSAGE, PacketError, decode_packet, encode_packet

log = logging.getLogger("voxgate.sfu.adapters")

FRAME_SECONDS = 0.02


class IngestAdapter:
    def __init__(
        self,
        adapter_id: str,
        app_id: str,
        session_id: str,
        publisher: PcmPublisher,
        channel: Channel,
        *,
        on_close: Callable[[str], None],
        max_buffer_seconds: float = 5.0,
    ) -> None:
        self.id = adapter_id
        self.app_id = app_id
        self.session_id = session_id
        #: The session made for this adapter's track, closed with it.
        self.owns_session = session_id
        self.track_name = publisher.source.name
        self.bytes_processed = 0
        self.error: str | None = None
        self._publisher = publisher
        self._channel = channel
        self._on_close = on_close
        self._buffer = bytearray()
        self._max_buffer = int(max_buffer_seconds / FRAME_SECONDS) * FRAME_BYTES
        self._data = asyncio.Event()  # the buffer holds a frame, or input ended
        self._room = asyncio.Event()  # the buffer has room for more
        self._room.set()
        self._eof = False
        self._closed = False
        self._reader = asyncio.create_task(self._read(), name=f"ingest-read-{adapter_id}")
        self._player = asyncio.create_task(self._play(), name=f"ingest-play-{adapter_id}")

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._channel.receive()
                if isinstance(msg, Closed):
                    if not msg.clean and msg.code == 1009:
                        self.error = "message larger than 32 KB"
                    return
                if isinstance(msg, str):
                    await self._refuse(1003, "text frame: send binary protobuf Packet frames")
                    return
                if len(msg) > MAX_INGEST_MESSAGE:
                    await self._refuse(1009, "message larger than 32 KB")
                    return
                try:
                    packet = decode_packet(msg)
                except PacketError as exc:
                    await self._refuse(1007, f"frame is not a protobuf Packet: {exc}")
                    return
                with surviving(log, "ingest adapter %s: a %d-byte frame", self.id, len(msg)):
                    self._take(len(msg), packet.payload)
                if len(self._buffer) >= self._max_buffer:
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._eof = True
            self._data.set()

    def _take(self, size: int, payload: bytes) -> None:
        self.bytes_processed += size
        self._buffer += payload
        if len(self._buffer) >= FRAME_BYTES:
            self._data.set()

    async def _refuse(self, code: int, reason: str) -> None:
        self.error = reason
        log.info("ingest adapter %s: %s", self.id, reason)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._channel.close(code, reason)

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self._data.wait()
            if len(self._buffer) < FRAME_BYTES:
                if self._eof:
                    break
                self._data.clear()
                continue
            now = loop.time()
            if due < now - 0.1:  # after an underrun, start the pace again from now
                due = now
            n = min(len(self._buffer) // FRAME_BYTES, max(1, int((now - due) / 0.02) + 1))
            take = n * FRAME_BYTES
            pcm = bytes(self._buffer[:take])
            del self._buffer[:take]
            if len(self._buffer) < self._max_buffer:
                self._room.set()
            due += n * FRAME_SECONDS
            with surviving(log, "ingest adapter %s: playing %d bytes", self.id, take):
                self._publisher.write(pcm)
            await asyncio.sleep(max(0.0, due - loop.time()))
        await self.close()

    async def close(self) -> int | None:
        if self._closed:
            return None
        self._closed = True
        for task in (self._reader, self._player):
            await stop_task(task, log, f"ingest adapter {self.id}: {task.get_name()}")
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._channel.close(1000, "adapter closed")
        with surviving(log, "ingest adapter %s: closing its track", self.id):
            await self._publisher.aclose()
        self._publisher.source.end()
        self._on_close(self.id)
        return self.bytes_processed


class StreamAdapter:
    """Sends a track's audio to a WebSocket as 20 ms ``Packet`` frames."""

    def __init__(
        self,
        adapter_id: str,
        app_id: str,
        source: TrackSource,
        endpoint: str,
        channel: Channel,
        dial: Dial,
        *,
        on_close: Callable[[str], None],
        reconnect_seconds: float = 5.0,
        backlog_frames: int = 50,
    ) -> None:
        self.id = adapter_id
        self.app_id = app_id
        self.session_id = source.session_id
        self.track_name = source.name
        self.bytes_processed = 0
        self.reconnects = 0
        self._source = source
        self._endpoint = endpoint
        self._channel: Channel | None = channel
        self._dial = dial
        self._on_close = on_close
        self._reconnect_seconds = reconnect_seconds
        self._decoder = OpusDecoder()
        self._seq = 0
        self._timestamp = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=backlog_frames)
        self._closed = False
        self._dropped = asyncio.Event()
        self._watch = asyncio.create_task(
            self._watch_peer(channel), name=f"stream-peer-{adapter_id}"
        )
        self._task = asyncio.create_task(self._run(), name=f"stream-{adapter_id}")
        source.subscribe(self)

    # Subscriber
    def push(self, payload: bytes, timestamp: int) -> None:
        self._queue.put_nowait(payload)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def _watch_peer(self, channel: Channel) -> None:
        """Read (and ignore) what the endpoint sends, to notice when it goes away."""
        while not isinstance(await channel.receive(), Closed):
            pass
        with contextlib.suppress(ConnectionError, RuntimeError):
            await channel.close(1000, "")
        if channel is self._channel:
            self._dropped.set()

    def _frame(self, pcm: bytes) -> bytes:
        data = encode_packet(self._seq, self._timestamp, pcm)
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._timestamp = (self._timestamp + len(pcm) // 4) & 0xFFFFFFFF
        return data

    async def _run(self) -> None:
        while (payload := await self._queue.get()) is not None:
            with surviving(log, "stream adapter %s: a %d-byte packet", self.id, len(payload)):
                await self._forward(payload)
        await self.close()

    async def _forward(self, payload: bytes) -> None:
        pcm = self._decoder.decode(payload)
        if not pcm:
            return
        frame = self._frame(pcm)
        channel = self._channel
        if channel is not None and not self._dropped.is_set():
            try:
                await channel.send_bytes(frame)
                self.bytes_processed += len(frame)
                return
            except (ConnectionError, RuntimeError):
                self._dropped.set()
        self._backlog.append(frame)
        self._reconnect_soon()

    _redial: asyncio.Task[None] | None = None

    def _reconnect_soon(self) -> None:
        if self._redial is None or self._redial.done():
            self._channel = None
            self._redial = asyncio.create_task(self._reconnect(), name=f"stream-redial-{self.id}")

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_seconds
        while loop.time() < deadline:
            back = False
            with surviving(log, "stream adapter %s: redialling", self.id):
                back = await self._redial_once(max(0.1, deadline - loop.time()))
            if back:
                return
            await asyncio.sleep(0.2)
        log.info(
            "stream adapter %s: endpoint gone for %ss, closing", self.id, self._reconnect_seconds
        )
        await self.close()

    async def _redial_once(self, within: float) -> bool:
        """Dial once and send the backlog; whether the endpoint is back."""
        try:
            async with asyncio.timeout(within):
                channel = await self._dial(self._endpoint)
        except (DialError, TimeoutError):
            return False
        self.reconnects += 1
        try:
            while self._backlog:
                frame = self._backlog.popleft()
                await channel.send_bytes(frame)
                self.bytes_processed += len(frame)
        except (ConnectionError, RuntimeError):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await channel.close(1000, "")
            return False
        self._dropped.clear()
        self._channel = channel
        self._watch = asyncio.create_task(self._watch_peer(channel), name=f"stream-peer-{self.id}")
        return True

    async def close(self) -> int | None:
        if self._closed:
            return None
        self._closed = True
        self._source.unsubscribe(self)
        for task in (self._task, self._watch, self._redial):
            name = task.get_name() if task is not None else ""
            await stop_task(task, log, f"stream adapter {self.id}: {name}")
        if self._channel is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._channel.close(1000, "adapter closed")
        self._on_close(self.id)
        return self.bytes_processed
