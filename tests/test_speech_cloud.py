"""Cloud speech engines against local servers that speak each provider's documented
messages and check what they receive; the translators themselves without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pybase64
import pytest
from aiohttp import web
from tests.conftest import GatewayFactory, settled
from tests.test_speech_e2e import receive_until

from voxgate.engines.base import Finalized, SpeechStarted, Transcript
from voxgate.protocols.speech.providers import (
    AudioOut,
    CartesiaTTS,
    DeepgramSTT,
    DeepgramTTS,
    ElevenLabsTTS,
    ProviderFailed,
    UtteranceDone,
)

AUDIO = [b"\x01\x00" * 240, b"\x02\x00" * 240]  # two chunks of 10 ms at 24 kHz


# --- translators ---------------------------------------------------------------------------


def test_elevenlabs_translator() -> None:
    t = ElevenLabsTTS(
        "voice1", "eleven_flash_v2_5", 23000, 1.1, {"voice_settings": {"stability": 0.3}}
    )
    assert t.sample_rate == 24000
    assert t.path() == "text-to-speech/voice1/stream-input"
    assert t.query() == "model_id=eleven_flash_v2_5&output_format=pcm_24000"
    init, text, end = (orjson.loads(f) for f in t.utterance("Hello.", "u1"))
    assert init == {"text": " ", "voice_settings": {"stability": 0.3, "speed": 1.1}}
    assert text == {"text": "Hello. "}
    assert end == {"text": ""}
    audio = pybase64.b64encode(b"\1\2").decode()
    assert t.receive(orjson.dumps({"audio": audio, "isFinal": None}), "u1") == [AudioOut(b"\1\2")]
    assert t.receive('{"isFinal": true}', "u1") == [UtteranceDone()]
    failed = t.receive('{"message": "quota exceeded", "error": "quota", "code": 1008}', "u1")
    assert failed == [ProviderFailed("elevenlabs: quota exceeded")]


def test_cartesia_translator() -> None:
    t = CartesiaTTS("v", "sonic-2", 24000, "en")
    (req,) = (orjson.loads(f) for f in t.utterance("Hi there.", "c1"))
    assert req["voice"] == {"mode": "id", "id": "v"}
    assert req["output_format"] == {
        "container": "raw",
        "encoding": "pcm_s16le",
        "sample_rate": 24000,
    }
    assert (req["context_id"], req["continue"], req["language"]) == ("c1", False, "en")
    assert orjson.loads(t.cancel("c1")[0]) == {"context_id": "c1", "cancel": True}
    chunk = {"type": "chunk", "data": "AQI=", "done": False, "status_code": 206, "context_id": "c1"}
    assert t.receive(orjson.dumps(chunk), "c1") == [AudioOut(b"\1\2")]
    assert t.receive(orjson.dumps({**chunk, "context_id": "old"}), "c1") == []
    assert t.receive(
        '{"type": "done", "done": true, "status_code": 206, "context_id": "c1"}', "c1"
    ) == [UtteranceDone()]
    err = t.receive(
        '{"type": "error", "status_code": 429, "title": "Too many", "message": "slow down", "context_id": "c1"}',
        "c1",
    )
    assert err == [ProviderFailed("cartesia: slow down", retryable=True)]


def test_deepgram_translators() -> None:
    t = DeepgramTTS("aura-2-thalia-en", 22050)
    assert t.query() == "model=aura-2-thalia-en&encoding=linear16&sample_rate=24000"
    assert [orjson.loads(f)["type"] for f in t.utterance("Hi.", "x")] == ["Speak", "Flush"]
    assert t.receive(b"\1\2", "x") == [AudioOut(b"\1\2")]
    assert t.receive('{"type": "Flushed", "sequence_id": 0}', "x") == [UtteranceDone()]
    assert orjson.loads(t.cancel("x")[0]) == {"type": "Clear"}
    assert t.receive(b"late audio", "x") == []  # dropped until Cleared
    assert t.receive('{"type": "Cleared", "sequence_id": 1}', "x") == []
    assert t.receive(b"\3\4", "x") == [AudioOut(b"\3\4")]

    s = DeepgramSTT("nova-3", "en", interim=True)
    assert "interim_results=true" in s.query()
    assert "language=en" in s.query()
    s.audio(b"\0" * 32000)
    assert s.receive('{"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.5}') == [
        SpeechStarted(0.5)
    ]
    interim = {
        "type": "Results",
        "is_final": False,
        "start": 0.4,
        "channel": {"alternatives": [{"transcript": "hel", "confidence": 0.5}]},
    }
    assert s.receive(orjson.dumps(interim).decode()) == [Transcript("hel", False, 0.5, 0.4)]
    final = {
        **interim,
        "is_final": True,
        "from_finalize": True,
        "channel": {"alternatives": [{"transcript": "hello", "confidence": 0.9}]},
    }
    assert s.receive(orjson.dumps(final).decode()) == [
        Transcript("hello", True, 0.9, 0.4),
        Finalized("hello", 1.0, 0.4),
    ]
    assert s.receive("not json") == []


# --- a local server speaking the providers' protocols -------------------------------------


@dataclass
class FakeProviders:
    """ElevenLabs, Cartesia and Deepgram endpoints under one local server."""

    key: str = "provider-key"
    received: dict[str, list[Any]] = field(default_factory=dict)
    handshakes: dict[str, dict[str, str]] = field(default_factory=dict)
    url: str = ""

    def note(self, name: str, item: Any) -> None:
        self.received.setdefault(name, []).append(item)

    async def elevenlabs(self, request: web.Request) -> web.StreamResponse:
        assert request.headers.get("xi-api-key") == self.key
        self.handshakes["elevenlabs"] = {"path": request.path, **request.query}
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            data = orjson.loads(msg.data)
            self.note("elevenlabs", data)
            if data["text"] == "":
                for chunk in AUDIO:
                    await ws.send_str(
                        orjson.dumps(
                            {"audio": pybase64.b64encode(chunk).decode(), "isFinal": None}
                        ).decode()
                    )
                await ws.send_str('{"isFinal": true}')
                await ws.close()
        return ws

    async def cartesia(self, request: web.Request) -> web.StreamResponse:
        assert request.query.get("api_key") == self.key
        self.handshakes["cartesia"] = dict(request.query)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            data = orjson.loads(msg.data)
            self.note("cartesia", data)
            if "transcript" in data:
                ctx = data["context_id"]
                if data["transcript"] == "fail please.":
                    await ws.send_str(
                        orjson.dumps(
                            {
                                "type": "error",
                                "done": True,
                                "status_code": 400,
                                "error": "Invalid voice",
                                "context_id": ctx,
                            }
                        ).decode()
                    )
                    continue
                for chunk in AUDIO:
                    await ws.send_str(
                        orjson.dumps(
                            {
                                "type": "chunk",
                                "data": pybase64.b64encode(chunk).decode(),
                                "done": False,
                                "status_code": 206,
                                "context_id": ctx,
                            }
                        ).decode()
                    )
                await ws.send_str(
                    orjson.dumps(
                        {"type": "done", "done": True, "status_code": 206, "context_id": ctx}
                    ).decode()
                )
        return ws

    async def deepgram_speak(self, request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Authorization") == f"Token {self.key}"
        self.handshakes["speak"] = dict(request.query)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str('{"type": "Metadata", "request_id": "r1"}')
        seq = 0
        async for msg in ws:
            data = orjson.loads(msg.data)
            self.note("speak", data)
            if data["type"] == "Flush":
                for chunk in AUDIO:
                    await ws.send_bytes(chunk)
                await ws.send_str(orjson.dumps({"type": "Flushed", "sequence_id": seq}).decode())
                seq += 1
            elif data["type"] == "Clear":
                await ws.send_str(orjson.dumps({"type": "Cleared", "sequence_id": seq}).decode())
        return ws

    async def deepgram_listen(self, request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Authorization") == f"Token {self.key}"
        self.handshakes["listen"] = dict(request.query)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        audio = 0
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                audio += len(msg.data)
                if audio == len(msg.data):
                    await ws.send_str(
                        '{"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.1}'
                    )
                    await ws.send_str(
                        orjson.dumps(
                            {
                                "type": "Results",
                                "is_final": False,
                                "start": 0.1,
                                "channel": {
                                    "alternatives": [{"transcript": "hello", "confidence": 0.6}]
                                },
                            }
                        ).decode()
                    )
                continue
            data = orjson.loads(msg.data)
            self.note("listen", data)
            if data["type"] == "Finalize":
                self.note("listen_bytes", audio)
                await ws.send_str(
                    orjson.dumps(
                        {
                            "type": "Results",
                            "is_final": True,
                            "from_finalize": True,
                            "start": 0.1,
                            "channel": {
                                "alternatives": [{"transcript": "hello world", "confidence": 0.95}]
                            },
                        }
                    ).decode()
                )
        return ws

    def toml(self) -> str:
        return (
            f'[providers.elevenlabs]\nurl = "{self.url}/elevenlabs"\n'
            f'[providers.cartesia]\nurl = "{self.url}/cartesia"\n'
            f'[providers.deepgram]\nurl = "{self.url}/deepgram"\n'
            "[accounts.local.gateways.default]\n"
            'keys = { elevenlabs = { env = "K" }, cartesia = { env = "K" }, deepgram = { env = "K" } }\n'
        )


@pytest.fixture
async def providers() -> AsyncIterator[FakeProviders]:
    fake = FakeProviders()
    app = web.Application()
    app.router.add_get("/elevenlabs/text-to-speech/{voice}/stream-input", fake.elevenlabs)
    app.router.add_get("/cartesia/tts/websocket", fake.cartesia)
    app.router.add_get("/deepgram/speak", fake.deepgram_speak)
    app.router.add_get("/deepgram/listen", fake.deepgram_listen)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"ws://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


async def unified_tts(
    http: aiohttp.ClientSession, url: str, text: str, **init: Any
) -> list[dict[str, Any]]:
    async with http.ws_connect(url) as ws:
        await ws.send_json({"type": "init", **init})
        events = await receive_until(ws, "ready")
        await ws.send_json({"type": "input_text", "text": text})
        await ws.send_json({"type": "flush"})
        return events + await receive_until(ws, "audio_end")


@pytest.mark.parametrize("engine", ["elevenlabs", "cartesia", "deepgram"])
async def test_unified_tts_over_each_provider(
    engine: str, gateway: GatewayFactory, http: aiohttp.ClientSession, providers: FakeProviders
) -> None:
    gw = await gateway(providers.toml(), env={"K": providers.key})
    events = await unified_tts(http, gw.ws(f"/v1/tts/{engine}"), "Hello world.", sample_rate=24000)
    assert events[0]["capabilities"]["local"] is False
    audio = b"".join(pybase64.b64decode(e["data"]) for e in events if e["type"] == "audio_chunk")
    assert audio == b"".join(AUDIO)  # 24 kHz in, 24 kHz out: bytes unchanged
    assert events[-1]["total_duration_ms"] == pytest.approx(20.0)
    sent = providers.received
    if engine == "elevenlabs":
        assert [m["text"] for m in sent["elevenlabs"]] == [" ", "Hello world. ", ""]
        assert providers.handshakes["elevenlabs"]["output_format"] == "pcm_24000"
        assert providers.handshakes["elevenlabs"]["path"].endswith(
            "/21m00Tcm4TlvDq8ikWAM/stream-input"
        )
    elif engine == "cartesia":
        (req,) = sent["cartesia"]
        assert (req["transcript"], req["continue"], req["model_id"]) == (
            "Hello world.",
            False,
            "sonic-2",
        )
        assert providers.handshakes["cartesia"]["cartesia_version"] == "2025-04-16"
    else:
        assert sent["speak"] == [{"type": "Speak", "text": "Hello world."}, {"type": "Flush"}]
        assert providers.handshakes["speak"] == {
            "model": "aura-2-thalia-en",
            "encoding": "linear16",
            "sample_rate": "24000",
        }
    await settled(gw)
    records = (await (await http.get(f"{gw.base}/v1/local/default/logs")).json())["records"]
    assert records[0]["provider"] == engine
    assert records[0]["characters"] == len("Hello world.")


async def test_provider_error_becomes_an_error_event(
    gateway: GatewayFactory, http: aiohttp.ClientSession, providers: FakeProviders
) -> None:
    gw = await gateway(providers.toml(), env={"K": providers.key})
    async with http.ws_connect(gw.ws("/v1/tts/cartesia")) as ws:
        await ws.send_json({"type": "init"})
        await receive_until(ws, "ready")
        await ws.send_json({"type": "input_text", "text": "fail please."})
        await ws.send_json({"type": "flush"})
        events = await receive_until(ws, "audio_end")
        err = next(e for e in events if e["type"] == "error")
        assert err["code"] == "upstream_error"
        assert "Invalid voice" in err["message"]
        # the session goes on
        await ws.send_json({"type": "input_text", "text": "Then this."})
        await ws.send_json({"type": "flush"})
        assert (await receive_until(ws, "audio_end"))[-1]["total_duration_ms"] == pytest.approx(
            20.0
        )


async def test_unreachable_provider_is_retryable(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway('[providers.deepgram]\nurl = "ws://127.0.0.1:9/deepgram"\n')
    async with http.ws_connect(gw.ws("/v1/stt/deepgram")) as ws:
        await ws.send_json({"type": "start"})
        events = await receive_until(ws, "session_ended")
        assert events[0]["code"] == "upstream_error"
        assert events[0]["retryable"] is True
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1011


async def test_unified_stt_over_deepgram(
    gateway: GatewayFactory, http: aiohttp.ClientSession, providers: FakeProviders
) -> None:
    gw = await gateway(providers.toml(), env={"K": providers.key})
    async with http.ws_connect(gw.ws("/v1/stt/deepgram")) as ws:
        await ws.send_json(
            {"type": "start", "sample_rate": 8000, "encoding": "mulaw", "language": "en"}
        )
        ready = (await receive_until(ws, "ready"))[-1]
        assert ready["model_id"] == "nova-3"
        await ws.send_bytes(b"\xff" * 800)  # 100 ms of µ-law silence
        await ws.send_json({"type": "finalize"})
        events = await receive_until(ws, "final_transcript")
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["speech_started", "transcript"]
    assert events[-1]["text"] == "hello world"
    assert events[-1]["audio_duration_seconds"] == pytest.approx(0.1)
    assert providers.handshakes["listen"]["sample_rate"] == "16000"
    assert providers.handshakes["listen"]["language"] == "en"
    # 100 ms at 16 kHz PCM16 (resampled; the filter's tail flushed at finalize)
    assert providers.received["listen_bytes"] == [pytest.approx(3200, abs=64)]


async def test_native_protocol_becomes_a_relay(
    gateway: GatewayFactory, http: aiohttp.ClientSession, providers: FakeProviders
) -> None:
    gw = await gateway(providers.toml(), env={"K": providers.key})
    async with http.ws_connect(gw.ws("/v1/tts/deepgram?model=aura-2-zeus-en")) as ws:
        await ws.send_json({"type": "Speak", "text": "native"})
        await ws.send_json({"type": "Flush"})
        got: list[Any] = []
        async with asyncio.timeout(10):
            while not got or got[-1] != {"type": "Flushed", "sequence_id": 0}:
                msg = await ws.receive()
                got.append(
                    msg.data if msg.type is aiohttp.WSMsgType.BINARY else orjson.loads(msg.data)
                )
    assert got[0]["type"] == "Metadata"
    assert got[1:3] == AUDIO
    assert providers.handshakes["speak"] == {"model": "aura-2-zeus-en"}
    assert providers.received["speak"][-2:] == [
        {"type": "Speak", "text": "native"},
        {"type": "Flush"},
    ]
