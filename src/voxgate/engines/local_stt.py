"""The recognition stream shared by local engines: VAD segmentation + an utterance decoder.

A local engine supplies an :class:`UtteranceDecoder` (synchronous: it runs in an engine
worker thread). :class:`LocalRecognitionStream` owns the asyncio side: a bounded
backlog of audio, one consumer task that hands batches to a worker, and the event queue.
Audio is processed strictly in order; ``finalize`` is queued behind the audio before it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from voxgate.engines.base import (
    EngineError,
    Finalized,
    RecognitionEvent,
    RecognitionFailed,
    RecognitionStream,
    SpeechStarted,
    Transcript,
)
from voxgate.engines.vad import (
    Segmenter,
    UtteranceAudio,
    UtteranceEnd,
    UtterancePause,
    UtteranceResumed,
    UtteranceStart,
)
from voxgate.engines.workers import EngineWorkers, Priority

log = logging.getLogger("voxgate.engines")


class UtteranceDecoder(ABC):
    """Decodes one utterance at a time. Called from one worker thread at a time."""

    @abstractmethod
    def begin(self) -> None: ...

    @abstractmethod
    def add(self, pcm: bytes) -> str | None:
        """Take audio; returns a new partial hypothesis, or ``None`` if there is none."""

    def add_last(self, pcm: bytes) -> str | None:
        """Take the audio the utterance ends with (its end, a finalize or a :meth:`pause`
        follows at once). A partial is hardly wanted: a decoder whose partials cost a
        decode of their own skips it and returns ``None``; by default this is :meth:`add`."""
        return self.add(pcm)

    def pause(self) -> str | None:
        """The utterance has fallen silent and may end here. A decoder whose :meth:`end`
        costs a decode of the whole utterance may decode it now (while the silence that
        ends it comes in), return that text as a partial, and give it again at
        :meth:`end` unless :meth:`resume` came between. By default nothing."""
        return None

    def resume(self) -> None:  # noqa: B027 - most decoders hold nothing
        """Speech again after :meth:`pause`: what it decoded is not the utterance."""

    @abstractmethod
    def end(self) -> tuple[str, float]:
        """Finish the utterance: its text and a confidence in [0, 1]."""

    def close(self) -> None:  # noqa: B027 - most decoders hold nothing
        """Give back what the decoder holds (a pooled native decoder)."""


class RecognitionCore:
    """The synchronous part: segment, decode, turn results into events."""

    def __init__(
        self, segmenter: Segmenter, decoder: UtteranceDecoder, *, interim: bool, sample_rate: int
    ) -> None:
        self.segmenter = segmenter
        self.decoder = decoder
        self.interim = interim
        self.sample_rate = sample_rate
        self.samples = 0
        self._utterance_at = 0.0
        self._last_partial = ""
        self._finals: list[str] = []
        # A cancelled stream's last feed may still be running in a worker thread when
        # close() is called from another: native decoders crash if both touch them.
        self._lock = threading.Lock()

    def feed(self, pcm: bytes, *, last: bool = False) -> list[RecognitionEvent]:
        """Events for ``pcm``; ``last``: a :meth:`finalize` follows at once."""
        with self._lock:
            return self._feed(pcm, last)

    def close(self) -> None:
        """Give the decoder back, after any feed still running in another thread."""
        with self._lock:
            self.decoder.close()

    def _feed(self, pcm: bytes, last: bool) -> list[RecognitionEvent]:
        self.samples += len(pcm) // 2
        out: list[RecognitionEvent] = []
        # an utterance's consecutive frames go to the decoder in one call: one partial
        # per chunk fed, and one call into a decoder process instead of one per frame
        audio: list[bytes] = []
        for seg in self.segmenter.push(pcm):
            if isinstance(seg, UtteranceAudio):
                audio.append(seg.audio)
                continue
            if isinstance(seg, UtterancePause):
                self._add(audio, out, last=True)  # the pause's decode reads it all
                self._partial(self.decoder.pause(), out)
                continue
            if isinstance(seg, UtteranceResumed):
                self.decoder.resume()
                continue
            self._add(audio, out, last=isinstance(seg, UtteranceEnd))
            if isinstance(seg, UtteranceStart):
                self.decoder.begin()
                self._utterance_at = seg.timestamp
                self._last_partial = ""
                out.append(SpeechStarted(seg.timestamp))
                audio.append(seg.audio)
            elif isinstance(seg, UtteranceEnd):
                self._final(out)
        self._add(audio, out, last=last)
        return out

    def _add(self, audio: list[bytes], out: list[RecognitionEvent], *, last: bool) -> None:
        if audio:
            pcm = b"".join(audio)
            self._partial(self.decoder.add_last(pcm) if last else self.decoder.add(pcm), out)
            audio.clear()

    def finalize(self) -> list[RecognitionEvent]:
        with self._lock:
            return self._finalize()

    def _finalize(self) -> list[RecognitionEvent]:
        out: list[RecognitionEvent] = []
        if self.segmenter.end() is not None:
            self._final(out)
        seconds = round(self.samples / self.sample_rate, 3)
        out.append(Finalized(" ".join(self._finals), seconds, self._utterance_at))
        self._finals.clear()
        return out

    def _partial(self, text: str | None, out: list[RecognitionEvent]) -> None:
        if self.interim and text and text != self._last_partial:
            self._last_partial = text
            out.append(Transcript(text, False, 0.0, self._utterance_at))

    def _final(self, out: list[RecognitionEvent]) -> None:
        text, confidence = self.decoder.end()
        if text:
            self._finals.append(text)
            out.append(Transcript(text, True, round(confidence, 3), self._utterance_at))


@dataclass(frozen=True)
class _Finalize:
    pass


_FINALIZE = _Finalize()


class LocalRecognitionStream(RecognitionStream):
    def __init__(
        self, workers: EngineWorkers, core: RecognitionCore, *, backlog_chunks: int = 256
    ) -> None:
        self.sample_rate = core.sample_rate
        self._workers = workers
        self._core = core
        self._input: asyncio.Queue[bytes | _Finalize] = asyncio.Queue(backlog_chunks)
        self._events: asyncio.Queue[RecognitionEvent | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="stt-local")

    async def send(self, pcm: bytes) -> None:
        await self._input.put(pcm)

    async def finalize(self) -> None:
        await self._input.put(_FINALIZE)

    async def events(self) -> AsyncIterator[RecognitionEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._workers.run(self._core.close)
        finally:
            self._events.put_nowait(None)

    async def _run(self) -> None:
        core, workers = self._core, self._workers
        try:
            while True:
                item: bytes | _Finalize = await self._input.get()
                # take everything already queued at once, up to and including a finalize
                batch: list[bytes] = []
                while isinstance(item, bytes):
                    batch.append(item)
                    if self._input.empty():
                        break
                    item = self._input.get_nowait()
                # a feed's partials are NORMAL work (the final of an utterance that ends
                # inside one marks itself urgent: ``workers.urgent()``); the client waits
                # for a finalize's answer: it and the audio just before it go first
                last = isinstance(item, _Finalize)
                priority = Priority.URGENT if last else Priority.NORMAL
                events = []
                if batch:
                    pcm = b"".join(batch)
                    events = await workers.run(core.feed, pcm, last=last, priority=priority)
                if last:
                    events += await workers.run(core.finalize, priority=Priority.URGENT)
                for event in events:
                    self._events.put_nowait(event)
        except EngineError as exc:
            self._events.put_nowait(RecognitionFailed(exc))
        except Exception as exc:
            log.exception("recognition failed")
            self._events.put_nowait(RecognitionFailed(EngineError(f"recognition failed: {exc}")))
