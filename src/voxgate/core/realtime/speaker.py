"""The speaker: a response's text spoken as it streams, into the session's audio sink.

Sentences are spoken as they complete, clause by clause (the first clause short, so the
first audio comes soon). Each clause's audio is converted to the sink's format and
written in pieces of at most :data:`DELTA_MS`; the message item's
:class:`~voxgate.core.realtime.conversation.SpokenText` records which words went with
which stretch of audio, so a cut answer keeps only the words that were heard.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from voxgate.audio import AudioFormat
from voxgate.core.realtime.ports import OutputAudio
from voxgate.core.speech import OutputConverter
from voxgate.core.text import SentenceBuffer, split_clauses
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.speech.unified import TTSConfig

if TYPE_CHECKING:
    from voxgate.core.realtime.response import Response

#: An answer's first clause is spoken once it has this many words (or a clause ends):
#: each word is about 100 ms of a 1.5B model's decoding on two cores.
FIRST_CLAUSE_WORDS = 4
#: Output audio goes out in pieces of at most this many milliseconds.
DELTA_MS = 100
#: Engine audio up to this size (~2 s at 22 kHz) is converted on the event loop.
INLINE_CONVERT_BYTES = 96_000


class Speaker:
    """Speaks one response; :meth:`add` text as it comes, then :meth:`finish`, and
    :meth:`close` in any case."""

    def __init__(self, response: Response) -> None:
        self.r = response
        self._buffer = SentenceBuffer()
        self._clauses: asyncio.Queue[str | None] = asyncio.Queue()
        self._first = True
        self._task = asyncio.create_task(self._speak(), name="realtime-speaker")

    def add(self, text: str) -> None:
        self._buffer.add(text)
        if self._first:  # the first clause goes as soon as it is whole, not the sentence
            self._queue(self._buffer.take_clause(FIRST_CLAUSE_WORDS))
        self._queue(self._buffer.take_sentences())

    def _queue(self, text: str) -> None:
        if not text:
            return
        clauses = split_clauses(text, first_max_words=FIRST_CLAUSE_WORDS if self._first else 30)
        self._first = False
        self.r.mark("clause")
        for clause in clauses:
            self._clauses.put_nowait(clause)

    async def finish(self) -> None:
        self._queue(self._buffer.take_all())
        self._clauses.put_nowait(None)
        await asyncio.shield(self._task)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _speak(self) -> None:
        r = self.r
        assert r.open_voice is not None
        stream = await r.open_voice()
        fmt = r.sink.format or r.plan.output_format
        converter = OutputConverter(
            stream.sample_rate, TTSConfig(sample_rate=fmt.rate, encoding=fmt.encoding)
        )
        out_fmt = AudioFormat(fmt.encoding, fmt.rate)
        slice_bytes = out_fmt.bytes_for(DELTA_MS)
        said = ""
        spoke_any = False
        try:
            while (clause := await self._clauses.get()) is not None:
                first = not said
                # the message item exists once there is text: an answer that only calls a
                # function has none (as OpenAI answers it)
                message = await r.message_output(True)
                assert message.spoken is not None
                started = False
                async for pcm in stream.synthesize(clause, first=first):
                    # a clause's resampling takes well under a millisecond: doing it here
                    # keeps it out of the engine queue, behind other sessions' synthesis
                    if len(pcm) <= INLINE_CONVERT_BYTES:
                        audio = converter.convert(pcm)
                    else:
                        audio = await r.workers.run(converter.convert, pcm)
                    if not audio:
                        continue
                    if not started:
                        r.mark("audio")
                        started = True
                        delta = clause if not said else " " + clause
                        said += delta
                        message.spoken.add(clause, 0.0)
                        await r.emit(ev.AudioTranscriptDelta(*r.at(message), delta=delta))
                    for i in range(0, len(audio), slice_bytes):
                        piece = audio[i : i + slice_bytes]
                        piece_ms = out_fmt.duration_ms(len(piece))
                        await r.sink.write(
                            OutputAudio(r.id, message.item.id, message.index, 0, piece)
                        )
                        spoke_any = True
                        message.spoken.extend_last(piece_ms)
                        r.audio_ms += piece_ms
                        r.counters.audio_seconds += piece_ms / 1000
        finally:
            if spoke_any:
                r.sink.finish(r.id)
