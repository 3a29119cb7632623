"""Play-out of a session's voice at real time, knowing what was played.

:class:`Playout` is the :class:`~voxgate.core.realtime.ports.AudioSink` of transports
that play the voice out themselves (a WebRTC call's track, an agent's track in a
media-server call): :meth:`Playout.write` queues 48 kHz mono PCM16, and the transport's
paced loop takes one 20 ms frame every 20 ms with :meth:`Playout.take`. What was taken
counts as played, per item, so a barge-in truncates the history to what was heard.
:class:`Pacer` is that loop's clock: one frame every 20 ms on a fixed schedule, and at
once when an answer starts while nothing plays (its first frame waits for no slot).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from voxgate.audio import Encoding
from voxgate.core.realtime.ports import OutputAudio, Playing
from voxgate.core.sfu.loops import surviving
from voxgate.protocols.realtime.session import AudioSpec

log = logging.getLogger("voxgate.realtime.playout")

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960
#: Audio :meth:`Playout.write` lets wait unplayed before it waits itself.
LEAD_SECONDS = 1.0
#: Per-item play counters kept for :meth:`Playout.played_ms` (the most recent items).
MAX_ITEMS = 64
#: Responses whose state :class:`Playout` keeps (started, finished) at most.
MAX_RESPONSES = 64
#: Bytes of one 20 ms frame of 48 kHz mono PCM16.
MONO_FRAME_BYTES = FRAME_SAMPLES * 2

#: ``(response_id, item_id)``: a response's audio started, stopped or was cleared.
PlayoutEvent = Callable[[str, str], None]


def ignore_playout(response_id: str, item_id: str) -> None:
    pass


@dataclass(eq=False, slots=True)
class _Piece:
    item_id: str
    response_id: str
    data: bytes
    offset: int = 0


@dataclass(eq=False, slots=True)
class _Response:
    id: str
    #: Bytes of it queued and not played yet.
    pending: int = 0
    started: bool = False
    finished: bool = False
    #: The item whose audio it played last.
    item_id: str = ""


class Playout:
    """A session's voice, queued until a paced loop plays it: an :class:`AudioSink`.

    :meth:`write` takes 48 kHz mono PCM16 (``format``) and returns once it is queued,
    first waiting while over :data:`LEAD_SECONDS` of audio waits unplayed. ``track`` is
    what the RTP sender reads: one Opus packet every 20 ms on a fixed schedule from its
    first ``recv()`` (the loop clock), silence while nothing is queued. Playing starts
    when the connection is up, not when audio is written.

    Callbacks, each ``(response_id, item_id)``, come from the track as audio goes out
    (``on_cleared`` from :meth:`clear` and ``on_stopped`` possibly from :meth:`finish`):
    ``on_started`` when a response's first audio is sent; then exactly one of
    ``on_stopped`` (after :meth:`finish`, once its last audio is sent) or ``on_cleared``
    (:meth:`clear` dropped or cut it). :meth:`stop` ends the track with no callback.
    """

    format = AudioSpec(Encoding.PCM16, SAMPLE_RATE)

    def __init__(
        self,
        *,
        on_started: PlayoutEvent = ignore_playout,
        on_stopped: PlayoutEvent = ignore_playout,
        on_cleared: PlayoutEvent = ignore_playout,
    ) -> None:
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._on_cleared = on_cleared
        self._queue: collections.deque[_Piece] = collections.deque()
        self._queued = 0  # bytes in _queue not played
        self._responses: dict[str, _Response] = {}  # in order of first write
        self._played: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._room = asyncio.Event()  # set whenever the queue is at or under the lead
        self._room.set()
        self._cleared = 0  # how many times clear() ran: a waiting write checks it
        self._stopped = False
        #: Set by every write (and by stop): wakes an idle :class:`Pacer` at once.
        self.written = asyncio.Event()

    # -- the sink ---------------------------------------------------------------------

    async def write(self, audio: OutputAudio) -> None:
        """Queue ``audio.audio`` (48 kHz mono PCM16, whole samples). Waits while over
        :data:`LEAD_SECONDS` is queued; cancel the waiting task to cancel the response.
        Audio whose write was waiting when :meth:`clear` or :meth:`stop` ran is dropped."""
        data = audio.audio
        if len(data) % 2:
            raise ValueError("PCM16 audio must be whole samples (an even number of bytes)")
        cleared = self._cleared
        while self._queued > LEAD_SECONDS * SAMPLE_RATE * 2 and not self._stopped:
            self._room.clear()
            await self._room.wait()
        if not data or self._stopped or cleared != self._cleared:
            return
        self._queue.append(_Piece(audio.item_id, audio.response_id, data))
        self._queued += len(data)
        response = self._responses.get(audio.response_id)
        if response is None:
            response = self._responses[audio.response_id] = _Response(audio.response_id)
        response.pending += len(data)
        if len(self._responses) > MAX_RESPONSES:
            self._forget_old_responses()
        self.written.set()

    def finish(self, response_id: str) -> None:
        """No more audio for ``response_id``; ``on_stopped`` follows once it is played
        (at once if it all has been). Unknown responses (no audio, cleared) are ignored."""
        response = self._responses.get(response_id)
        if response is None:
            return
        response.finished = True
        if response.pending == 0:
            del self._responses[response_id]
            if response.started:
                self._call(self._on_stopped, response.id, response.item_id)

    def clear(self) -> None:
        """Drop every unplayed piece now: the next packet is silence. Each response that
        had started and not stopped gets ``on_cleared``; the others are forgotten."""
        self._cleared += 1
        self._queue.clear()
        self._queued = 0
        cut = [r for r in self._responses.values() if r.started]
        self._responses.clear()
        self._room.set()
        for r in cut:
            self._call(self._on_cleared, r.id, r.item_id)

    def played_ms(self, item_id: str) -> float:
        """Milliseconds of ``item_id``'s audio sent to the caller so far: 0.0 for an item
        never played (or one older than the last :data:`MAX_ITEMS`)."""
        return self._played.get(item_id, 0) * 1000 / SAMPLE_RATE

    @property
    def playing(self) -> Playing | None:
        """The answer whose audio is queued and not fully played (the one at the head)."""
        if not self._queue:
            return None
        head = self._queue[0]
        return Playing(head.response_id, head.item_id)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """End the track and drop what is queued; a waiting :meth:`write` returns. No
        callback (the call is over). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.clear()
        self._queued = 0
        self._responses.clear()
        self._room.set()
        self.written.set()

    # -- the track --------------------------------------------------------------------

    def take(self) -> bytes | None:
        """The next 20 ms of queued mono audio (zero-padded at a response's end), or
        ``None`` for silence; counted as played. The callbacks it makes due run first."""
        events: list[tuple[PlayoutEvent, str, str]] = []
        frame = self._take(events)
        for callback, response_id, item_id in events:
            self._call(callback, response_id, item_id)
        return frame

    def _take(self, events: list[tuple[PlayoutEvent, str, str]]) -> bytes | None:
        """The next 20 ms of queued mono audio (zero-padded at a response's end), or
        ``None`` for silence; counts it as played and notes the callbacks it makes due."""
        if self._queued < MONO_FRAME_BYTES:
            if not self._queue:
                return None
            tail = self._responses.get(self._queue[-1].response_id)
            if tail is not None and not tail.finished:
                return None  # an underrun: the rest of this frame may still come
        frame = bytearray()
        while self._queue and len(frame) < MONO_FRAME_BYTES:
            piece = self._queue[0]
            n = min(len(piece.data) - piece.offset, MONO_FRAME_BYTES - len(frame))
            frame += piece.data[piece.offset : piece.offset + n]
            piece.offset += n
            self._queued -= n
            if piece.offset == len(piece.data):
                self._queue.popleft()
            self._count(piece, n, events)
        if self._queued <= LEAD_SECONDS * SAMPLE_RATE * 2:
            self._room.set()
        return bytes(frame)

    def _count(self, piece: _Piece, n: int, events: list[tuple[PlayoutEvent, str, str]]) -> None:
        played = self._played
        played[piece.item_id] = played.get(piece.item_id, 0) + n // 2
        played.move_to_end(piece.item_id)
        while len(played) > MAX_ITEMS:
            played.popitem(last=False)
        response = self._responses.get(piece.response_id)
        if response is None:  # evicted by MAX_RESPONSES: plays on, with no callbacks
            return
        response.item_id = piece.item_id
        response.pending -= n
        if not response.started:
            response.started = True
            events.append((self._on_started, response.id, piece.item_id))
        if response.pending == 0 and response.finished:
            del self._responses[response.id]
            events.append((self._on_stopped, response.id, piece.item_id))

    def _forget_old_responses(self) -> None:
        """Keep :data:`MAX_RESPONSES`: the oldest ones with nothing queued go first (a
        response neither finished nor cleared, which a session does not leave)."""
        excess = len(self._responses) - MAX_RESPONSES
        for r in [r for r in self._responses.values() if r.pending == 0][:excess]:
            del self._responses[r.id]

    @staticmethod
    def _call(callback: PlayoutEvent, response_id: str, item_id: str) -> None:
        with surviving(log, "playout callback for %s", response_id):
            callback(response_id, item_id)


FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
#: How late a frame may be before the pacer stops catching up and skips ahead (a stalled
#: loop): the stream's clock then jumps, and no burst of stale frames goes out.
MAX_LATE_SECONDS = 0.2


class Pacer:
    """Takes a :class:`Playout`'s frames at real time, for a transport's send loop.

    :meth:`next` returns the next frame (``None``: silence) and its slot (the frame count,
    an RTP timestamp ÷ 960) when it is due: ``start + n × 20 ms`` on the loop clock from
    the first call. While silence is being sent, a write wakes it at once and the schedule
    restarts there, so the first frame of an answer goes out without waiting for the next
    slot (on average 10 ms sooner)."""

    def __init__(self, playout: Playout) -> None:
        self._playout = playout
        self._start: float | None = None
        self._frames = 0
        self._idle = True

    async def next(self) -> tuple[bytes | None, int]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._start is None:
            self._start = now
        due = self._start + self._frames * FRAME_SECONDS
        if now - due > MAX_LATE_SECONDS:
            self._frames += int((now - due) / FRAME_SECONDS)
        elif due > now:
            written = self._playout.written
            if self._idle and not written.is_set():
                # a timeout scope, not wait_for: no task is made for each idle frame
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - now):
                        await written.wait()
                        self._start = loop.time() - self._frames * FRAME_SECONDS
            else:
                await asyncio.sleep(due - now)
        self._playout.written.clear()
        slot = self._frames
        self._frames += 1
        frame = self._playout.take()
        self._idle = frame is None
        return frame, slot
