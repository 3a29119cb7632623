"""An AI voice in a call: a voice session bound straight to the media server's tracks.

- **ears**: the agent subscribes to each listened track like any participant; each
  track's Opus is decoded once, and every 20 ms one frame of each is mixed and fed to the
  session's input pipeline as 48 kHz PCM. No protobuf, base64 or JSON on the way.
- **mouth**: the session's voice goes to a :class:`~voxgate.core.realtime.playout.Playout`;
  a paced loop takes one 20 ms frame every 20 ms and publishes it into the agent's own
  track (encoded once for every participant). What was taken is what the call heard, so a
  barge-in truncates the agent's history to it.

The agent's turn, transcript and response events go to its watchers (the SSE stream),
rendered by the ``render`` the server passes in. Each loop outlives a frame that fails
(logged, then dropped); :meth:`CallAgent.close` closes every part even when one fails.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voxgate.core.realtime.playout import MONO_FRAME_BYTES, Pacer, Playout
from voxgate.core.realtime.ports import AudioSink
from voxgate.core.relay import RelaySession
from voxgate.core.sfu.loops import stop_task, surviving
from voxgate.core.sfu.media import MediaServer
from voxgate.core.sfu.tracks import PcmPublisher, TrackSource
from voxgate.opus import FRAME_SAMPLES, OpusDecoder
from voxgate.protocols.realtime import events as ev

log = logging.getLogger("voxgate.sfu.agent")

#: The rate of the agent's audio both ways.
RATE = 48000
#: Frames an ear keeps for the mixer (a listened track that runs ahead loses the oldest).
EAR_FRAMES = 10
FRAME_SECONDS = FRAME_SAMPLES / RATE
#: How late the mixer may fall before it skips ahead instead of catching up.
MAX_LATE_SECONDS = 0.2
#: The events a watcher of the agent gets (:meth:`CallAgent.watch`): turns, transcripts
#: and response status, not audio.
WATCHED = (
    ev.SpeechStarted,
    ev.SpeechStopped,
    ev.TranscriptionCompleted,
    ev.ResponseCreated,
    ev.AudioTranscriptDelta,
    ev.AudioTranscriptDone,
    ev.ResponseDone,
    ev.ItemTruncated,
    ev.OutputAudioCleared,
    ev.Error,
)
#: Events a slow watcher may have pending before it is cut off.
WATCH_BACKLOG = 256

Emit = Callable[[ev.Event], Awaitable[None]]


class VoiceSession(Protocol):
    """What the agent needs of :class:`voxgate.core.realtime.voice.VoiceSession`."""

    async def start(self) -> None: ...

    async def feed_audio(self, pcm: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Line:
    role: str  # user | assistant
    text: str


class _Ear:
    """A subscriber of one listened track: its Opus decoded once, mono frames kept (the
    last :data:`EAR_FRAMES`); ``heard`` is set when one arrives."""

    def __init__(self, heard: asyncio.Event) -> None:
        self.frames: collections.deque[np.ndarray] = collections.deque(maxlen=EAR_FRAMES)
        self._decoder = OpusDecoder()
        self._heard = heard

    def push(self, payload: bytes, timestamp: int) -> None:
        pcm = self._decoder.decode(payload)
        if pcm:
            stereo = np.frombuffer(pcm, np.int16).reshape(-1, 2).astype(np.int32)
            self.frames.append(stereo.sum(axis=1) // 2)
            self._heard.set()

    def end(self) -> None:
        self.frames.clear()


@dataclass(eq=False)
class CallAgent:
    id: str
    app_id: str
    media: MediaServer
    listen: list[tuple[str, str]]
    #: Renders an event for watchers (JSON text), ``None`` to leave it out.
    render: Callable[[ev.Event], str | None]
    track_name: str = "agent"
    session_id: str = ""
    transcript: list[Line] = field(default_factory=list)
    #: The session's meters, for live listings and its usage record.
    counters: RelaySession | None = None
    #: Called once when the agent has closed (the owner writes its usage record).
    on_close: Callable[[CallAgent], Awaitable[None]] | None = None
    playout: Playout = field(default_factory=Playout)
    _voice: VoiceSession | None = None
    _publisher: PcmPublisher | None = None
    _ears: list[tuple[TrackSource, _Ear]] = field(default_factory=list)
    _heard: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _watchers: set[asyncio.Queue[str | None]] = field(default_factory=set)
    _closed: bool = False

    async def start(self, make_voice: Callable[[Emit, AudioSink], VoiceSession]) -> None:
        """Publish the agent's track, listen to the tracks (on this node or another),
        start the voice session. Raises SfuError (a listened track is gone, or on a node
        that cannot be reached); then everything is closed again."""
        try:
            session = self.media.new_session(self.app_id)
            self.session_id = session.id
            self._publisher = session.publish_pcm(self.track_name)
            async with self.media.tracks(self.app_id, self.listen) as sources:
                for source in sources:  # here or fed from another node
                    ear = _Ear(self._heard)
                    source.subscribe(ear)
                    self._ears.append((source, ear))
            self._voice = make_voice(self._on_event, self.playout)
            await self._voice.start()
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(self._mix(), name=f"agent-mix-{self.id}"))
        self._tasks.append(asyncio.create_task(self._speak(), name=f"agent-speak-{self.id}"))

    # -- ears ---------------------------------------------------------------------------

    async def _mix(self) -> None:
        """The ears into the session. One ear: each frame as it arrives (no clock adds
        delay). Several: every 20 ms one frame from each ear that has one, summed."""
        voice = self._voice
        assert voice is not None
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if len(self._ears) == 1:
                await self._heard.wait()
                self._heard.clear()
                frames = self._ears[0][1].frames
                parts = [np.concatenate(list(frames))] if frames else []
                frames.clear()
            else:
                due += FRAME_SECONDS
                await asyncio.sleep(max(0.0, due - loop.time()))
                if due < loop.time() - MAX_LATE_SECONDS:
                    due = loop.time()
                parts = [ear.frames.popleft() for _source, ear in self._ears if ear.frames]
            if not parts:
                continue
            with surviving(log, "agent %s: mixing %d ears", self.id, len(parts)):
                mixed = np.sum(parts, axis=0) if len(parts) > 1 else parts[0]
                pcm = np.clip(mixed, -32768, 32767).astype(np.int16).tobytes()
                if self.counters is not None:
                    self.counters.last_activity = loop.time()
                    self.counters.client_bytes += len(pcm)
                await voice.feed_audio(pcm)

    # -- mouth --------------------------------------------------------------------------

    async def _speak(self) -> None:
        """The playout's frames into the agent's track at real time; silence between
        answers (a track without packets would be collected as gone)."""
        publisher = self._publisher
        assert publisher is not None
        pacer = Pacer(self.playout)
        while True:
            mono, slot = await pacer.next()
            with surviving(log, "agent %s: speaking frame %d", self.id, slot):
                mono = mono or bytes(MONO_FRAME_BYTES)
                samples = np.frombuffer(mono.ljust(MONO_FRAME_BYTES, b"\0"), np.int16)
                publisher.write(np.repeat(samples, 2).tobytes())

    # -- events -------------------------------------------------------------------------

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

    async def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, WATCHED):
            frame = self.render(event)
            if frame is not None:
                if self.counters is not None:
                    self.counters.upstream_frame(asyncio.get_running_loop().time(), frame)
                self._tell_watchers(frame)
        if isinstance(event, ev.TranscriptionCompleted):
            self.transcript.append(Line("user", event.transcript))
        elif isinstance(event, ev.AudioTranscriptDone):
            self.transcript.append(Line("assistant", event.transcript))
        elif isinstance(event, ev.Error):
            log.warning("agent %s: %s (%s)", self.id, event.message, event.code)

    # -- end ----------------------------------------------------------------------------

    async def close(self) -> int | None:
        if self._closed:
            return None
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await stop_task(task, log, f"agent {self.id}: {task.get_name()}")
        for source, ear in self._ears:
            source.unsubscribe(ear)
        if self._voice is not None:
            with surviving(log, "agent %s: closing its voice session", self.id):
                await self._voice.close()
        self.playout.stop()
        self._tell_watchers(None)
        if self._publisher is not None:
            with surviving(log, "agent %s: closing its track", self.id):
                await self._publisher.aclose()
        if self.session_id:
            with surviving(log, "agent %s: closing its session", self.id):
                await self.media.close_session(self.session_id)
        if self.on_close is not None:
            await self.on_close(self)
        return 0
