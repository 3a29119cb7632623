"""Agent frameworks against voxgate, changed only in URL and key.

Pipecat's ``OpenAIRealtimeLLMService`` and LiveKit Agents' OpenAI realtime plugin each
parse OpenAI Realtime server events with code of their own: Pipecat with its own pydantic
models (``pipecat.services.openai.realtime.events``), LiveKit with the ``openai``
package's types built without validation and handlers that branch on their fields. The
official types (checked for every event by the autouse fixture) are not enough to know
that these parse what voxgate sends, so here each framework's own code reads it:

- Pipecat on the wire: a session held with Pipecat's own connect call, its client event
  models for every message sent, and every server event passed to its
  ``parse_server_event`` (an event it models must parse as that model);
- Pipecat's service itself, in a pipeline, pointed at voxgate by ``base_url``;
- LiveKit's ``RealtimeSession``, pointed at voxgate by ``base_url``, through its chat
  context sync, a text reply, an audio turn and a function call.

Both speak the GA protocol (no ``OpenAI-Beta`` header) with OpenAI's model names.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pybase64
import pytest
from livekit import rtc
from livekit.agents import llm as lk
from livekit.plugins.openai.realtime import RealtimeModel
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.adapters.llm.services.open_ai_realtime_adapter import OpenAIRealtimeLLMAdapter
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime import events as pc
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as pipecat_connect

from conftest import Gateway, GatewayFactory, settled
from voxgate.audio import read_wav, resample

DATA = Path(__file__).parent / "data"
QUESTION = "and you always want to see it in the superlative degree"
TOKEN = "fw-token-0123456789abcdef"
_USER_HI = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
GATEWAY = '[accounts.local.gateways.default]\ntokens = [{ name = "app", env = "GW_TOKEN" }]\n'


def speech_24k(name: str = "arctic_a0007.wav", silence_s: float = 1.0) -> bytes:
    wav = read_wav(DATA / name)
    return resample(wav.pcm, wav.sample_rate, 24000) + bytes(int(48000 * silence_s))


def pieces(pcm: bytes, size: int = 4800) -> list[bytes]:
    """100 ms of 24 kHz PCM at a time, as a transport delivers it."""
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


async def gateway_with_token(gateway: GatewayFactory) -> Gateway:
    return await gateway(GATEWAY, {"GW_TOKEN": TOKEN})


# --------------------------------------------------------------------------- Pipecat


class PipecatWire:
    """One session through Pipecat's own code: the connect call of its service
    (``websockets`` with a bearer header, ``?model=`` on the URL), its client event
    models serialised as it serialises them, and its parser for every server event."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, event: pc.ClientEvent) -> None:
        await self.ws.send(json.dumps(event.model_dump(exclude_none=True)))

    async def recv(self) -> pc.ServerEvent:
        """The next server event Pipecat models, parsed by ``parse_server_event`` (which
        returns ``None`` for a type it has no model of: its receive loop skips those)."""
        while True:
            text = await self.ws.recv()
            assert isinstance(text, str)
            kind = json.loads(text)["type"]
            try:
                event = pc.parse_server_event(text)
            except Exception as exc:  # what Pipecat's receive loop would die of
                pytest.fail(f"Pipecat's parser refuses voxgate's {kind}: {exc}", pytrace=False)
            if event is None:
                continue
            model = pc._server_event_types[kind]
            assert isinstance(event, model), (kind, type(event))
            return event

    async def until(self, kind: str, within: float = 60) -> list[pc.ServerEvent]:
        """Events up to and including the first ``kind``; an ``error`` fails the test
        (Pipecat's service treats one as fatal and stops reading)."""
        got: list[pc.ServerEvent] = []
        async with asyncio.timeout(within):
            while True:
                event = await self.recv()
                got.append(event)
                if isinstance(event, pc.ErrorEvent) and kind != "error":
                    pytest.fail(f"voxgate answered with an error: {event.error}", pytrace=False)
                if event.type == kind:
                    return got


def of(events: list[pc.ServerEvent], model: type[pc.ServerEvent]) -> list[Any]:
    return [e for e in events if isinstance(e, model)]


def weather_tools() -> list[dict[str, Any]]:
    """A function tool as Pipecat's adapter renders it for the realtime session."""
    schema = FunctionSchema(
        name="get_weather",
        description="Weather for a city",
        properties={"city": {"type": "string"}},
        required=["city"],
    )
    tools = OpenAIRealtimeLLMAdapter().from_standard_tools(ToolsSchema(standard_tools=[schema]))
    assert isinstance(tools, list)
    return tools


@pytest.fixture
async def pipecat_wire(gateway: GatewayFactory) -> AsyncIterator[PipecatWire]:
    gw = await gateway_with_token(gateway)
    # OpenAIRealtimeLLMService: f"{base_url}?model={model}", Authorization: Bearer api_key
    url = f"{gw.ws('/v1/realtime')}?model=gpt-realtime-2.1"
    async with pipecat_connect(
        uri=url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        yield PipecatWire(ws)
    await settled(gw)


async def test_pipecat_parses_every_event_of_a_session(pipecat_wire: PipecatWire) -> None:
    wire = pipecat_wire
    created = await wire.recv()
    assert isinstance(created, pc.SessionCreatedEvent)
    assert created.session.model == "gpt-realtime-2.1"

    # the session.update of Pipecat's examples: its transcription and VAD defaults, a tool
    session = pc.SessionProperties(
        model="gpt-realtime-2.1",
        instructions="Be brief.",
        audio=pc.AudioConfiguration(
            input=pc.AudioInput(
                format=pc.PCMAudioFormat(),
                transcription=pc.InputAudioTranscription(),
                turn_detection=pc.TurnDetection(silence_duration_ms=500),
            ),
            output=pc.AudioOutput(format=pc.PCMAudioFormat(), voice="alloy"),
        ),
        tools=weather_tools(),
        tool_choice="auto",
    )
    await wire.send(pc.SessionUpdateEvent(session=session))
    (updated,) = await wire.until("session.updated")
    assert isinstance(updated, pc.SessionUpdatedEvent)
    assert updated.session.instructions == "Be brief."
    assert updated.session.audio is not None
    assert updated.session.audio.input is not None
    assert isinstance(updated.session.audio.input.turn_detection, pc.TurnDetection)

    # a text turn, answered in audio (Pipecat's default modality)
    await wire.send(
        pc.ConversationItemCreateEvent(
            item=pc.ConversationItem(
                type="message",
                role="user",
                content=[pc.ItemContent(type="input_text", text="hello there")],
            )
        )
    )
    await wire.send(
        pc.ResponseCreateEvent(response=pc.ResponseProperties(output_modalities=["audio"]))
    )
    events = await wire.until("response.done")
    said = "".join(e.delta for e in of(events, pc.ResponseAudioTranscriptDelta))
    assert said == "You said: hello there."
    assert of(events, pc.ResponseAudioDelta)
    done = events[-1]
    assert isinstance(done, pc.ResponseDone)
    assert done.response.status == "completed"
    assert done.response.usage is not None
    assert done.response.usage.output_tokens
    answer_id = of(events, pc.ResponseOutputItemAdded)[0].item.id

    # an audio turn: server VAD, transcription, a spoken answer
    for piece in pieces(speech_24k()):
        await wire.send(pc.InputAudioBufferAppendEvent(audio=pybase64.b64encode(piece).decode()))
    events = await wire.until("response.done")
    assert of(events, pc.InputAudioBufferSpeechStarted)
    assert of(events, pc.InputAudioBufferSpeechStopped)
    assert of(events, pc.InputAudioBufferCommitted)
    (heard,) = of(events, pc.ConversationItemInputAudioTranscriptionCompleted)
    assert "superlative" in heard.transcript
    assert events[-1].response.status == "completed"

    # a function call round trip (voxgate/echo calls the tool when it is required)
    await wire.send(
        pc.SessionUpdateEvent(
            session=pc.SessionProperties(tools=weather_tools(), tool_choice="required")
        )
    )
    await wire.until("session.updated")
    await wire.send(
        pc.ConversationItemCreateEvent(
            item=pc.ConversationItem(
                type="message",
                role="user",
                content=[pc.ItemContent(type="input_text", text="Paris")],
            )
        )
    )
    await wire.send(
        pc.ResponseCreateEvent(response=pc.ResponseProperties(output_modalities=["text"]))
    )
    events = await wire.until("response.done")
    (args,) = of(events, pc.ResponseFunctionCallArgumentsDone)
    assert args.call_id
    added = [e.item for e in of(events, pc.ConversationItemAdded) if e.item.type == "function_call"]
    assert [(i.call_id, i.name) for i in added] == [(args.call_id, "get_weather")]
    await wire.send(pc.SessionUpdateEvent(session=pc.SessionProperties(tool_choice="auto")))
    await wire.until("session.updated")
    await wire.send(
        pc.ConversationItemCreateEvent(
            item=pc.ConversationItem(
                type="function_call_output", call_id=args.call_id, output='{"sky": "sunny"}'
            )
        )
    )
    await wire.send(
        pc.ResponseCreateEvent(response=pc.ResponseProperties(output_modalities=["text"]))
    )
    events = await wire.until("response.done")
    assert of(events, pc.ResponseTextDelta)
    assert of(events, pc.ResponseTextDone)

    # what Pipecat sends on an interruption and for its own bookkeeping
    await wire.send(
        pc.ConversationItemRetrieveEvent(item_id=answer_id, event_id=f"rci_{answer_id}")
    )
    (retrieved,) = await wire.until("conversation.item.retrieved")
    assert retrieved.item.id == answer_id
    await wire.send(
        pc.ConversationItemTruncateEvent(item_id=answer_id, content_index=0, audio_end_ms=300)
    )
    (truncated,) = await wire.until("conversation.item.truncated")
    assert truncated.audio_end_ms == 300
    await wire.send(pc.ConversationItemDeleteEvent(item_id=answer_id))
    await wire.until("conversation.item.deleted")
    await wire.send(pc.InputAudioBufferClearEvent())
    await wire.until("input_audio_buffer.cleared")
    await wire.send(pc.ResponseCancelEvent())
    (refused,) = await wire.until("error")
    # one of the two codes Pipecat's receive loop lets pass without ending the session
    assert refused.error.code == "response_cancel_not_active"

    # manual turns: Pipecat's turn_detection=False is sent as null, then commit + create
    await wire.send(
        pc.SessionUpdateEvent(
            session=pc.SessionProperties(
                audio=pc.AudioConfiguration(input=pc.AudioInput(turn_detection=False))
            )
        )
    )
    (updated,) = await wire.until("session.updated")
    assert updated.session.audio is not None
    assert updated.session.audio.input is not None
    assert updated.session.audio.input.turn_detection is None
    for piece in pieces(speech_24k("arctic_a0009.wav", silence_s=0.2)):
        await wire.send(pc.InputAudioBufferAppendEvent(audio=pybase64.b64encode(piece).decode()))
    await wire.send(pc.InputAudioBufferCommitEvent())
    await wire.send(pc.ResponseCreateEvent())
    events = await wire.until("response.done")
    assert of(events, pc.InputAudioBufferCommitted)
    assert events[-1].response.status == "completed"


class Seen:
    """What reached either end of the pipeline, and what went wrong on the way."""

    def __init__(self) -> None:
        self.frames: dict[FrameDirection, list[Frame]] = {d: [] for d in FrameDirection}
        self.refused: list[str] = []  # server events Pipecat's parser raised on
        self.changed = asyncio.Event()

    def of(self, kind: type[Frame], direction: FrameDirection) -> list[Any]:
        return [f for f in self.frames[direction] if isinstance(f, kind)]

    def down(self, kind: type[Frame]) -> list[Any]:
        return self.of(kind, FrameDirection.DOWNSTREAM)

    def up(self, kind: type[Frame]) -> list[Any]:
        return self.of(kind, FrameDirection.UPSTREAM)

    def check(self) -> None:
        """Fail at once on what stops Pipecat's service: a server event its parser
        refuses (its receive task dies) or an error it pushes (an ``error`` event ends
        its receive loop)."""
        if self.refused:
            pytest.fail(f"Pipecat's parser refused: {self.refused[0]}", pytrace=False)
        if errors := self.up(ErrorFrame):
            pytest.fail(f"Pipecat's service pushed an error: {errors[0].error}", pytrace=False)

    async def wait(
        self, kind: type[Frame], direction: FrameDirection, count: int = 1, within: float = 60
    ) -> None:
        async with asyncio.timeout(within):
            while True:
                self.check()
                if len(self.of(kind, direction)) >= count:
                    return
                self.changed.clear()
                await self.changed.wait()


class Collector(FrameProcessor):
    """Records the frames travelling one way past a point of the pipeline."""

    def __init__(self, seen: Seen, direction: FrameDirection) -> None:
        super().__init__()
        self.seen = seen
        self.direction = direction

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.seen.frames[direction].append(frame)
            self.seen.changed.set()
        await self.push_frame(frame, direction)


async def test_pipecat_service_unchanged_but_for_base_url_and_key(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipecat's ``OpenAIRealtimeLLMService`` as its examples set it up, pointed at
    voxgate by ``base_url`` and a gateway token: a context turn answered in speech, then
    spoken input, turn-taken by the server and transcribed."""
    gw = await gateway_with_token(gateway)
    seen = Seen()
    parse = pc.parse_server_event

    def parse_and_record(text: str) -> pc.ServerEvent | None:
        try:
            return parse(text)
        except Exception as exc:
            seen.refused.append(str(exc))
            seen.changed.set()
            raise

    monkeypatch.setattr(pc, "parse_server_event", parse_and_record)
    llm = OpenAIRealtimeLLMService(
        api_key=TOKEN,
        base_url=gw.ws("/v1/realtime"),
        settings=OpenAIRealtimeLLMService.Settings(
            system_instruction="Be brief.",
            session_properties=pc.SessionProperties(
                audio=pc.AudioConfiguration(
                    input=pc.AudioInput(
                        transcription=pc.InputAudioTranscription(),
                        turn_detection=pc.TurnDetection(silence_duration_ms=500),
                    ),
                    output=pc.AudioOutput(voice="alloy"),
                ),
            ),
        ),
    )
    down, up = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM
    worker = PipelineWorker(
        Pipeline([Collector(seen, up), llm, Collector(seen, down)]),
        params=PipelineParams(audio_in_sample_rate=24000, audio_out_sample_rate=24000),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        context = LLMContext(messages=[{"role": "user", "content": "hello there"}])
        await worker.queue_frame(LLMContextFrame(context))
        await seen.wait(LLMFullResponseEndFrame, down)
        said = "".join(f.text for f in seen.down(LLMTextFrame))
        assert said == "You said: hello there."
        assert seen.down(TTSStartedFrame)
        assert sum(len(f.audio) for f in seen.down(TTSAudioRawFrame)) > 24000

        for piece in pieces(speech_24k()):
            await worker.queue_frame(
                InputAudioRawFrame(audio=piece, sample_rate=24000, num_channels=1)
            )
        await seen.wait(TranscriptionFrame, up)
        await seen.wait(LLMFullResponseEndFrame, down, count=2)
        (heard,) = seen.up(TranscriptionFrame)
        assert "superlative" in heard.text
        assert "superlative" in "".join(f.text for f in seen.down(LLMTextFrame))
        seen.check()
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 10)
    await settled(gw)


#: Refusals the frameworks branch on by OpenAI's error ``code`` (or message): the client
#: events that earn one, and what OpenAI answers.
REFUSALS = [
    pytest.param(
        [{"type": "response.cancel"}],
        "response_cancel_not_active",
        "Cancellation failed",
        id="cancel-nothing",
        # LiveKit (livekit/agents/llm/_realtime/openai.py, RealtimeSession._handle_error)
        # drops this refusal by OpenAI's message, "Cancellation failed: no active response
        # found"; any other message is logged as an error and emitted as a model error.
    ),
    pytest.param(
        [
            {
                "type": "conversation.item.retrieve",
                "item_id": "item_gone",
                "event_id": "rci_item_gone",
            }
        ],
        "item_retrieve_invalid_item_id",
        "",
        id="retrieve-missing",
        # Pipecat (services/openai/realtime/llm.py, _maybe_handle_evt_retrieve_conversation_
        # item_error) fails retrieve_conversation_item() on this code; any other code is
        # fatal: its receive loop pushes an ErrorFrame and stops reading the session.
    ),
    pytest.param(
        [
            {"type": "conversation.item.create", "item": {"id": "item_twice", **_USER_HI}},
            {"type": "conversation.item.create", "item": {"id": "item_twice", **_USER_HI}},
        ],
        "item_create_duplicate_item_id",
        "",
        id="create-duplicate",
        # LiveKit (RealtimeSession._handle_error) takes this code as "the item is already
        # there" when it replays its chat context; any other fails the update.
    ),
    pytest.param(
        [{"type": "input_audio_buffer.commit"}],
        "input_audio_buffer_commit_empty",
        "",
        id="commit-empty",  # LiveKit ignores it while server VAD is on
    ),
    pytest.param(
        [{"type": "response.create"}, {"type": "response.create"}],
        "conversation_already_has_active_response",
        "",
        id="create-while-answering",  # Pipecat logs it and reads on; any other ends its loop
    ),
]


@pytest.mark.parametrize(("send", "code", "message"), REFUSALS)
async def test_refusals_carry_the_codes_frameworks_branch_on(
    pipecat_wire: PipecatWire, send: list[dict[str, Any]], code: str, message: str
) -> None:
    wire = pipecat_wire
    await wire.recv()  # session.created
    for event in send:
        await wire.ws.send(json.dumps(event))
    events = await wire.until("error")
    refused = events[-1]
    assert isinstance(refused, pc.ErrorEvent)
    assert (refused.error.code, refused.error.message[: len(message)]) == (code, message)
    if "event_id" in send[-1]:
        assert refused.error.event_id == send[-1]["event_id"]


# --------------------------------------------------------------------------- LiveKit


@lk.function_tool
async def get_weather(city: str) -> str:
    """Weather for a city."""
    return "sunny"


async def read_reply(gen: lk.GenerationCreatedEvent) -> tuple[list[str], str, bytes, list[Any]]:
    """What LiveKit's session makes of one response: each message's modalities, its text
    (the transcript, for audio), its audio, and the function calls."""
    modalities: list[str] = []
    text, audio = "", b""
    async with asyncio.timeout(60):
        async for message in gen.message_stream:
            modalities += await message.modalities
            text += "".join([str(t) async for t in message.text_stream])
            audio += b"".join([bytes(f.data) async for f in message.audio_stream])
        calls = [c async for c in gen.function_stream]
    return modalities, text, audio, calls


async def test_livekit_realtime_session_unchanged_but_for_base_url_and_key(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """LiveKit Agents' OpenAI ``RealtimeModel`` with its defaults (``semantic_vad``,
    ``gpt-4o-mini-transcribe``, voice ``marin``), pointed at voxgate by ``base_url`` and a
    gateway token: chat context sync, a reply, an audio turn taken by the server, and a
    function call answered through the chat context. LiveKit logs and skips an event its
    handlers fail on, so its log is part of the verdict."""
    gw = await gateway_with_token(gateway)
    caplog.set_level(logging.WARNING, logger="livekit")
    async with aiohttp.ClientSession() as http:
        model = RealtimeModel(api_key=TOKEN, base_url=f"{gw.base}/v1", http_session=http)
        session = model.session()
        errors: list[lk.RealtimeModelError] = []
        heard: list[lk.InputTranscriptionCompleted] = []
        replies: asyncio.Queue[lk.GenerationCreatedEvent] = asyncio.Queue()
        session.on("error", errors.append)
        session.on("input_audio_transcription_completed", heard.append)
        session.on("generation_created", replies.put_nowait)
        try:
            # the agent's chat context goes up as items (the first after "root")
            chat_ctx = lk.ChatContext.empty()
            chat_ctx.add_message(role="user", content="hello there")
            await session.update_chat_ctx(chat_ctx)
            reply = await asyncio.wait_for(session.generate_reply(), 10)
            assert reply.user_initiated  # response.created echoed the request's metadata
            assert (await replies.get()) is reply
            modalities, text, audio, calls = await read_reply(reply)
            assert modalities == ["audio", "text"]
            assert text == "You said: hello there."
            assert len(audio) > 24000 * 2
            assert not calls

            # speech in: voxgate's semantic VAD ends the turn and answers
            for piece in pieces(speech_24k()):
                session.push_audio(rtc.AudioFrame(piece, 24000, 1, len(piece) // 2))
            reply = await asyncio.wait_for(replies.get(), 60)
            assert not reply.user_initiated
            _, text, audio, _ = await read_reply(reply)
            assert "superlative" in text
            assert audio
            async with asyncio.timeout(30):
                while not any(h.is_final for h in heard):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            final = next(h for h in heard if h.is_final)
            assert "superlative" in final.transcript

            # a function call, answered through the chat context as AgentSession does
            await session.update_tools([get_weather])
            reply = await asyncio.wait_for(session.generate_reply(tool_choice="required"), 10)
            *_, calls = await read_reply(reply)
            (call,) = calls
            assert call.name == "get_weather"
            chat_ctx = session.chat_ctx.copy()
            chat_ctx.items.append(
                lk.FunctionCallOutput(call_id=call.call_id, output="sunny", is_error=False)
            )
            await session.update_chat_ctx(chat_ctx)
            reply = await asyncio.wait_for(session.generate_reply(tool_choice="none"), 10)
            _, text, _, calls = await read_reply(reply)
            assert text
            assert not calls

            # LiveKit's mirror of the conversation, built from voxgate's items
            items = session.chat_ctx.items
            kinds = [(i.type, getattr(i, "role", None)) for i in items]
            assert kinds[:2] == [("message", "user"), ("message", "assistant")], kinds
            assert items[0].text_content == "hello there"
            assert items[1].text_content == "You said: hello there."
            assert QUESTION in (items[2].text_content or "")
            assert ("function_call", None) in kinds
            assert ("function_call_output", None) in kinds
        finally:
            await session.aclose()
            await model.aclose()
    assert not errors, errors
    complaints = [r.getMessage() for r in caplog.records if r.name.startswith("livekit")]
    assert not complaints, complaints
    await settled(gw)
