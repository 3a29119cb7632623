"""An AI voice in a call: a realtime voice agent wired to the media server by adapters.

The agent hears the listed tracks through one :class:`StreamAdapter` each and speaks
through an :class:`IngestAdapter` into a track of its own session, which participants
pull like any other. The adapters are the ones users get from the HTTP API; only the
far end of their WebSocket is an in-process channel (``voxgate.testing.memory_pair``)
instead of a TCP connection. Between them the bridge is an OpenAI Realtime client:

- **ears**: ``Packet`` frames from each listened track, 48 kHz stereo, are mixed every
  20 ms and sent as ``input_audio_buffer.append`` (48 kHz mono ``audio/pcm``).
- **mouth**: ``response.output_audio.delta`` audio (48 kHz mono) is played into the
  ingest channel at real-time pace, a little ahead. When the caller starts speaking
  (``input_audio_buffer.speech_started``) what has not been played is dropped, as a
  Realtime client does on barge-in.

Each loop outlives a frame that fails (logged, then dropped); :meth:`CallAgent.close`
closes every part even when one of them fails.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import pybase64

from voxgate.core.relay import RelaySession
from voxgate.core.sfu.loops import stop_task, surviving
from voxgate.core.sfu.media import MediaServer
from voxgate.protocols.adapter import PacketError, decode_packet, encode_packet
from voxgate.testing.memory import MemoryChannel, memory_pair
from voxgate.transports.opus import FRAME_BYTES, FRAME_SAMPLES
from voxgate.transports.ws import Channel, Closed

log = logging.getLogger("voxgate.sfu.agent")

#: The bridge's audio format on the Realtime side.
RATE = 48000
#: Audio sent to the agent per ``input_audio_buffer.append``.
APPEND_FRAMES = 2
#: How far ahead of real time the mouth writes into the ingest adapter.
LEAD_SECONDS = 0.06
#: The Realtime events a watcher of the agent gets (:meth:`CallAgent.watch`): turns,
#: transcripts and response status, not audio.
WATCHED = frozenset(
    {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.done",
        "error",
    }
)
#: Events a slow watcher may have pending before it is cut off.
WATCH_BACKLOG = 256


Send = Callable[[str], Awaitable[None]]


class VoiceSession(Protocol):
    """What the bridge needs of :class:`voxgate.core.realtime.agent.RealtimeAgent`."""

    async def start(self) -> None: ...

    async def handle(self, data: str | bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Line:
    role: str  # user | assistant
    text: str


@dataclass(eq=False)
class CallAgent:
    id: str
    app_id: str
    media: MediaServer
    listen: list[tuple[str, str]]
    track_name: str = "agent"
    session_id: str = ""
    transcript: list[Line] = field(default_factory=list)
    #: The session's meters (bytes and frames of the Realtime bridge), for live listings.
    counters: RelaySession | None = None
    #: Called once when the agent has closed (the owner writes its usage record).
    on_close: Callable[[CallAgent], Awaitable[None]] | None = None
    _voice: VoiceSession | None = None
    _mouth: MemoryChannel | None = None
    _ears: dict[int, collections.deque[np.ndarray]] = field(default_factory=dict)
    _playout: bytearray = field(default_factory=bytearray)
    _speaking: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _adapters: list[Any] = field(default_factory=list)
    _watchers: set[asyncio.Queue[str | None]] = field(default_factory=set)
    _closed: bool = False

    async def start(
        self, make_voice: Callable[[Callable[[str], Awaitable[None]]], VoiceSession]
    ) -> None:
        """Open the adapters and the voice session. Raises SfuError/DialError; on
        failure everything opened so far is closed again."""
        try:
            ingest = await self.media.open_ingest(
                self._dial_mouth, self.app_id, self.track_name, f"internal://agents/{self.id}/mouth"
            )
            self._adapters.append(ingest)
            self.session_id = ingest.session_id
            for n, (sid, name) in enumerate(self.listen):
                self._ears[n] = collections.deque(maxlen=10)
                stream = await self.media.open_stream(
                    self._dial_ear(n),
                    self.app_id,
                    sid,
                    name,
                    f"internal://agents/{self.id}/ear/{n}",
                )
                self._adapters.append(stream)
            self._voice = make_voice(self._on_event)
            await self._voice.start()
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(self._mix(), name=f"agent-mix-{self.id}"))
        self._tasks.append(asyncio.create_task(self._speak(), name=f"agent-speak-{self.id}"))

    # -- dialling: the far ends of the adapters' WebSockets -----------------------------

    async def _dial_mouth(self, url: str) -> Channel:
        ours, theirs = memory_pair()
        self._mouth = ours
        return theirs

    def _dial_ear(self, n: int) -> Callable[[str], Awaitable[Channel]]:
        async def dial(url: str) -> Channel:
            ours, theirs = memory_pair(maxsize=256)
            self._tasks.append(asyncio.create_task(self._hear(n, ours), name=f"agent-ear-{n}"))
            return theirs

        return dial

    # -- ears -------------------------------------------------------------------------

    async def _hear(self, n: int, channel: MemoryChannel) -> None:
        frames = self._ears[n]
        while not isinstance(msg := await channel.receive(), Closed):
            if not isinstance(msg, bytes):
                continue
            with surviving(log, "agent %s: ear %d, a %d-byte frame", self.id, n, len(msg)):
                try:
                    pcm = decode_packet(msg).payload
                except PacketError:
                    continue
                stereo = np.frombuffer(pcm, np.int16).reshape(-1, 2).astype(np.int32)
                frames.append(stereo.sum(axis=1) // 2)

    async def _mix(self) -> None:
        """Every 20 ms, one frame from each ear that has one, summed; sent in batches."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        batch: list[np.ndarray] = []
        while True:
            due += FRAME_SAMPLES / RATE
            await asyncio.sleep(max(0.0, due - loop.time()))
            if due < loop.time() - 0.2:
                due = loop.time()
            parts = [ear.popleft() for ear in self._ears.values() if ear]
            if not parts:
                continue
            with surviving(log, "agent %s: mixing %d ears", self.id, len(parts)):
                mixed = np.sum(parts, axis=0) if len(parts) > 1 else parts[0]
                batch.append(np.clip(mixed, -32768, 32767).astype(np.int16))
                if len(batch) >= APPEND_FRAMES:
                    audio, batch = np.concatenate(batch).tobytes(), []
                    await self._append(loop.time(), audio)

    async def _append(self, now: float, pcm: bytes) -> None:
        if self._voice is None:
            return
        audio = pybase64.b64encode(pcm).decode()
        data = orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode()
        if self.counters is not None:
            self.counters.client_frame(now, data)
        await self._voice.handle(data)

    # -- mouth ------------------------------------------------------------------------

    async def watch(self) -> AsyncIterator[str]:
        """The agent's :data:`WATCHED` events as JSON text, from now until it closes.

        A watcher that falls :data:`WATCH_BACKLOG` events behind is ended early."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(WATCH_BACKLOG)
        if self._closed:
            return
        self._watchers.add(queue)
        try:
            while (data := await queue.get()) is not None:
                yield data
        finally:
            self._watchers.discard(queue)

    def _tell_watchers(self, data: str | None) -> None:
        for queue in list(self._watchers):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                self._watchers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    async def _on_event(self, data: str) -> None:
        if self.counters is not None:
            self.counters.upstream_frame(asyncio.get_running_loop().time(), data)
        event = orjson.loads(data)
        kind = event.get("type")
        if kind in WATCHED:
            self._tell_watchers(data)
        if kind == "response.output_audio.delta":
            self._playout += _stereo(pybase64.b64decode(event["delta"]))
            self._speaking.set()
        elif kind == "input_audio_buffer.speech_started":
            self._playout.clear()
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.transcript.append(Line("user", event.get("transcript", "")))
        elif kind == "response.output_audio_transcript.done":
            self.transcript.append(Line("assistant", event.get("transcript", "")))
        elif kind == "error":
            log.warning("agent %s: %s", self.id, event.get("error"))

    async def _speak(self) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        while True:
            await self._speaking.wait()
            started = loop.time()
            sent = 0
            while len(self._playout) >= FRAME_BYTES or (self._playout and sent == 0):
                frame = bytes(self._playout[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0")
                del self._playout[:FRAME_BYTES]
                with surviving(log, "agent %s: speaking frame %d", self.id, seq):
                    await self._say(encode_packet(seq, seq * FRAME_SAMPLES, frame))
                seq += 1
                sent += 1
                ahead = started + sent * FRAME_SAMPLES / RATE - loop.time()
                if ahead > LEAD_SECONDS:
                    await asyncio.sleep(ahead - LEAD_SECONDS)
            if len(self._playout) < FRAME_BYTES:
                self._speaking.clear()

    async def _say(self, packet: bytes) -> None:
        """One frame into the mouth; if the mouth's adapter is gone, what was left to
        say is dropped (the agent goes on listening)."""
        if self._mouth is None:
            self._playout.clear()
            return
        try:
            await self._mouth.send_bytes(packet)
        except ConnectionError:
            log.info("agent %s: its track's adapter is closed; dropping what is left", self.id)
            self._playout.clear()

    # -- end --------------------------------------------------------------------------

    async def close(self) -> int | None:
        if self._closed:
            return None
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await stop_task(task, log, f"agent {self.id}: {task.get_name()}")
        if self._voice is not None:
            with surviving(log, "agent %s: closing its voice session", self.id):
                await self._voice.close()
        self._tell_watchers(None)
        for adapter in self._adapters:
            with surviving(log, "agent %s: closing adapter %s", self.id, adapter.id):
                await adapter.close()
        if self.on_close is not None:
            await self.on_close(self)
        return 0


def _stereo(mono: bytes) -> bytes:
    return np.repeat(np.frombuffer(mono, np.int16), 2).tobytes()
