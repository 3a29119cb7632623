"""``/v1/realtime``: the official ``openai`` client against voxgate, and raw WebSocket tests.

The acceptance test of the realtime issue is :func:`test_openai_client_acceptance`: the
client, pointed at voxgate by its WebSocket base URL only, updates the session, holds a
text turn, an audio turn from a recording of real speech, a function-call round trip
(against a local chat-completions server that checks what it receives) and a barge-in.
:func:`test_openai_sdk_unchanged_but_for_base_url_and_key` is the drop-in case: OpenAI's
model name, the HTTP ``base_url`` and a gateway token as the key, nothing else changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pybase64
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from openai.types.realtime import ResponseDoneEvent, SessionCreatedEvent, SessionUpdatedEvent

from conftest import GatewayFactory, settled
from voxgate.audio import read_wav, resample

DATA = Path(__file__).parent / "data"
QUESTION = "and you always want to see it in the superlative degree"
LONG = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)


def speech_24k(name: str = "arctic_a0007.wav", silence_s: float = 1.0) -> bytes:
    wav = read_wav(DATA / name)
    return resample(wav.pcm, wav.sample_rate, 24000) + bytes(int(48000 * silence_s))


def chunks(pcm: bytes, size: int = 4800) -> list[str]:
    return [pybase64.b64encode(pcm[i : i + size]).decode() for i in range(0, len(pcm), size)]


class FakeChat:
    """An OpenAI-compatible chat-completions server: streams a tool call, then an answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeChat:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(request.headers.get("Authorization"))
        if not body.get("stream") or not isinstance(body.get("messages"), list):
            return web.json_response({"error": {"message": "bad request"}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        last = body["messages"][-1]
        if last["role"] == "tool":
            chunks_ = [{"delta": {"content": "It is sunny "}}, {"delta": {"content": "in Paris."}}]
            finish = "stop"
        else:
            call = {"index": 0, "id": "call_1", "type": "function"}
            chunks_ = [
                {
                    "delta": {
                        "tool_calls": [
                            {**call, "function": {"name": "get_weather", "arguments": ""}}
                        ]
                    }
                },
                {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}},
                {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}},
            ]
            finish = "tool_calls"
        for c in chunks_:
            await resp.write(b"data: " + orjson.dumps({"choices": [{"index": 0, **c}]}) + b"\n\n")
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        await resp.write(b"data: " + orjson.dumps(done) + b"\n\n")
        usage = {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 7}}
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
        return resp


@pytest.fixture
async def fake_chat() -> AsyncIterator[FakeChat]:
    async with FakeChat() as chat:
        yield chat


async def collect(conn: Any, until: str = "response.done", within: float = 60) -> list[Any]:
    events = []
    async with asyncio.timeout(within):
        async for ev in conn:
            events.append(ev)
            if ev.type == until:
                return events
    raise AssertionError(f"connection ended before {until}")


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events if e.type != "response.output_audio.delta"]


async def test_openai_sdk_unchanged_but_for_base_url_and_key(gateway: GatewayFactory) -> None:
    """What an application written for OpenAI does, pointed at voxgate by ``base_url`` and
    a gateway token: the model is OpenAI's bare name, every event one of the SDK's types
    (and, by the autouse fixture, valid for them)."""
    gw = await gateway(
        '[accounts.local.gateways.default]\ntokens = [{ name = "app", env = "GW_TOKEN" }]\n',
        {"GW_TOKEN": "sdk-token-0123456789"},
    )
    client = AsyncOpenAI(base_url=f"{gw.base}/v1", api_key="sdk-token-0123456789")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        created = await conn.recv()
        assert isinstance(created, SessionCreatedEvent)
        assert created.session.model == "gpt-realtime"
        await conn.session.update(
            session={"type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"]}
        )
        updated = await conn.recv()
        assert isinstance(updated, SessionUpdatedEvent)
        assert updated.session.instructions == "Be brief."
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello there"}],
            }
        )
        await conn.response.create()
        events = await collect(conn)
    assert all(type(e).__module__.startswith("openai.types.realtime.") for e in events), events
    done = events[-1]
    assert isinstance(done, ResponseDoneEvent)
    assert done.response.status == "completed"
    assert done.response.output[0].content[0].text == "You said: hello there."
    await settled(gw)


async def test_openai_client_acceptance(
    gateway: GatewayFactory, fake_chat: FakeChat, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        f'[llm.fake]\nbase_url = "{fake_chat.url}"\napi_key_env = "FAKE_KEY"\n',
        {"FAKE_KEY": "sk-fake"},
    )
    client = AsyncOpenAI(api_key="unused", websocket_base_url=gw.ws("/v1"))
    async with client.realtime.connect(model="voxgate/echo") as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        assert created.session.model == "voxgate/echo"

        # session.update
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 400}},
                    "output": {"voice": "alloy"},
                },
            }
        )
        updated = await conn.recv()
        assert updated.type == "session.updated", updated
        assert updated.session.instructions == "Be brief."
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 400

        # a text turn, answered in text
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello there"}],
            }
        )
        await conn.response.create(response={"output_modalities": ["text"]})
        events = await collect(conn)
        assert types(events) == [
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * 4,
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        done = events[-1].response
        assert done.status == "completed"
        assert done.output[0].content[0].text == "You said: hello there."
        assert done.usage.output_tokens == 4

        # an audio turn: real speech in, transcript, spoken answer
        for piece in chunks(speech_24k()):
            await conn.input_audio_buffer.append(audio=piece)
        events = await collect(conn)
        kinds = types(events)
        assert kinds[:5] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        completed = next(
            e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
        )
        assert "superlative" in completed.transcript
        audio = b"".join(
            pybase64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
        )
        assert len(audio) > 24000 * 2  # more than a second of 24 kHz speech
        said = next(e for e in events if e.type == "response.output_audio_transcript.done")
        assert said.transcript.startswith("You said:")
        assert "superlative" in said.transcript
        assert events[-1].response.status == "completed"

        # a function call round trip on an OpenAI-compatible endpoint
        await conn.session.update(
            session={
                "type": "realtime",
                "model": "fake/tiny-model",
                "output_modalities": ["text"],
                "tools": [
                    {
                        "type": "function",
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    }
                ],
                "tool_choice": "auto",
            }
        )
        assert (await conn.recv()).type == "session.updated"
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather in Paris?"}],
            }
        )
        await conn.response.create()
        events = await collect(conn)
        args_done = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert args_done.name == "get_weather"
        assert orjson.loads(args_done.arguments) == {"city": "Paris"}
        assert [e.delta for e in events if e.type == "response.function_call_arguments.delta"] == [
            '{"city":',
            ' "Paris"}',
        ]
        call = events[-1].response.output[0]
        assert call.type == "function_call"
        assert call.call_id == "call_1"
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "sunny"}'}
        )
        await conn.response.create()
        events = await collect(conn)
        assert events[-1].response.output[0].content[0].text == "It is sunny in Paris."
        assert events[-1].response.usage.input_tokens == 40
        first, second = fake_chat.requests
        assert fake_chat.headers == ["Bearer sk-fake", "Bearer sk-fake"]
        assert first["model"] == "tiny-model"
        assert first["tool_choice"] == "auto"
        assert first["tools"][0]["function"]["name"] == "get_weather"
        assert first["messages"][0] == {"role": "system", "content": "Be brief."}
        roles = [m["role"] for m in second["messages"]]
        assert roles[-2:] == ["assistant", "tool"]
        assert (
            second["messages"][-2]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
        )
        assert second["messages"][-1] == {
            "role": "tool",
            "content": '{"sky": "sunny"}',
            "tool_call_id": "call_1",
        }
        # the earlier audio turn reached the model as its transcript
        assert any(QUESTION in (m["content"] or "") for m in first["messages"])

        # barge-in: speech while the agent is answering cancels the answer
        await conn.session.update(
            session={
                "type": "realtime",
                "model": "voxgate/echo",
                "output_modalities": ["audio"],
                "tools": [],
            }
        )
        assert (await conn.recv()).type == "session.updated"
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": LONG}],
            }
        )
        await conn.response.create()
        async with asyncio.timeout(30):
            async for ev in conn:
                if ev.type == "response.output_audio.delta":
                    break
        for piece in chunks(speech_24k("arctic_a0009.wav", silence_s=0.0)):
            await conn.input_audio_buffer.append(audio=piece)
        events = await collect(conn)
        kinds = types(events)
        assert "input_audio_buffer.speech_started" in kinds
        done = events[-1].response
        assert done.status == "cancelled"
        assert done.status_details.reason == "turn_detected"
        heard = done.output[0].content[0].transcript
        assert heard
        assert len(heard) < len("You said: " + LONG)
        assert done.output[0].status == "incomplete"
        item_id = done.output[0].id
        # the client says where its play-out stopped: the history keeps what was heard
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=500)
        async with asyncio.timeout(30):
            async for ev in conn:
                if ev.type == "conversation.item.truncated":
                    break
        await conn.conversation.item.retrieve(item_id=item_id)
        async with asyncio.timeout(30):
            async for ev in conn:
                if ev.type == "conversation.item.retrieved":
                    assert len(ev.item.content[0].transcript) < len(heard)
                    break
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs") as r:
        records = (await r.json())["records"]
    realtime = [r for r in records if r["kind"] == "realtime"]
    assert realtime[0]["model"] == "voxgate/echo"
    assert realtime[0]["input_tokens"] > 0
    assert realtime[0]["audio_seconds"] > 5
