"""The transcriber: a session's recognition stream and the transcript of each user item.

One recognition stream hears the input pipeline's 16 kHz audio; each commit asks it for
the transcript of what it heard since the last one, and transcripts come back in commit
order. Items the client creates with audio of their own are transcribed one at a time on
streams of their own. A response waits (:meth:`Transcriber.wait_for`) for the
transcripts of the items it reads. Partial transcripts go to ``on_partial`` (semantic
VAD reads them).

When the session changes engines, the current stream is retired: closed once every item
committed to it has its transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from voxgate.audio import StreamResampler, to_pcm16
from voxgate.core.realtime.deps import AgentDeps
from voxgate.engines.base import (
    EngineError,
    Finalized,
    RecognitionFailed,
    RecognitionOptions,
    RecognitionStream,
    Transcript,
)
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.session import SessionConfig

#: The most audio of client items that may wait for its transcription in one session.
MAX_PENDING_ITEM_AUDIO = 16 * 2**20
#: The rate of the audio the input pipeline hears, scores and feeds to recognition.
VAD_RATE = 16000

Emit = Callable[[ev.Event], Awaitable[None]]


class _Recognizer:
    """One recognition stream; transcripts come back in commit order."""

    def __init__(self, owner: Transcriber, stream: RecognitionStream) -> None:
        self.owner = owner
        self.stream = stream
        self.pending: deque[str] = deque()
        self.finals: list[str] = []
        #: Set while no committed item waits for its transcript from this stream.
        self.drained = asyncio.Event()
        self.drained.set()
        # held only while it runs: a finished task keeps its frame (self) through its
        # exception, and holding it would make a cycle that outlives the session
        self._reader: asyncio.Task[None] | None = asyncio.create_task(
            self._read(), name="realtime-stt"
        )
        self._reader.add_done_callback(self._reader_done)

    def _reader_done(self, _task: asyncio.Task[None]) -> None:
        self._reader = None
        self.drained.set()  # nothing more will come

    async def finalize(self, item_id: str) -> None:
        self.pending.append(item_id)
        self.drained.clear()
        await self.stream.finalize()

    async def _read(self) -> None:
        t = self.owner
        async for event in self.stream.events():
            if isinstance(event, Transcript):
                if event.is_final:
                    self.finals.append(event.text)
                # the words so far as the item's transcript will have them (a final's
                # partial is that transcript: a trailing space would make it another text)
                heard = self.finals if event.is_final else [*self.finals, event.text]
                t.on_partial(" ".join(heard))
            elif isinstance(event, Finalized):
                self.finals.clear()
                if self.pending:
                    item_id = self.pending.popleft()
                    await t.transcribed(item_id, event.text, event.audio_duration_seconds)
                if not self.pending:
                    self.drained.set()
            elif isinstance(event, RecognitionFailed):
                while self.pending:
                    await t.failed(self.pending.popleft(), event.error)
                return

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.aclose()
        if self._reader is not None:
            reader = self._reader
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


class Transcriber:
    def __init__(
        self,
        *,
        deps: AgentDeps,
        config: Callable[[], SessionConfig],
        items: Callable[[str], Item | None],
        emit: Emit,
        spawn: Callable[[Awaitable[None]], None],
        on_partial: Callable[[str], None],
    ) -> None:
        self._deps = deps
        self._config = config
        self._items = items
        self._emit = emit
        self._spawn = spawn
        self.on_partial = on_partial
        self._recognizer: _Recognizer | None = None
        self._retired: list[_Recognizer] = []
        self._transcripts: dict[str, asyncio.Future[str]] = {}
        self._one_item_at_a_time = asyncio.Lock()
        self._pending_item_audio = 0

    # -- the session's stream -----------------------------------------------------------

    async def stream(self) -> RecognitionStream:
        """The stream that hears the input pipeline (opened on first use), at 16 kHz."""
        if self._recognizer is None:
            c = self._config()
            stt = await self._deps.get_stt(self._deps.stt_name(c))
            lang = c.transcription.language if c.transcription else None
            key = self._deps.engine_key(stt.name)
            stream = await stt.open(
                RecognitionOptions(language=lang, interim_results=True, api_key=key)
            )
            self._recognizer = _Recognizer(self, stream)
            if stream.sample_rate != VAD_RATE:
                raise EngineError(
                    f"{stt.name} takes {stream.sample_rate} Hz; the agent feeds 16 kHz"
                )
        return self._recognizer.stream

    async def finalize(self, item_id: str) -> None:
        """``item_id`` was committed (and :meth:`expect` called for it before the client was
        told): its transcript is what the stream heard since the last commit."""
        await self.stream()
        assert self._recognizer is not None
        await self._recognizer.finalize(item_id)

    def retire(self) -> None:
        """The session changed engines: the next audio opens a new stream; the current one
        is closed once the items committed to it have their transcripts (switching back and
        forth must not pile up open streams)."""
        rec, self._recognizer = self._recognizer, None
        if rec is None:
            return
        self._retired.append(rec)

        async def close_when_drained() -> None:
            await rec.drained.wait()
            await rec.aclose()
            self._retired.remove(rec)

        self._spawn(close_when_drained())

    # -- transcripts ---------------------------------------------------------------------

    def expect(self, item_id: str) -> None:
        """A transcript of ``item_id`` will come: responses that read the item wait for it."""
        self._transcripts[item_id] = asyncio.get_running_loop().create_future()

    async def wait_for(self, items: list[Item]) -> None:
        """Until the pending transcripts of ``items`` are known (or failed)."""
        waiting = [f for i in items if (f := self._transcripts.get(i.id)) is not None]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    async def transcribed(self, item_id: str, text: str, seconds: float) -> None:
        """A committed item's transcript is known: fill it in and tell the client."""
        future = self._transcripts.pop(item_id, None)
        item = self._items(item_id)
        if item is not None:
            for part in item.content:
                if part.type == "input_audio" and part.transcript is None:
                    part.transcript = text
                    break
        if self._config().transcription is not None:
            if text:
                await self._emit(ev.TranscriptionDelta(item_id, 0, text))
            await self._emit(ev.TranscriptionCompleted(item_id, 0, text, seconds))
        if future is not None and not future.done():
            future.set_result(text)

    async def failed(self, item_id: str, error: EngineError) -> None:
        future = self._transcripts.pop(item_id, None)
        await self._emit(ev.TranscriptionFailed(item_id, 0, error.code, error.public_message))
        if future is not None and not future.done():
            future.set_result("")

    # -- audio the client put in items ------------------------------------------------------

    def reserve(self, item: Item) -> ContentPart | None:
        """The part of ``item`` whose audio needs transcribing, its size reserved against
        :data:`MAX_PENDING_ITEM_AUDIO`; raises :class:`ClientEventError` (nothing reserved)
        when it would not fit. Call :meth:`transcribe` with it once the item is added."""
        audio = [c for c in item.content if c.type == "input_audio" and c.transcript is None]
        if not audio:
            return None
        size = len(audio[0].audio or b"")
        if self._pending_item_audio + size > MAX_PENDING_ITEM_AUDIO:
            index = item.content.index(audio[0])
            raise ClientEventError(
                "input_audio_pending_full",
                f"items with audio wait to be transcribed one at a time; at most "
                f"{MAX_PENDING_ITEM_AUDIO // 2**20} MiB of their audio may wait",
                param=f"item.content[{index}].audio",
            )
        return audio[0]

    def transcribe(self, item: Item, part: ContentPart) -> None:
        """Transcribe ``part`` (reserved by :meth:`reserve`) in the background."""
        size = len(part.audio or b"")
        self._pending_item_audio += size
        self.expect(item.id)
        self._spawn(self._transcribe_item(item, part, size))

    async def _transcribe_item(self, item: Item, part: ContentPart, size: int) -> None:
        """One item at a time per session: each stream holds a decoder, and a new native
        decoder takes the interpreter for a third of a second to build."""
        try:
            async with self._one_item_at_a_time:
                await self._transcribe_part(item, part)
        finally:
            self._pending_item_audio -= size

    async def _transcribe_part(self, item: Item, part: ContentPart) -> None:
        c = self._config()
        fmt = c.input_format
        pcm = to_pcm16(part.audio or b"", fmt.encoding) if part.audio else b""
        part.audio = None  # it is never sent back: only its transcript is kept
        try:
            stt = await self._deps.get_stt(self._deps.stt_name(c))
            key = self._deps.engine_key(stt.name)
            stream = await stt.open(RecognitionOptions(interim_results=False, api_key=key))
            try:
                rs = StreamResampler(fmt.rate, stream.sample_rate)
                await stream.send(await self._deps.workers.run(rs.process, pcm) + rs.flush())
                await stream.finalize()
                async for event in stream.events():
                    if isinstance(event, Finalized):
                        await self.transcribed(item.id, event.text, len(pcm) / 2 / fmt.rate)
                        return
                    if isinstance(event, RecognitionFailed):
                        raise event.error
            finally:
                await stream.aclose()
        except EngineError as exc:
            await self.failed(item.id, exc)

    async def close(self) -> None:
        recs = [*self._retired, *([self._recognizer] if self._recognizer else [])]
        for rec in recs:
            await rec.aclose()
        self._recognizer = None
        self._retired.clear()
        self._transcripts.clear()
