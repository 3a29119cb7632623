"""One model response: the language model streamed into items, text spoken clause by clause.

:class:`Response` runs in its own task. Its *work* (the model stream and the speaker)
is a child task that :meth:`Response.cancel` cancels at once — barge-in and a client's
cancel do not wait behind audio — after which the response closes every item it opened
(status ``incomplete``, the transcript cut to the audio the sink says was played, or
else to what was sent) and emits :class:`~voxgate.protocols.realtime.events.ResponseDone`.
Canonical events, in order, for an audio answer (the audio itself goes to the sink)::

    ResponseCreated
    OutputItemAdded · ItemAdded · ContentPartAdded
    (AudioTranscriptDelta · audio to the sink…)…
    AudioDone · AudioTranscriptDone · ContentPartDone · OutputItemDone · ItemDone
    ResponseDone
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from voxgate.clock import IdFactory
from voxgate.core.realtime.conversation import Conversation, SpokenText, chat_messages
from voxgate.core.realtime.ports import AudioSink
from voxgate.core.realtime.speaker import Speaker
from voxgate.core.relay import RelaySession
from voxgate.engines.base import EngineError, SynthesisStream
from voxgate.engines.llm import LanguageModel
from voxgate.engines.workers import EngineWorkers
from voxgate.protocols.chat import ChatDone, ChatRequest, FunctionSpec, TextDelta, ToolCallDelta
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.session import AudioSpec, Tool

log = logging.getLogger("voxgate.realtime")

Emit = Callable[[ev.Event], Awaitable[None]]


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
    conversation: Conversation
    model: LanguageModel
    #: A synthesis stream for the plan's voice, opened by the agent (``None``: text only).
    open_voice: Callable[[], Awaitable[SynthesisStream]] | None
    #: Waits for pending input transcriptions of the given items.
    transcripts_of: Callable[[list[Item]], Awaitable[None]]
    workers: EngineWorkers
    emit: Emit
    #: Where the spoken answer goes; it says how much of an item was played.
    sink: AudioSink
    ids: IdFactory
    counters: RelaySession
    status: str = "in_progress"
    reason: str | None = None
    error: tuple[str, str] | None = None
    outputs: list[_Output] = field(default_factory=list)
    usage: tuple[int, int] = (0, 0)
    audio_ms: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: When each stage of the answer was first reached (loop time), for the debug log.
    marks: dict[str, float] = field(default_factory=dict)
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

    def state(self) -> ev.ResponseState:
        p = self.plan
        return ev.ResponseState(
            id=p.id,
            status=self.status,
            reason=self.reason,
            error=self.error,
            output=tuple(o.item for o in self.outputs),
            in_conversation=p.in_conversation,
            modalities=p.modalities,
            max_output_tokens=p.max_output_tokens,
            output_format=p.output_format,
            voice=p.voice,
            metadata=p.metadata,
            usage=self.usage,
            audio_ms=self.audio_ms,
        )

    def mark(self, stage: str) -> None:
        """Note when ``stage`` was first reached (see :meth:`timeline`)."""
        self.marks.setdefault(stage, asyncio.get_running_loop().time())

    def timeline(self) -> str:
        """Each stage reached, in ms after the response was created."""
        start = self.marks.get("created")
        if start is None:
            return ""
        return ", ".join(
            f"{stage} +{1000 * (at - start):.0f} ms"
            for stage, at in self.marks.items()
            if stage != "created"
        )

    async def run(self) -> None:
        """The whole lifecycle; returns after ``response.done`` is sent."""
        self.mark("created")
        await self.emit(ev.ResponseCreated(self.state()))
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
        self.error = (code, message)

    async def _generate(self) -> None:
        p = self.plan
        context = list(self.conversation.items) if p.input is None else p.input
        await self.transcripts_of(context)
        self.mark("transcript")
        request = chat_request(
            self.model,
            p.instructions,
            context,
            p.tools,
            p.tool_choice,
            p.named_choice,
            max_tokens=p.max_output_tokens,
            temperature=p.temperature,
            # a response on its own input is not the conversation's next turn
            conversation=self.conversation.key if p.input is None else None,
        )
        audio = "audio" in p.modalities and self.open_voice is not None
        speaker = Speaker(self) if audio else None
        calls: dict[int, _Output] = {}
        finish = "stop"
        try:
            async for chunk in self.model.stream(request):
                if isinstance(chunk, TextDelta):
                    self.mark("words")
                    message = await self.message_output(audio)
                    message.text += chunk.text
                    if speaker is not None:
                        speaker.add(chunk.text)
                    else:
                        await self.emit(ev.TextDelta(*self.at(message), delta=chunk.text))
                elif isinstance(chunk, ToolCallDelta):
                    await self._tool_delta(calls, chunk)
                elif isinstance(chunk, ChatDone):
                    finish = chunk.finish_reason
                    self.usage = (chunk.input_tokens, chunk.output_tokens)
                    self.counters.add_tokens(chunk.input_tokens, chunk.output_tokens)
            if speaker is not None:
                await speaker.finish()
        finally:
            if speaker is not None:
                await speaker.close()
        if finish == "length":
            self.status, self.reason = "incomplete", "max_output_tokens"
        else:
            self.status = "completed"

    async def message_output(self, audio: bool) -> _Output:
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
        await self.emit(ev.ContentPartAdded(*self.at(out), part=part))
        return out

    async def _add(self, out: _Output) -> None:
        self.outputs.append(out)
        await self.emit(ev.OutputItemAdded(self.id, out.index, out.item))
        if self.plan.in_conversation:
            prev = self.conversation.add(out.item)
            if out.spoken is not None:
                self.conversation.spoken[out.item.id] = out.spoken
            await self.emit(ev.ItemAdded(out.item, prev))
            await announce_evicted(self.conversation, self.emit)

    async def _tool_delta(self, calls: dict[int, _Output], delta: ToolCallDelta) -> None:
        out = calls.get(delta.index)
        if out is None:
            item = Item(
                self.ids("item"),
                "function_call",
                status="in_progress",
                call_id=delta.id or self.ids("call"),
                name=delta.name or "",
            )
            out = calls[delta.index] = _Output(item, len(self.outputs))
            await self._add(out)
        elif delta.name and not out.item.name:
            out.item.name = delta.name
        if delta.arguments:
            out.item.arguments += delta.arguments
            call_id = out.item.call_id or ""
            await self.emit(
                ev.ArgumentsDelta(self.id, out.item.id, out.index, call_id, delta.arguments)
            )

    def at(self, out: _Output) -> tuple[str, str, int, int]:
        """Where a content event of ``out`` is: response, item, output and content index."""
        return self.id, out.item.id, out.index, 0

    async def _finish(self) -> None:
        final = "completed" if self.status == "completed" else "incomplete"
        for out in self.outputs:
            item = out.item
            item.status = final
            if item.type == "function_call":
                await self.emit(
                    ev.ArgumentsDone(
                        self.id,
                        item.id,
                        out.index,
                        item.call_id or "",
                        item.name or "",
                        item.arguments,
                    )
                )
            elif item.content:
                await self._finish_message(out)
            await self.emit(ev.OutputItemDone(self.id, out.index, item))
            if self.plan.in_conversation and item.id in self.conversation:
                await self.emit(ev.ItemDone(item))
        await self.emit(ev.ResponseDone(self.state()))
        log.debug("response %s: %s", self.id, self.timeline() or "no stage reached")
        self.finished.set()

    async def _finish_message(self, out: _Output) -> None:
        part = out.item.content[0]
        if out.spoken is not None:
            # what was said: all of it, or — cut short — the words whose audio was played
            # (a transport that cannot know counts what was sent)
            if self.status == "completed":
                text = out.text.strip()
            else:
                played = self.sink.played_ms(out.item.id)
                text = out.spoken.heard(1e12 if played is None else played)
            part.transcript = text
            await self.emit(ev.AudioDone(*self.at(out)))
            await self.emit(ev.AudioTranscriptDone(*self.at(out), transcript=text))
        else:
            part.text = out.text
            await self.emit(ev.TextDone(*self.at(out), text=out.text))
        await self.emit(ev.ContentPartDone(*self.at(out), part=part))


def chat_request(
    model: LanguageModel,
    instructions: str,
    context: list[Item],
    tools: Sequence[Tool],
    tool_choice: str,
    named: bool,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    conversation: str | None = None,
) -> ChatRequest:
    """What the model is asked for a response (or, with no items, what every request of
    the session starts with: :meth:`LanguageModel.warm`)."""
    return ChatRequest(
        model=model.name,
        messages=chat_messages(instructions, context),
        tools=tuple(FunctionSpec(t.name, t.description, dict(t.parameters)) for t in tools),
        tool_choice=tool_choice,
        named=named,
        max_tokens=max_tokens,
        temperature=temperature,
        conversation=conversation,
    )


async def announce_evicted(conversation: Conversation, emit: Emit) -> None:
    """Tell the client of the items the conversation dropped to stay within its bound."""
    for item_id in conversation.take_evicted():
        await emit(ev.ItemDeleted(item_id))
