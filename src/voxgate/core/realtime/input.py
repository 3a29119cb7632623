"""The input pipeline: the one owner of a session's input audio, VAD and turn detector.

Everything that touches the input buffer, the resampler, the VAD or the
:class:`~voxgate.core.realtime.turns.TurnDetector` goes through one queue and one task:
audio, commits and clears, and also the changes other parts ask for (a new turn
detection config or input rate, arming the idle timer after an answer, the transcript so
far for semantic VAD). So the analysis of a large chunk may run in a worker thread
while nothing else changes the detector under it.

Audio is PCM16 at the pipeline's rate. It is kept in the input buffer, resampled to
16 kHz, scored by the VAD and fed to the detector and to the transcriber's recognition
stream. Turn events go to the :class:`InputHost` (the voice session), which emits them,
interrupts an answer and commits the turn. A step that fails is told to the client as an
``error`` and the pipeline goes on (that step's audio or command is lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from voxgate.audio import AudioFormat, Encoding, StreamResampler
from voxgate.clock import IdFactory
from voxgate.core.realtime.transcriber import VAD_RATE, Transcriber
from voxgate.core.realtime.turns import (
    IdleTimeout,
    State,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnStarted,
)
from voxgate.core.relay import RelaySession
from voxgate.engines.base import EngineError, VoiceActivity
from voxgate.engines.workers import EngineWorkers
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.session import TurnDetection

log = logging.getLogger("voxgate.realtime")

#: Appends larger than this are scored by the VAD in a worker, not on the event loop.
INLINE_VAD_BYTES = 16000 * 2
MIN_COMMIT_MS = 100
#: The most audio the input buffer holds: without turn detection more is refused
#: (``input_audio_buffer_full``); with it, a turn that lasts longer ends there.
MAX_INPUT_BUFFER_SECONDS = 300
#: Between turns, audio kept beyond ``prefix_padding_ms`` (a turn starts a little after
#: its first speech frame).
IDLE_KEEP_MS = 1000
#: The detector of a session without turn detection is never fed; it needs a config.
NO_TURNS = TurnDetection()


class InputHost(Protocol):
    """What the pipeline asks of the session it belongs to."""

    async def emit(self, event: ev.Event) -> None: ...

    async def barge_in(self) -> None:
        """The user started speaking: interrupt the answer (before speech_started)."""

    async def committed(self, item_id: str) -> None:
        """The buffer was committed as the user item ``item_id``."""

    async def turn_ended(self) -> None:
        """A turn (or an idle timeout) ended and was committed: answer it if configured."""


@dataclass(frozen=True, slots=True)
class _Command:
    kind: str  # commit | clear | rate | detection
    event_id: str | None = None
    value: object = None


class InputPipeline:
    """Call the commands from the session's task; :meth:`run` is the pipeline's task."""

    def __init__(
        self,
        *,
        host: InputHost,
        transcriber: Transcriber,
        make_vad: Callable[[], VoiceActivity],
        workers: EngineWorkers,
        counters: RelaySession,
        ids: IdFactory,
        rate: int,
        turn_detection: TurnDetection | None,
    ) -> None:
        self._host = host
        self._transcriber = transcriber
        self._make_vad = make_vad
        self._workers = workers
        self._counters = counters
        self._ids = ids
        self.rate = rate
        self.turn_detection = turn_detection
        self.detector = TurnDetector(turn_detection or NO_TURNS, frame_ms=32.0)
        self._vad: VoiceActivity | None = None
        self._queue: asyncio.Queue[bytes | _Command] = asyncio.Queue(256)
        self._buffer = bytearray()
        self._buffer_start_ms = 0.0
        self._position_ms = 0.0
        self._vad_pending = b""
        self._resampler = StreamResampler(rate, VAD_RATE)
        self._speech_item: str | None = None
        #: The transcript so far, for semantic VAD: set by the transcriber, taken by a step.
        self._transcript: str | None = None
        #: Asked of the idle timer: arm after this much answer audio, or ``False``: disarm.
        self._idle: float | bool | None = None

    # -- commands (queued, taken in order) ----------------------------------------------

    async def feed(self, pcm: bytes) -> None:
        """PCM16 at :attr:`rate`; waits while the queue is full (the client's backpressure)."""
        if pcm:
            await self._queue.put(pcm)

    async def commit(self, event_id: str | None = None) -> None:
        await self._queue.put(_Command("commit", event_id))

    async def clear(self, event_id: str | None = None) -> None:
        await self._queue.put(_Command("clear", event_id))

    async def set_rate(self, rate: int) -> None:
        """A new input format: the buffer is cleared (its audio had the old rate)."""
        await self._queue.put(_Command("rate", value=rate))

    async def set_turn_detection(self, td: TurnDetection | None) -> None:
        await self._queue.put(_Command("detection", value=td))

    def arm_idle(self, answer_audio_ms: float) -> None:
        """An answer has finished: server VAD's idle timer starts after its audio (at the
        next step; never waits, so a closing response can call it)."""
        self._idle = answer_audio_ms

    def disarm_idle(self) -> None:
        """An answer has started: no idle timeout while it runs (at the next step)."""
        self._idle = False

    def set_transcript(self, text: str) -> None:
        """The transcript of the turn so far (semantic VAD reads it at the next step)."""
        self._transcript = text

    def _apply_pending(self) -> None:
        """What other parts asked of the detector since the last step: applied here, in
        the pipeline's task, never while a worker analyses."""
        if self._transcript is not None:
            self.detector.set_transcript(self._transcript)
            self._transcript = None
        if self._idle is False:
            self.detector.disarm_idle()
        elif self._idle is not None:
            self.detector.arm_idle(self._idle)
        self._idle = None

    @property
    def buffer_ms(self) -> float:
        """Milliseconds of audio in the input buffer (not yet committed or dropped)."""
        return len(self._buffer) * 1000 / (2 * self.rate)

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            batch: list[bytes] = []
            while isinstance(item, bytes):
                batch.append(item)
                if self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._step(self._take_audio(b"".join(batch)))
            if isinstance(item, _Command):
                await self._step(self._command(item))

    async def _step(self, step: Awaitable[None]) -> None:
        """One step; its failure is told to the client and the pipeline goes on."""
        self._apply_pending()
        try:
            await step
        except ClientEventError as exc:
            await self._host.emit(ev.Error.refusal(exc))
        except EngineError as exc:
            await self._host.emit(ev.Error.of(exc.code, exc.public_message))
        except Exception as exc:  # a bug: this step is lost, the session's input goes on
            log.exception("realtime input pipeline failed")
            message = f"input lost ({type(exc).__name__})"
            await self._host.emit(ev.Error.of("internal_error", message))

    async def _command(self, c: _Command) -> None:
        if c.kind == "commit":
            ms = AudioFormat(Encoding.PCM16, self.rate).duration_ms(len(self._buffer))
            if ms < MIN_COMMIT_MS:
                raise ClientEventError(
                    "input_audio_buffer_commit_empty",
                    f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, "
                    f"have {ms:.0f} ms",
                    event_id=c.event_id,
                )
            item_id = self._speech_item or self._ids("item")
            self.detector.reset()
            await self._commit(item_id)
        elif c.kind == "clear":
            self._clear_buffer()
            self._speech_item = None
            self.detector.reset()
            await self._host.emit(ev.InputCleared())
        elif c.kind == "rate":
            assert isinstance(c.value, int)
            self._clear_buffer()
            self.rate = c.value
            self._resampler = StreamResampler(self.rate, VAD_RATE)
            self._vad_pending = b""
        elif c.kind == "detection":
            assert c.value is None or isinstance(c.value, TurnDetection)
            self.turn_detection = c.value
            self.detector.reconfigure(c.value or NO_TURNS)

    def _clear_buffer(self) -> None:
        self._buffer.clear()
        self._buffer_start_ms = self._position_ms

    async def _take_audio(self, pcm: bytes) -> None:
        ms = len(pcm) * 1000 / (2 * self.rate)
        cap = MAX_INPUT_BUFFER_SECONDS * self.rate * 2
        if self.turn_detection is None and len(self._buffer) + len(pcm) > cap:
            raise ClientEventError(
                "input_audio_buffer_full",
                f"the input audio buffer holds at most {MAX_INPUT_BUFFER_SECONDS} s of audio: "
                "commit or clear it (this audio was not added)",
                param="audio",
            )
        self._buffer += pcm
        self._position_ms += ms
        self._counters.audio_seconds += ms / 1000
        if len(pcm) > INLINE_VAD_BYTES:
            pcm16k, events = await self._workers.run(self._analyse, pcm)
        else:
            pcm16k, events = self._analyse(pcm)  # a few frames: microseconds of VAD
        stream = await self._transcriber.stream()
        sent = 0
        for offset, event in events:
            if offset > sent:
                await stream.send(pcm16k[sent:offset])
                sent = offset
            await self._turn(event)
        if sent < len(pcm16k):
            await stream.send(pcm16k[sent:])
        if self.turn_detection is not None:
            await self._bound_buffer(cap)

    async def _bound_buffer(self, cap: int) -> None:
        """With turn detection, the buffer holds a turn: between turns only the audio a
        turn's start may reach back to is kept, and a turn that outlasts the cap ends."""
        if self.detector.state is State.SPEAKING:
            if len(self._buffer) > cap:
                self.detector.reset()
                await self._turn(TurnEnded(round(self._position_ms)))
            return
        fmt = AudioFormat(Encoding.PCM16, self.rate)
        td = self.turn_detection or NO_TURNS
        keep = fmt.bytes_for(td.prefix_padding_ms + IDLE_KEEP_MS)
        if len(self._buffer) > 2 * keep:
            drop = len(self._buffer) - keep
            del self._buffer[:drop]
            self._buffer_start_ms += fmt.duration_ms(drop)

    def _analyse(self, pcm: bytes) -> tuple[bytes, list[tuple[int, TurnEvent]]]:
        """Resample to 16 kHz and score the VAD; each turn event with its byte offset.
        Runs in a worker for large chunks: it touches only what the pipeline owns."""
        pcm16k = self._resampler.process(pcm) if self._resampler.from_rate != VAD_RATE else pcm
        if self.turn_detection is None:
            return pcm16k, []
        if self._vad is None:
            self._vad = self._make_vad()
        vad = self._vad
        data = self._vad_pending + pcm16k
        size = vad.frame_bytes
        end = len(data) - len(data) % size
        self._vad_pending = data[end:]
        lead = len(data) - len(pcm16k)  # bytes of the data that came before this chunk
        events: list[tuple[int, TurnEvent]] = []
        self.detector.frame_ms = 1000 * vad.frame_samples / vad.sample_rate
        for i in range(0, end, size):
            for event in self.detector.frame(vad.score(data[i : i + size])):
                events.append((max(0, i + size - lead), event))
        return pcm16k, events

    async def _turn(self, event: TurnEvent) -> None:
        host = self._host
        if isinstance(event, TurnStarted):
            drop = event.audio_start_ms - self._buffer_start_ms
            if drop > 0:
                nbytes = AudioFormat(Encoding.PCM16, self.rate).bytes_for(drop)
                del self._buffer[:nbytes]
                self._buffer_start_ms = event.audio_start_ms
            self._speech_item = self._ids("item")
            td = self.turn_detection
            if td is not None and td.interrupt_response:
                await host.barge_in()  # before anything else
            await host.emit(ev.SpeechStarted(event.audio_start_ms, self._speech_item))
        elif isinstance(event, TurnEnded):
            item_id = self._speech_item or self._ids("item")
            await host.emit(ev.SpeechStopped(event.audio_end_ms, item_id))
            await self._commit(item_id)
            td = self.turn_detection
            if td is not None and td.create_response:
                await host.turn_ended()
        elif isinstance(event, IdleTimeout):
            item_id = self._ids("item")
            await host.emit(ev.InputTimeout(event.audio_start_ms, event.audio_end_ms, item_id))
            await self._commit(item_id)
            await host.turn_ended()

    async def _commit(self, item_id: str) -> None:
        self._speech_item = None
        self._clear_buffer()
        await self._host.committed(item_id)
