"""``/v1/realtime`` over raw WebSockets: every client event, its errors, event order, auth,
client secrets, beta names, the Inworld address and the relay of upstream realtime models."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pybase64
import pytest

from conftest import UPGRADE_HEADERS, GatewayFactory, provider_overrides, settled
from test_realtime_e2e import chunks, speech_24k
from voxgate.audio import Encoding, from_pcm16, resample
from voxgate.testing import RecordingUpstream
from voxgate.testing.clock import FakeClock

TOKEN = "rt-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOKENS = '[accounts.local.gateways.default]\ntokens = [{ name = "app", env = "GW_TOKEN" }]\n'


class RT:
    """A raw realtime client: JSON events in and out."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_str(orjson.dumps({"type": kind, **fields}).decode())

    async def recv(self, within: float = 30) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=within)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        event: dict[str, Any] = orjson.loads(msg.data)
        return event

    async def until(self, kind: str, within: float = 60) -> list[dict[str, Any]]:
        out = []
        async with asyncio.timeout(within):
            while True:
                ev = await self.recv()
                out.append(ev)
                if ev["type"] == kind:
                    return out


async def connect(
    http: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[aiohttp.ClientWebSocketResponse, RT]:
    ws = await http.ws_connect(url, **kwargs)
    rt = RT(ws)
    first = await rt.recv()
    assert first["type"] == "session.created", first
    return ws, rt


def text_item(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
        **extra,
    }


async def test_bad_events_get_errors_and_the_session_goes_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    await rt.send("conversation.item.create", item=text_item("keep me", id="item_keep"))
    assert (await rt.recv())["type"] == "conversation.item.added"
    assert (await rt.recv())["type"] == "conversation.item.done"
    cases: list[tuple[Any, str, str | None]] = [
        ("{not json", "invalid_json", None),
        ({"type": "nope"}, "invalid_value", "type"),
        (
            {
                "type": "session.update",
                "session": {
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}
                },
            },
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}},
            "invalid_value",
            "session.audio.output.voice",
        ),
        (
            {"type": "session.update", "session": {"model": "nowhere/model"}},
            "invalid_value",
            "session.model",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/ogg"}}}},
            },
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {"type": "session.update", "session": {"tools": [{"type": "function"}]}},
            "invalid_type",
            "session.tools[0].name",
        ),
        ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_value", "audio"),
        (
            {
                "type": "input_audio_buffer.append",
                "audio": pybase64.b64encode(b"\x01\x02\x03").decode(),
            },
            "invalid_value",
            "audio",
        ),
        ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "item_nope",
                "content_index": 0,
                "audio_end_ms": 10,
            },
            "item_truncate_invalid_item_id",
            "item_id",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "item_keep",
                "content_index": 0,
                "audio_end_ms": 10,
            },
            "invalid_value",
            "item_id",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "item_keep", "audio_end_ms": -1},
            "invalid_value",
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.delete", "item_id": "item_nope"},
            "item_delete_invalid_item_id",
            "item_id",
        ),
        ({"type": "conversation.item.retrieve"}, "missing_required_parameter", "item_id"),
        (
            {
                "type": "conversation.item.create",
                "item": text_item("x"),
                "previous_item_id": "item_nope",
            },
            "item_not_found",
            "previous_item_id",
        ),
        (
            {"type": "conversation.item.create", "item": text_item("again", id="item_keep")},
            "item_create_duplicate_item_id",
            "item.id",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "robot", "content": []},
            },
            "invalid_value",
            "item.role",
        ),
        ({"type": "response.cancel"}, "response_cancel_not_active", None),
        (
            {
                "type": "response.create",
                "response": {"input": [{"type": "item_reference", "id": "item_nope"}]},
            },
            "item_not_found",
            "response.input[0]",
        ),
        (
            {"type": "response.create", "response": {"conversation": "other"}},
            "invalid_value",
            "response.conversation",
        ),
    ]
    for i, (event, code, param) in enumerate(cases):
        if isinstance(event, dict):
            event = orjson.dumps({**event, "event_id": f"evt_{i}"}).decode()
        await ws.send_str(event)
        err = await rt.recv()
        assert err["type"] == "error", (event, err)
        assert err["error"]["code"] == code, (event, err)
        assert err["error"]["param"] == param, (event, err)
        assert err["error"]["type"] == "invalid_request_error"
        assert err["error"]["message"]
        assert err["error"]["event_id"] == (None if i == 0 else f"evt_{i}"), err
    await ws.send_bytes(b"\x00\x01")
    assert (await rt.recv())["error"]["code"] == "invalid_message"
    # nothing was lost: the item is there and the session answers
    await rt.send("conversation.item.retrieve", item_id="item_keep")
    got = await rt.recv()
    assert got["type"] == "conversation.item.retrieved"
    assert got["item"]["content"][0]["text"] == "keep me"
    await rt.send("response.create", response={"output_modalities": ["text"]})
    events = await rt.until("response.done")
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "You said: keep me."
    await rt.send("conversation.item.delete", item_id="item_keep")
    deleted = await rt.recv()
    assert deleted["type"] == "conversation.item.deleted"
    assert deleted["item_id"] == "item_keep"
    await ws.close()


async def test_manual_turn_in_mulaw_event_order_and_delete(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    await rt.send(
        "session.update",
        session={
            "type": "realtime",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcmu"}},
            },
        },
    )
    updated = await rt.recv()
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    pcm8k = resample(speech_24k(silence_s=0.3), 24000, 8000)
    for piece in chunks(from_pcm16(pcm8k, Encoding.MULAW), 1600):
        await rt.send("input_audio_buffer.append", audio=piece)
    await rt.send("input_audio_buffer.commit", event_id="evt_commit")
    committed = await rt.until("input_audio_buffer.committed")
    item_id = committed[-1]["item_id"]
    assert [e["type"] for e in await rt.until("conversation.item.done")] == [
        "conversation.item.added",
        "conversation.item.done",
    ]
    done = await rt.until("conversation.item.input_audio_transcription.completed")
    # 8 kHz µ-law keeps the telephone band only: pocketsphinx gets the start right
    transcript = done[-1]["transcript"]
    assert transcript.startswith("and you")
    await rt.send("response.create")
    events = await rt.until("response.done")
    kinds = [e["type"] for e in events if e["type"] != "response.output_audio.delta"]
    assert kinds == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        *[k for k in kinds if k == "response.output_audio_transcript.delta"],
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    audio = b"".join(
        pybase64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    seconds = events[-1]["response"]["usage"]["output_audio_seconds"]
    assert len(audio) == pytest.approx(seconds * 8000, abs=8)  # µ-law: one byte a sample at 8 kHz
    answer = events[-1]["response"]["output"][0]
    # the history holds the user's audio item (with its transcript) and the answer
    await rt.send("conversation.item.retrieve", item_id=item_id)
    got = await rt.recv()
    assert got["item"]["content"][0]["transcript"] == transcript
    await rt.send(
        "conversation.item.truncate", item_id=answer["id"], content_index=0, audio_end_ms=999_999
    )
    err = await rt.recv()
    assert err["error"]["param"] == "audio_end_ms"
    await rt.send("conversation.item.delete", item_id=item_id)
    assert (await rt.recv())["type"] == "conversation.item.deleted"
    await rt.send("conversation.item.retrieve", item_id=item_id)
    assert (await rt.recv())["error"]["code"] == "item_retrieve_invalid_item_id"
    await ws.close()


async def test_cancel_clear_out_of_band_and_max_tokens(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    await rt.send(
        "conversation.item.create",
        item=text_item("one two three four five six seven eight nine ten"),
    )
    await rt.until("conversation.item.done")
    # max_output_tokens: the answer stops and says why
    await rt.send(
        "response.create", response={"output_modalities": ["text"], "max_output_tokens": 3}
    )
    done = (await rt.until("response.done"))[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"]["reason"] == "max_output_tokens"
    assert done["output"][0]["content"][0]["text"] == "You said: one"
    # out of band: its own input, nothing added to the conversation, metadata echoed
    await rt.send(
        "response.create",
        response={
            "conversation": "none",
            "output_modalities": ["text"],
            "input": [text_item("classify this")],
            "metadata": {"purpose": "classify"},
        },
    )
    events = await rt.until("response.done")
    assert "conversation.item.added" not in [e["type"] for e in events]
    oob = events[-1]["response"]
    assert oob["conversation_id"] is None
    assert oob["metadata"] == {"purpose": "classify"}
    assert oob["output"][0]["content"][0]["text"] == "You said: classify this."
    # response.cancel while audio is being made
    await rt.send("response.create")
    await rt.until("response.created")
    await rt.send("response.cancel", event_id="evt_cancel")
    done = (await rt.until("response.done"))[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"
    # a second response while one runs is refused; output_audio_buffer.clear cancels
    await rt.send("response.create")
    await rt.until("response.created")
    await rt.send("response.create", event_id="evt_twice")
    err = await rt.until("error")
    assert err[-1]["error"]["code"] == "conversation_already_has_active_response"
    await rt.send("output_audio_buffer.clear")
    events = await rt.until("response.done")
    assert "output_audio_buffer.cleared" in [e["type"] for e in events]
    assert events[-1]["response"]["status"] == "cancelled"
    # input buffer clear
    await rt.send("input_audio_buffer.append", audio=chunks(bytes(9600))[0])
    await rt.send("input_audio_buffer.clear")
    assert (await rt.until("input_audio_buffer.cleared"))[-1][
        "type"
    ] == "input_audio_buffer.cleared"
    await rt.send("input_audio_buffer.commit")
    assert (await rt.recv())["error"]["code"] == "input_audio_buffer_commit_empty"
    await ws.close()


async def test_idle_timeout_and_semantic_vad(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    td = {"type": "server_vad", "idle_timeout_ms": 5000}
    await rt.send(
        "session.update",
        session={"output_modalities": ["text"], "audio": {"input": {"turn_detection": td}}},
    )
    await rt.until("session.updated")
    await rt.send("conversation.item.create", item=text_item("hi"))
    await rt.send("response.create")
    await rt.until("response.done")
    for piece in chunks(bytes(48000 * 6)):  # six seconds of silence after the answer
        await rt.send("input_audio_buffer.append", audio=piece)
    events = await rt.until("response.done")
    trig = next(e for e in events if e["type"] == "input_audio_buffer.timeout_triggered")
    assert trig["audio_end_ms"] - trig["audio_start_ms"] >= 5000
    assert events[-1]["response"]["status"] == "completed"
    # semantic_vad: a finished sentence ends the turn
    await rt.send(
        "session.update",
        session={
            "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}
        },
    )
    updated = (await rt.until("session.updated"))[-1]
    assert updated["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "high"
    for piece in chunks(speech_24k(silence_s=2.5)):
        await rt.send("input_audio_buffer.append", audio=piece)
    events = await rt.until("response.done")
    assert "input_audio_buffer.speech_stopped" in [e["type"] for e in events]
    await ws.close()


async def test_auth_client_secrets_beta_and_inworld(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(TOKENS, {"GW_TOKEN": TOKEN})
    clock = FakeClock()
    gw.services.clock = clock
    url = gw.ws("/v1/realtime?model=voxgate/echo")
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(url)
    assert exc.value.status == 401
    async with http.get(f"{gw.base}/v1/realtime") as r:
        assert r.status == 426
    async with http.get(
        f"{gw.base}/v1/realtime?model=nowhere/x",
        headers={**AUTH, **UPGRADE_HEADERS},
    ) as r:
        assert r.status == 400
        assert "nowhere" in (await r.json())["error"]["message"]
    # a client secret for the browser, bound to its session
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 60},
        "session": {"type": "realtime", "instructions": "From the secret."},
    }
    async with http.post(f"{gw.base}/v1/realtime/client_secrets", json=body) as r:
        assert r.status == 401
    async with http.post(f"{gw.base}/v1/realtime/client_secrets", json=body, headers=AUTH) as r:
        assert r.status == 200
        secret = await r.json()
    assert secret["value"].startswith("ek_")
    assert secret["expires_at"] == int(clock.wall()) + 60
    assert secret["session"]["instructions"] == "From the secret."
    async with http.post(
        f"{gw.base}/v1/realtime/client_secrets", json={"session": {"model": 3}}, headers=AUTH
    ) as r:
        assert r.status == 400
        assert "session.model" in (await r.json())["error"]["message"]
    protocols = ("realtime", f"openai-insecure-api-key.{secret['value']}")
    ws, rt = await connect(http, url, protocols=protocols)
    assert ws.protocol == "realtime"
    await ws.close()
    ws = await http.ws_connect(gw.ws("/v1/realtime"), protocols=protocols)
    created = orjson.loads((await ws.receive()).data)
    assert created["session"]["instructions"] == "From the secret."
    await ws.close()
    clock.advance(61)
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(url, protocols=protocols)
    assert exc.value.status == 401
    # beta: names and flat session fields both ways
    ws, rt = await connect(http, url, headers={**AUTH, "OpenAI-Beta": "realtime=v1"})
    await rt.send(
        "session.update",
        session={"modalities": ["text"], "input_audio_format": "g711_ulaw", "turn_detection": None},
    )
    updated = await rt.recv()
    assert updated["session"]["input_audio_format"] == "g711_ulaw"
    assert updated["session"]["modalities"] == ["text"]
    await rt.send("conversation.item.create", item=text_item("beta"))
    assert (await rt.recv())["type"] == "conversation.item.created"
    await rt.send("response.create")
    kinds = [e["type"] for e in await rt.until("response.done")]
    assert "response.text.delta" in kinds
    assert "response.text.done" in kinds
    await ws.close()
    async with http.post(
        f"{gw.base}/v1/realtime/sessions", json={"modalities": ["text"]}, headers=AUTH
    ) as r:
        beta_session = await r.json()
    assert beta_session["client_secret"]["value"].startswith("ek_")
    # Inworld's address, its key sent as Basic
    ws, rt = await connect(
        http,
        gw.ws("/api/v1/realtime/session?key=my-session&protocol=realtime"),
        headers={"Authorization": f"Basic {TOKEN}"},
    )
    await ws.close()
    await settled(gw)


async def test_upstream_realtime_model_is_relayed(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    toml = (
        provider_overrides(upstream.url, "openai")
        + TOKENS
        + 'keys = { openai = { env = "K_OPENAI" } }\n'
    )
    gw = await gateway(toml, {"GW_TOKEN": TOKEN, "K_OPENAI": "sk-stored"})
    async with http.ws_connect(
        gw.ws("/v1/realtime?model=openai/gpt-realtime"),
        protocols=("realtime", f"openai-insecure-api-key.{TOKEN}"),
    ) as ws:
        await ws.send_str('{"type": "session.update", "session": {}}')
        echoed = await ws.receive(timeout=5)
        assert orjson.loads(echoed.data)["type"] == "session.update"
    hs = upstream.handshakes[0]
    assert hs.query_string == "model=gpt-realtime"
    assert hs.headers["authorization"] == "Bearer sk-stored"
    assert TOKEN not in repr(hs.headers) + repr(hs.subprotocols)
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs", headers=AUTH) as r:
        record = (await r.json())["records"][0]
    assert record["kind"] == "realtime"
    assert record["provider"] == "openai"
    assert record["model"] == "gpt-realtime"
    assert record["token_name"] == "app"


async def test_limits_close_with_an_error_event_first(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        "[accounts.local.gateways.default]\nlimits = { max_message_bytes = 4096, messages_per_minute = 20 }\n"
    )
    url = gw.ws("/v1/realtime?model=voxgate/echo")
    ws, rt = await connect(http, url)
    await rt.send("input_audio_buffer.append", audio="A" * 8000)
    err = await rt.recv()
    assert err["type"] == "error"
    assert err["error"]["code"] == "message_too_large"
    assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4002
    ws, rt = await connect(http, url)
    for _ in range(25):
        await rt.send("input_audio_buffer.clear")
    kinds = []
    while (msg := await ws.receive(timeout=10)).type is aiohttp.WSMsgType.TEXT:
        kinds.append(orjson.loads(msg.data).get("error", {}).get("code"))
    assert kinds[-1] == "rate_limited"
    assert ws.close_code == 4001
    await settled(gw)


async def test_a_spoken_answer_that_only_calls_a_function_has_no_message(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """As OpenAI answers it: the function call alone, no empty audio message beside it
    (LiveKit assumes one message per response, and got an empty one)."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=gpt-realtime"))
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    await rt.send(
        "session.update",
        session={"type": "realtime", "tools": [tool], "tool_choice": "required"},
    )
    await rt.until("session.updated")
    await rt.send("conversation.item.create", item=text_item("Weather in Paris?"))
    await rt.send("response.create")
    events = await rt.until("response.done")
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["function_call"]
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["function_call"]
    assert not [e for e in events if e["type"].startswith("response.output_audio")]
    await ws.close()
    await settled(gw)


async def test_transcription_models_of_other_catalogues_use_the_speech_aliases(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """``audio.input.transcription.model`` takes the speech aliases too: Deepgram's
    ``nova-3`` transcribes on the default STT, a name nothing answers to is refused."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=voxgate/echo"))
    bad = {"audio": {"input": {"transcription": {"model": "no-such-stt"}}}}
    await rt.send("session.update", session=bad)
    err = (await rt.until("error"))[-1]["error"]
    assert err["param"] == "session.audio.input.transcription.model"
    session = {
        "output_modalities": ["text"],
        "audio": {"input": {"transcription": {"model": "nova-3"}}},
    }
    await rt.send("session.update", session=session)
    updated = (await rt.until("session.updated"))[-1]["session"]
    assert updated["audio"]["input"]["transcription"]["model"] == "nova-3"
    for piece in chunks(speech_24k(silence_s=1.0)):
        await rt.send("input_audio_buffer.append", audio=piece)
    done = (await rt.until("conversation.item.input_audio_transcription.completed"))[-1]
    assert "superlative" in done["transcript"].lower()
    await ws.close()
    await settled(gw)
