"""One model response: the language model streamed into items, text spoken clause by clause.

:class:`Response` runs in its own task. Its *work* (the model stream and the speaker)
is a child task that :meth:`Response.cancel` cancels at once — barge-in and
``response.cancel`` do not wait behind audio — after which the response closes every
item it opened (status ``incomplete``, the transcript cut to the audio actually sent)
and sends ``response.done``. Event order, for an audio answer::

    response.created
    response.output_item.added · conversation.item.added · response.content_part.added
    (response.output_audio_transcript.delta · response.output_audio.delta…)…
    response.output_audio.done · response.output_audio_transcript.done
    response.content_part.done · response.output_item.done · conversation.item.done
    response.done
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxgate.audio import AudioFormat
from voxgate.clock import IdFactory
from voxgate.core.realtime.conversation import Conversation, SpokenText, chat_messages
from voxgate.core.relay import RelaySession
from voxgate.core.speech import OutputConverter
from voxgate.core.text import SentenceBuffer, split_clauses
from voxgate.engines.base import EngineError, SynthesisStream
from voxgate.engines.llm import LanguageModel
from voxgate.engines.workers import EngineWorkers
from voxgate.protocols.chat import ChatDone, ChatRequest, FunctionSpec, TextDelta, ToolCallDelta
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.protocol import RealtimeProtocol
from voxgate.protocols.realtime.session import AudioSpec, Tool
from voxgate.protocols.speech.unified import TTSConfig

log = logging.getLogger("voxgate.realtime")

Send = Callable[[str], Awaitable[None]]
#: Output audio goes out in deltas of at most this many milliseconds.
DELTA_MS = 100
#: Engine audio up to this size (~2 s at 22 kHz) is converted on the event loop.
INLINE_CONVERT_BYTES = 96_000


@dataclass
class ResponsePlan:
    """What a ``response.create`` (or a turn) resolved to, against the session config."""

    id: str
    in_conversation: bool
    instructions: str
    modalities: tuple[str, ...]
    tools: tuple[Tool, ...]
    tool_choice: str
    named_choice: bool
    max_output_tokens: int | None
    temperature: float | None
    output_format: AudioSpec
    voice: str
    #: Items the model reads; ``None``: the conversation as it is when the work starts.
    input: list[Item] | None = None
    metadata: Mapping[str, str] | None = None


@dataclass
class _Output:
    item: Item
    index: int
    spoken: SpokenText | None = None
    text: str = ""
    done: bool = False


@dataclass
class Response:
    plan: ResponsePlan
    protocol: RealtimeProtocol
    conversation: Conversation
    model: LanguageModel
    #: A synthesis stream for the plan's voice, opened by the agent (``None``: text only).
    open_voice: Callable[[], Awaitable[SynthesisStream]] | None
    #: Waits for pending input transcriptions of the given items.
    transcripts_of: Callable[[list[Item]], Awaitable[None]]
    workers: EngineWorkers
    send: Send
    ids: IdFactory
    counters: RelaySession
    status: str = "in_progress"
    reason: str | None = None
    error: dict[str, Any] | None = None
    outputs: list[_Output] = field(default_factory=list)
    usage: tuple[int, int] = (0, 0)
    audio_ms: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _work: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.plan.id

    @property
    def active(self) -> bool:
        return self.status == "in_progress"

    def cancel(self, reason: str) -> None:
        """Stop now (``turn_detected`` or ``client_cancelled``); ``response.done`` follows."""
        if self.status == "in_progress":
            self.status, self.reason = "cancelled", reason
            if self._work is not None:
                self._work.cancel()

    def _json(self) -> dict[str, Any]:
        p = self.plan
        details: dict[str, Any] | None = None
        if self.status != "in_progress" and self.status != "completed":
            details = {"type": self.status, "reason": self.reason}
            if self.error is not None:
                details["error"] = self.error
        inp, out = self.usage
        return {
            "object": "realtime.response",
            "id": p.id,
            "status": self.status,
            "status_details": details,
            "output": [self.protocol.item(o.item) for o in self.outputs],
            "conversation_id": "conv_default" if p.in_conversation else None,
            "output_modalities": list(p.modalities),
            "max_output_tokens": p.max_output_tokens or "inf",
            "audio": {"output": {"format": p.output_format.to_json(), "voice": p.voice}},
            "metadata": dict(p.metadata) if p.metadata else None,
            "usage": None
            if self.status == "in_progress"
            else {
                "total_tokens": inp + out,
                "input_tokens": inp,
                "output_tokens": out,
                "input_token_details": {"text_tokens": inp, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": out, "audio_tokens": 0},
                # voxgate's own meter: seconds of audio this response produced
                "output_audio_seconds": round(self.audio_ms / 1000, 3),
            },
        }

    async def run(self) -> None:
        """The whole lifecycle; returns after ``response.done`` is sent."""
        await self.send(self.protocol.event("response.created", response=self._json()))
        self._work = asyncio.create_task(self._generate(), name="realtime-response")
        try:
            await asyncio.shield(self._work)
        except asyncio.CancelledError:
            if self._work.cancelled() or self.status != "in_progress":
                pass  # cancelled by cancel(): finish below
            else:  # the session is closing
                self._work.cancel()
                raise
        except EngineError as exc:
            self._fail(exc.code, exc.public_message)
        except Exception as exc:
            log.exception("response %s failed", self.id)
            self._fail("internal_error", f"the response failed: {type(exc).__name__}")
        await self._finish()

    def _fail(self, code: str, message: str) -> None:
        self.status, self.reason = "failed", None
        self.error = {"type": "server_error", "code": code, "message": message}

    async def _generate(self) -> None:
        p = self.plan
        context = list(self.conversation.items) if p.input is None else p.input
        await self.transcripts_of(context)
        request = ChatRequest(
            model=self.model.name,
            messages=chat_messages(p.instructions, context),
            tools=tuple(FunctionSpec(t.name, t.description, dict(t.parameters)) for t in p.tools),
            tool_choice=p.tool_choice,
            named=p.named_choice,
            max_tokens=p.max_output_tokens,
            temperature=p.temperature,
        )
        audio = "audio" in p.modalities and self.open_voice is not None
        speaker = _Speaker(self) if audio else None
        calls: dict[int, _Output] = {}
        finish = "stop"
        try:
            async for ev in self.model.stream(request):
                if isinstance(ev, TextDelta):
                    message = await self._message(audio)
                    if speaker is not None:
                        message.text += ev.text
                        speaker.add(ev.text)
                    else:
                        message.text += ev.text
                        await self._delta("response.output_text.delta", message, delta=ev.text)
                elif isinstance(ev, ToolCallDelta):
                    await self._tool_delta(calls, ev)
                elif isinstance(ev, ChatDone):
                    finish = ev.finish_reason
                    self.usage = (ev.input_tokens, ev.output_tokens)
                    self.counters.add_tokens(ev.input_tokens, ev.output_tokens)
            if speaker is not None:
                await speaker.finish()
        finally:
            if speaker is not None:
                await speaker.close()
        if finish == "length":
            self.status, self.reason = "incomplete", "max_output_tokens"
        else:
            self.status = "completed"

    async def _message(self, audio: bool) -> _Output:
        for o in self.outputs:
            if o.item.type == "message":
                return o
        part = (
            ContentPart("output_audio", transcript="")
            if audio
            else ContentPart("output_text", text="")
        )
        item = Item(self.ids("item"), "message", status="in_progress", role="assistant", content=[])
        out = _Output(item, len(self.outputs), SpokenText() if audio else None)
        await self._add(out)
        item.content.append(part)
        await self.send(
            self.protocol.event(
                "response.content_part.added",
                response_id=self.id,
                item_id=item.id,
                output_index=out.index,
                content_index=0,
                part=self.protocol.part(part),
            )
        )
        return out

    async def _add(self, out: _Output) -> None:
        self.outputs.append(out)
        p = self.protocol
        await self.send(
            p.event(
                "response.output_item.added",
                response_id=self.id,
                output_index=out.index,
                item=p.item(out.item),
            )
        )
        if self.plan.in_conversation:
            prev = self.conversation.add(out.item)
            if out.spoken is not None:
                self.conversation.spoken[out.item.id] = out.spoken
            await self.send(
                p.event("conversation.item.added", previous_item_id=prev, item=p.item(out.item))
            )
            await announce_evicted(self.conversation, p, self.send)

    async def _tool_delta(self, calls: dict[int, _Output], ev: ToolCallDelta) -> None:
        out = calls.get(ev.index)
        if out is None:
            item = Item(
                self.ids("item"),
                "function_call",
                status="in_progress",
                call_id=ev.id or self.ids("call"),
                name=ev.name or "",
            )
            out = calls[ev.index] = _Output(item, len(self.outputs))
            await self._add(out)
        elif ev.name and not out.item.name:
            out.item.name = ev.name
        if ev.arguments:
            out.item.arguments += ev.arguments
            await self._delta(
                "response.function_call_arguments.delta",
                out,
                call_id=out.item.call_id,
                delta=ev.arguments,
                content=False,
            )

    async def _delta(self, kind: str, out: _Output, *, content: bool = True, **fields: Any) -> None:
        extra = {"content_index": 0} if content else {}
        await self.send(
            self.protocol.event(
                kind,
                response_id=self.id,
                item_id=out.item.id,
                output_index=out.index,
                **extra,
                **fields,
            )
        )

    async def _finish(self) -> None:
        final = "completed" if self.status == "completed" else "incomplete"
        for out in self.outputs:
            item = out.item
            item.status = final
            if item.type == "function_call":
                await self._delta(
                    "response.function_call_arguments.done",
                    out,
                    call_id=item.call_id,
                    name=item.name,
                    arguments=item.arguments,
                    content=False,
                )
            elif item.content:
                await self._finish_message(out)
            p = self.protocol
            await self.send(
                p.event(
                    "response.output_item.done",
                    response_id=self.id,
                    output_index=out.index,
                    item=p.item(item),
                )
            )
            done = "conversation.item.done"
            if self.plan.in_conversation and item.id in self.conversation and p.knows(done):
                await self.send(p.event(done, item=p.item(item)))
        await self.send(self.protocol.event("response.done", response=self._json()))
        self.finished.set()

    async def _finish_message(self, out: _Output) -> None:
        part = out.item.content[0]
        if out.spoken is not None:
            # what was said: all of it, or — cut short — the words whose audio was sent
            text = out.text.strip() if self.status == "completed" else out.spoken.heard(1e12)
            part.transcript = text
            await self._delta("response.output_audio.done", out)
            await self._delta("response.output_audio_transcript.done", out, transcript=text)
        else:
            part.text = out.text
            await self._delta("response.output_text.done", out, text=out.text)
        await self._delta("response.content_part.done", out, part=self.protocol.part(part))


async def announce_evicted(conversation: Conversation, p: RealtimeProtocol, send: Send) -> None:
    """Tell the client of the items the conversation dropped to stay within its bound."""
    for item_id in conversation.take_evicted():
        await send(p.event("conversation.item.deleted", item_id=item_id))


class _Speaker:
    """Speaks a response's text as it streams: sentences as they complete, clause by clause."""

    def __init__(self, response: Response) -> None:
        self.r = response
        self._buffer = SentenceBuffer()
        self._clauses: asyncio.Queue[str | None] = asyncio.Queue()
        self._first = True
        self._task = asyncio.create_task(self._speak(), name="realtime-speaker")

    def add(self, text: str) -> None:
        self._buffer.add(text)
        self._queue(self._buffer.take_sentences())

    def _queue(self, text: str) -> None:
        if not text:
            return
        clauses = split_clauses(text, first_max_words=6 if self._first else 30)
        self._first = False
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
        fmt = r.plan.output_format
        converter = OutputConverter(
            stream.sample_rate, TTSConfig(sample_rate=fmt.rate, encoding=fmt.encoding)
        )
        out_fmt = AudioFormat(fmt.encoding, fmt.rate)
        slice_bytes = out_fmt.bytes_for(DELTA_MS)
        said = ""
        while (clause := await self._clauses.get()) is not None:
            # the message item exists once there is text: an answer that only calls a
            # function has none (as OpenAI answers it)
            message = await r._message(True)
            assert message.spoken is not None
            started = False
            async for pcm in stream.synthesize(clause):
                # a clause's resampling takes well under a millisecond: doing it here keeps
                # it out of the engine queue, behind other sessions' synthesis
                if len(pcm) <= INLINE_CONVERT_BYTES:
                    audio = converter.convert(pcm)
                else:
                    audio = await r.workers.run(converter.convert, pcm)
                if not audio:
                    continue
                if not started:
                    started = True
                    delta = clause if not said else " " + clause
                    said += delta
                    message.spoken.add(clause, 0.0)
                    await r._delta("response.output_audio_transcript.delta", message, delta=delta)
                for i in range(0, len(audio), slice_bytes):
                    piece = audio[i : i + slice_bytes]
                    piece_ms = out_fmt.duration_ms(len(piece))
                    await r.send(
                        r.protocol.audio_delta(
                            response_id=r.id,
                            item_id=message.item.id,
                            output_index=message.index,
                            audio=piece,
                        )
                    )
                    message.spoken.extend_last(piece_ms)
                    r.audio_ms += piece_ms
                    r.counters.audio_seconds += piece_ms / 1000
