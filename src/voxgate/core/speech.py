"""Speech sessions: the unified protocol's TTS and STT behaviour over the engine ABCs.

The session speaks canonical events; its protocol (any translator with the methods of
:mod:`voxgate.core.speech_wire`: the unified protocol's, Deepgram's ``speak``/``listen``)
parses client frames into them and renders what happens.

A transport (``voxgate.transports.speech``) reads client frames, applies limits and
calls :meth:`handle` for each; the session answers through ``send``. Synthesis and
recognition run in their own tasks so a ``stop`` or ``ping`` is answered at once,
ahead of any audio still being produced (control ahead of data).

TTS: text accumulates in a :class:`SentenceBuffer`; each complete sentence is queued
for synthesis at once, ``flush`` queues the rest and an end marker (→ ``audio_end``).
``stop`` cancels the synthesis in progress, drops queued and buffered text and answers
``audio_end`` with ``interrupted: true``.

STT: audio is decoded from the declared encoding, resampled to the engine's rate and
queued to the recognition stream in order; the stream's events are rendered as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from voxgate.audio import AudioFormat, Encoding, StreamResampler, from_pcm16, to_pcm16
from voxgate.clock import IdFactory
from voxgate.core.parsing import parse
from voxgate.core.relay import RelaySession
from voxgate.core.speech_wire import Frames, STTWire, TTSWire, frames_of
from voxgate.core.text import SentenceBuffer
from voxgate.engines.base import (
    EngineError,
    Finalized,
    RecognitionFailed,
    RecognitionOptions,
    RecognitionStream,
    SpeechStarted,
    SpeechToText,
    SynthesisOptions,
    SynthesisStream,
    TextToSpeech,
    Transcript,
)
from voxgate.engines.workers import EngineWorkers, Priority
from voxgate.protocols.speech.unified import (
    Audio,
    Clear,
    Close,
    Configure,
    EndOfInput,
    Finalize,
    Flush,
    Init,
    InputText,
    MessageError,
    Ping,
    Start,
    Stop,
    STTEvent,
    TTSConfig,
    TTSEvent,
)

#: Engine audio up to this size (~2 s at 22 kHz) is converted on the event loop.
INLINE_CONVERT_BYTES = 96_000

log = logging.getLogger("voxgate.speech")

Send = Callable[[str | bytes], Awaitable[None]]


class SessionFailed(Exception):
    """The session cannot go on; the transport sends the error (already rendered) and closes."""

    def __init__(self, frame: str) -> None:
        super().__init__("speech session failed")
        self.frame = frame


def engine_error_frame(render: Callable[..., str], exc: EngineError) -> str:
    return render(exc.code, exc.public_message, retryable=exc.retryable)


class OutputConverter:
    """Engine PCM16 → the client's rate and encoding, with resampler state kept."""

    def __init__(self, from_rate: int, config: TTSConfig) -> None:
        self.config = config
        self.from_rate = from_rate
        self._resampler = StreamResampler(from_rate, config.sample_rate)
        self.fmt = AudioFormat(config.encoding, config.sample_rate)

    def convert(self, pcm: bytes) -> bytes:
        return from_pcm16(self._resampler.process(pcm), self.config.encoding)


@dataclass
class _Speak:
    text: str
    stream: SynthesisStream
    converter: OutputConverter


@dataclass
class _EndOfUtterance:
    utterance_id: str


@dataclass
class _Finish:
    """After an :class:`EndOfInput`: end the session once the jobs before are done."""


class TTSSession:
    def __init__(
        self,
        *,
        protocol: TTSWire,
        engine_name: str,
        get_engine: Callable[[], Awaitable[TextToSpeech]],
        counters: RelaySession,
        send: Send,
        workers: EngineWorkers,
        ids: IdFactory,
        api_key: str | None = None,
        finish: Callable[[], None] | None = None,
    ) -> None:
        self.protocol = protocol
        #: Ends the session normally (a protocol's close message); see :class:`Close`.
        self._finish = finish
        self.engine_name = engine_name
        self._api_key = api_key
        self._get_engine = get_engine
        self._counters = counters
        self._send = send
        self._workers = workers
        self._ids = ids
        self._engine: TextToSpeech | None = None
        self._stream: SynthesisStream | None = None
        self._converter: OutputConverter | None = None
        #: Streams replaced by ``configure`` that queued jobs still use.
        self._retired: list[SynthesisStream] = []
        #: Jobs queued or running per stream (by ``id``), so a retired one is closed
        #: once its last job is done.
        self._queued: dict[int, int] = {}
        self._buffer = SentenceBuffer()
        self._jobs: asyncio.Queue[_Speak | _EndOfUtterance | _Finish] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._utterance = 0
        self._utterance_ms = 0.0
        self.audio_ms = 0.0

    @property
    def utterance_id(self) -> str:
        return f"{self.protocol.context_id}:{self._utterance}"

    async def handle(self, data: str | bytes) -> None:
        # MessageError propagates to the transport
        parsed = await parse(self.protocol.receive, data)
        for event in parsed if isinstance(parsed, tuple) else (parsed,):
            await self.handle_event(event)

    async def _emit(self, rendered: Frames) -> None:
        for frame in frames_of(rendered):
            await self._send(frame)

    async def handle_event(self, event: TTSEvent) -> None:
        """Act on one event: a client frame's, or one the protocol implies (a Deepgram
        client's ``Init`` comes from its query string, before any frame)."""
        p = self.protocol
        if isinstance(event, Ping):
            await self._emit(p.pong())
        elif isinstance(event, Close):
            if self._finish is not None:
                self._finish()
        elif isinstance(event, EndOfInput):
            await self.handle_event(Flush())
            self._jobs.put_nowait(_Finish())
        elif isinstance(event, Init):
            await self._init(event)
        elif isinstance(event, InputText):
            if len(self._buffer) + len(event.text) > p.max_text_chars * 4:
                # refused whole: nothing of it is buffered or counted
                raise MessageError(
                    "text_too_long",
                    f"too much text buffered without a sentence end (limit "
                    f"{p.max_text_chars * 4} characters): send flush",
                )
            self._counters.characters += len(event.text)
            self._buffer.add(event.text)
            sentences = self._buffer.take_sentences()
            if sentences:
                self._queue_text(sentences)
        elif isinstance(event, Flush):
            rest = self._buffer.take_all()
            if rest:
                self._queue_text(rest)
            self._jobs.put_nowait(_EndOfUtterance(self.utterance_id))
            self._utterance += 1
        elif isinstance(event, Stop):
            await self._stop()
        elif isinstance(event, Clear):
            self._buffer.clear()
            await self._emit(p.cleared())
        elif isinstance(event, Configure):
            await self._configure(event)

    async def _open(self, config: TTSConfig) -> tuple[SynthesisStream, OutputConverter, TTSConfig]:
        """A stream for ``config``, and ``config`` with the voice the engine chose."""
        if self._engine is None:
            self._engine = await self._get_engine()
        stream = await self._engine.open(
            SynthesisOptions(
                voice=config.voice_id,
                language=config.language,
                speed=config.speed,
                sample_rate=config.sample_rate,
                extra=config.extra,
                api_key=self._api_key,
            )
        )
        if stream.voice:  # the voice in use: a catalogue name resolves to the engine's
            config = replace(config, voice_id=stream.voice)
        return stream, OutputConverter(stream.sample_rate, config), config

    async def _init(self, event: Init) -> None:
        stream, converter, config = await self._open(event.config)
        self.protocol.start(event.context_id or self._ids("ctx"), config)
        self._stream, self._converter = stream, converter
        assert self._engine is not None
        caps = self._engine.capabilities
        await self._emit(
            self.protocol.ready(
                self._counters.info.session_id,
                {
                    "engine": self.engine_name,
                    "streaming_text": True,
                    "native_streaming": caps.streaming_text,
                    "voices": [v.id for v in caps.voices],
                    "encodings": [e.value for e in Encoding],
                    "sample_rates": list(caps.sample_rates),
                    "speed": caps.speed,
                    "speed_range": list(caps.speed_range) if caps.speed_range else None,
                    "local": caps.local,
                    "binary": True,
                },
            )
        )
        self._worker = asyncio.create_task(self._synthesize_jobs(), name="tts-synthesis")

    async def _configure(self, event: Configure) -> None:
        old = self._stream
        stream, converter, config = await self._open(event.config)
        self._stream, self._converter = stream, converter
        self.protocol.reconfigure(config)
        if old is not None and old is not stream:
            # queued jobs keep the stream they were queued with; it is closed after the
            # last of them (at once if none is queued)
            if id(old) in self._queued:
                self._retired.append(old)
            else:
                with contextlib.suppress(Exception):
                    await old.aclose()
        await self._emit(self.protocol.configured())

    def _queue_text(self, text: str) -> None:
        assert self._stream is not None
        assert self._converter is not None
        stream = self._stream
        self._queued[id(stream)] = self._queued.get(id(stream), 0) + 1
        self._jobs.put_nowait(_Speak(text, stream, self._converter))

    async def _stop(self) -> None:
        self._buffer.clear()
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if isinstance(job, _Speak):
                await self._release(job.stream)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = asyncio.create_task(self._synthesize_jobs(), name="tts-synthesis")
        await self._emit(
            self.protocol.audio_end(self.utterance_id, self._utterance_ms, interrupted=True)
        )
        self._utterance += 1
        self._utterance_ms = 0.0

    async def _synthesize_jobs(self) -> None:
        """Speak queued jobs in order. A job that fails ends with an ``error``; the
        utterance still gets its ``audio_end`` and later jobs are spoken."""
        p = self.protocol
        while True:
            job = await self._jobs.get()
            if isinstance(job, _EndOfUtterance):
                await self._emit(
                    p.audio_end(job.utterance_id, self._utterance_ms, interrupted=False)
                )
                self._utterance_ms = 0.0
                continue
            if isinstance(job, _Finish):
                if self._finish is not None:
                    self._finish()
                continue
            try:
                await self._speak(job)
            except EngineError as exc:
                log.warning("synthesis failed: %s", exc)
                await self._send(engine_error_frame(p.error, exc))
            except Exception as exc:  # an engine's own bug: this job fails, the session goes on
                log.exception("synthesis failed")
                await self._send(
                    p.error("internal_error", f"synthesis failed ({type(exc).__name__})")
                )
            finally:
                await self._release(job.stream)

    async def _speak(self, job: _Speak) -> None:
        p = self.protocol
        async for pcm in job.stream.synthesize(job.text):
            # a clause's conversion takes well under a millisecond: done here, it never
            # waits in the engine queue behind other sessions' synthesis
            if len(pcm) <= INLINE_CONVERT_BYTES:
                out = job.converter.convert(pcm)
            else:
                out = await self._workers.run(job.converter.convert, pcm, priority=Priority.URGENT)
            if not out:
                continue
            ms = job.converter.fmt.duration_ms(len(out))
            self._utterance_ms += ms
            self.audio_ms += ms
            self._counters.audio_seconds += ms / 1000.0
            await self._emit(p.audio_chunk(out, ms))

    async def _release(self, stream: SynthesisStream) -> None:
        """One queued job of ``stream`` is done: close it if it was retired and unused."""
        left = self._queued[id(stream)] = self._queued.get(id(stream), 1) - 1
        if left <= 0:
            del self._queued[id(stream)]
            if any(s is stream for s in self._retired):
                self._retired = [s for s in self._retired if s is not stream]
                with contextlib.suppress(Exception):
                    await stream.aclose()

    async def close(self) -> None:
        # the cancelled task keeps its frame (self) through its exception: let it go
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        streams = {id(s): s for s in [self._stream, *self._retired] if s is not None}
        for stream in streams.values():
            with contextlib.suppress(Exception):
                await stream.aclose()

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        return self.protocol.error(code, message, retryable=retryable)

    def ended(self, reason: str) -> str | None:
        return self.protocol.session_ended(
            reason, characters=self._counters.characters, audio_ms=self.audio_ms
        )


class STTSession:
    def __init__(
        self,
        *,
        protocol: STTWire,
        get_engine: Callable[[], Awaitable[SpeechToText]],
        counters: RelaySession,
        send: Send,
        workers: EngineWorkers,
        ids: IdFactory,
        fail: Callable[[str], None],
        api_key: str | None = None,
        finish: Callable[[], None] | None = None,
    ) -> None:
        self._api_key = api_key
        #: Ends the session normally once a :class:`Close` is answered.
        self._finish = finish
        self._finalizes = 0
        self._finalized = 0
        self._close_after: int | None = None
        self.protocol = protocol
        self._get_engine = get_engine
        self._counters = counters
        self._send = send
        self._workers = workers
        self._ids = ids
        self._fail = fail
        self._stream: RecognitionStream | None = None
        self._resampler: StreamResampler | None = None
        self._reader: asyncio.Task[None] | None = None
        self._encoding = Encoding.PCM16
        self._rate = 16000

    async def handle(self, data: str | bytes) -> None:
        await self.handle_event(await parse(self.protocol.receive, data))

    async def _emit(self, rendered: Frames) -> None:
        for frame in frames_of(rendered):
            await self._send(frame)

    async def handle_event(self, event: STTEvent) -> None:
        """Act on one event: a client frame's, or one the protocol implies (a Deepgram
        client's ``Start`` comes from its query string, before any frame)."""
        p = self.protocol
        if isinstance(event, Ping):
            await self._emit(p.pong())
        elif isinstance(event, Start):
            engine = await self._get_engine()
            c = event.config
            self._stream = await engine.open(
                RecognitionOptions(
                    language=c.language,
                    interim_results=c.interim_results,
                    extra=c.extra,
                    api_key=self._api_key,
                )
            )
            self._encoding, self._rate = c.encoding, c.sample_rate
            self._resampler = StreamResampler(c.sample_rate, self._stream.sample_rate)
            p.start(self._ids("ctx"), c)
            await self._emit(p.ready(engine.model_id))
            self._reader = asyncio.create_task(self._read_events(), name="stt-events")
        elif isinstance(event, Audio):
            await self._audio(event.data)
        elif isinstance(event, Finalize):
            await self._finalize()
        elif isinstance(event, Close):
            # answer what is buffered, then end once that answer is sent (_read_events);
            # set first: the answer may come before _finalize returns
            self._close_after = self._finalizes + 1
            await self._finalize()

    async def _finalize(self) -> None:
        assert self._stream is not None
        assert self._resampler is not None
        # push out what the resampler's filter still holds, then start it afresh
        tail = self._resampler.flush()
        self._resampler = StreamResampler(self._rate, self._stream.sample_rate)
        if tail:
            await self._stream.send(tail)
        self._finalizes += 1
        await self._stream.finalize()

    async def _audio(self, data: bytes) -> None:
        assert self._stream is not None
        assert self._resampler is not None
        pcm = to_pcm16(data, self._encoding)
        self._counters.audio_seconds += len(pcm) / (2 * self._rate)
        resampler = self._resampler
        if resampler.from_rate != resampler.to_rate:
            pcm = await self._workers.run(resampler.process, pcm)
        if pcm:
            await self._stream.send(pcm)

    async def _read_events(self) -> None:
        assert self._stream is not None
        p = self.protocol
        async for ev in self._stream.events():
            if isinstance(ev, SpeechStarted):
                await self._emit(p.speech_started(ev.timestamp))
            elif isinstance(ev, Transcript):
                await self._emit(
                    p.transcript(
                        ev.text,
                        is_final=ev.is_final,
                        confidence=ev.confidence,
                        timestamp=ev.timestamp,
                    )
                )
            elif isinstance(ev, Finalized):
                # the duration the client sent, exact whatever the engine's rate
                seconds = round(self._counters.audio_seconds, 3)
                await self._emit(p.final_transcript(ev.text, seconds, ev.timestamp))
                self._finalized += 1
                if self._close_after is not None and self._finalized >= self._close_after:
                    if self._finish is not None:
                        self._finish()
                    return
            elif isinstance(ev, RecognitionFailed):
                self._fail(engine_error_frame(p.error, ev.error))
                return

    async def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()
        # the cancelled task keeps its frame (self) through its exception: let it go
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        return self.protocol.error(code, message, retryable=retryable)

    def ended(self, reason: str) -> str | None:
        return self.protocol.session_ended(reason, audio_seconds=self._counters.audio_seconds)
