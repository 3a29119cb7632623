"""The providers' official SDKs through the relay, changed only in host and credentials.

Each SDK is pointed at ``/v1/local/default/{provider}`` the way its users point it at
another host (its base URL or environment option), with the gateway token as its API key.
Behind the relay a local server speaks the provider's documented protocol at the
provider's real paths and checks what it receives: the path the provider serves, the
stored key where the provider reads it, and never the gateway token.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pybase64
import pytest
from aiohttp import web
from tests.conftest import Gateway, GatewayFactory, make_settings, settled
from tests.test_speech_cloud import AUDIO, FakeProviders

from voxgate.engines.registry import EngineRegistry
from voxgate.server.app import create_app
from voxgate.server.services import SERVICES

TOKEN = "gw-token-sdk-71c2"
STORED = "stored-provider-key"


@dataclass
class Upstream:
    """The providers at their real paths (each base as the built-in one ends)."""

    fake: FakeProviders
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)

    def check(self, request: web.Request) -> None:
        """Every upstream handshake: the gateway token is nowhere in it."""
        raw = repr((request.raw_path, sorted(request.headers.items())))
        assert TOKEN not in raw, raw
        self.seen.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
            }
        )

    def toml(self) -> str:
        return (
            f'[providers.deepgram]\nurl = "{self.url}/deepgram/v1"\n'
            f'[providers.cartesia]\nurl = "{self.url}/cartesia"\n'
            f'[providers.elevenlabs]\nurl = "{self.url}/elevenlabs/v1"\n'
            f'[providers.openai]\nurl = "{self.url}/openai/v1/realtime"\n'
            "[accounts.local.gateways.default]\n"
            'tokens = [{ name = "sdk", env = "GW" }]\n'
            'keys = { deepgram = { env = "K" }, cartesia = { env = "K" }, '
            'elevenlabs = { env = "K" }, openai = { env = "K" } }\n'
        )


def _checked(up: Upstream, handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        up.check(request)
        return await handler(request)  # type: ignore[no-any-return]

    return wrapped


async def scribe(request: web.Request) -> web.StreamResponse:
    """ElevenLabs' realtime speech to text: session_started, then a partial per chunk and a
    committed transcript on commit."""
    assert request.headers.get("xi-api-key") == STORED
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json({"message_type": "session_started", "session_id": "s1", "config": {}})
    chunks = 0
    async for msg in ws:
        data = orjson.loads(msg.data)
        assert data["message_type"] == "input_audio_chunk"
        chunks += 1
        await ws.send_json({"message_type": "partial_transcript", "text": "hello"})
        if data.get("commit"):
            await ws.send_json({"message_type": "committed_transcript", "text": "hello world"})
    return ws


async def openai_realtime(request: web.Request) -> web.StreamResponse:
    """Enough of OpenAI Realtime for a session: session.created, then session.updated."""
    assert request.headers.get("Authorization") == f"Bearer {STORED}"
    assert request.query.get("model") == "gpt-realtime"
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    session = {"type": "realtime", "id": "sess_1", "object": "realtime.session"}
    await ws.send_json({"type": "session.created", "event_id": "e0", "session": session})
    async for msg in ws:
        event = orjson.loads(msg.data)
        if event["type"] == "session.update":
            updated = {**session, **event["session"]}
            await ws.send_json({"type": "session.updated", "event_id": "e1", "session": updated})
    return ws


@pytest.fixture
async def up() -> AsyncIterator[Upstream]:
    fake = FakeProviders(key=STORED)
    upstream = Upstream(fake)
    app = web.Application()
    routes = {
        "/deepgram/v1/listen": fake.deepgram_listen,
        "/deepgram/v1/speak": fake.deepgram_speak,
        "/cartesia/tts/websocket": fake.cartesia,
        "/elevenlabs/v1/speech-to-text/realtime": scribe,
        "/elevenlabs/v1/text-to-speech/{voice}/stream-input": fake.elevenlabs,
        "/openai/v1/realtime": openai_realtime,
    }
    for path, handler in routes.items():
        app.router.add_get(path, _checked(upstream, handler))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"ws://127.0.0.1:{runner.addresses[0][1]}"
    yield upstream
    await runner.cleanup()


@pytest.fixture
async def gw(gateway: GatewayFactory, up: Upstream) -> Gateway:
    return await gateway(up.toml(), {"GW": TOKEN, "K": STORED})


def relay_base(gw: Gateway, provider: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{gw.port}/v1/local/default/{provider}"


async def test_deepgram_sdk_listen_and_speak_through_the_relay(gw: Gateway, up: Upstream) -> None:
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    env = DeepgramClientEnvironment(
        base=relay_base(gw, "deepgram"),
        production=relay_base(gw, "deepgram", "ws"),
        agent=relay_base(gw, "deepgram", "ws"),
        agent_rest=relay_base(gw, "deepgram"),
    )
    client = AsyncDeepgramClient(api_key=TOKEN, environment=env)
    async with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, interim_results=True
    ) as socket:
        await socket.send_media(b"\0\0" * 1600)
        started = await asyncio.wait_for(socket.recv(), 5)
        assert started.type == "SpeechStarted"
        interim = await asyncio.wait_for(socket.recv(), 5)
        assert interim.type == "Results"
        assert interim.channel.alternatives[0].transcript == "hello"
        await socket.send_finalize()
        final = await asyncio.wait_for(socket.recv(), 5)
        assert (final.is_final, final.channel.alternatives[0].transcript) == (True, "hello world")
    listen = next(s for s in up.seen if s["path"].endswith("/listen"))
    assert listen["path"] == "/deepgram/v1/listen"  # not /v1/v1/listen
    assert listen["query"]["model"] == "nova-3"
    assert listen["headers"]["authorization"] == f"Token {STORED}"

    async with client.speak.v1.connect(
        model="aura-2-thalia-en", encoding="linear16", sample_rate=24000
    ) as speak:
        metadata = await asyncio.wait_for(speak.recv(), 5)
        assert metadata.type == "Metadata"
        from deepgram.speak.v1.types import SpeakV1Text

        await speak.send_text(SpeakV1Text(type="Speak", text="Hello there."))
        await speak.send_flush()
        audio = b""
        while True:
            msg = await asyncio.wait_for(speak.recv(), 5)
            if isinstance(msg, bytes):
                audio += msg
                continue
            assert msg.type == "Flushed"
            break
        assert audio == b"".join(AUDIO)
    assert up.fake.received["speak"][0] == {"type": "Speak", "text": "Hello there."}
    await settled(gw)


async def test_cartesia_sdk_tts_websocket_through_the_relay(gw: Gateway, up: Upstream) -> None:
    from cartesia import AsyncCartesia

    client = AsyncCartesia(
        api_key=TOKEN,
        base_url=relay_base(gw, "cartesia"),
        websocket_base_url=relay_base(gw, "cartesia", "ws"),
    )
    async with client.tts.websocket_connect() as conn:
        await conn.send(
            {
                "model_id": "sonic-2",
                "transcript": "Hello there.",
                "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
                "output_format": {
                    "container": "raw",
                    "encoding": "pcm_s16le",
                    "sample_rate": 24000,
                },
                "context_id": "ctx-1",
            }
        )
        audio = b""
        async for event in conn:
            if event.type == "chunk":
                audio += pybase64.b64decode(event.data)
            if event.type == "done":
                break
    assert audio == b"".join(AUDIO)
    (hs,) = up.seen
    assert hs["query"]["api_key"] == STORED
    # the SDK sends its version as a header: no cartesia_version query default beside it
    assert "cartesia_version" not in hs["query"]
    assert hs["headers"]["cartesia-version"]
    assert up.fake.received["cartesia"][0]["transcript"] == "Hello there."
    await client.close()
    await settled(gw)


async def test_elevenlabs_sdk_realtime_scribe_through_the_relay(gw: Gateway, up: Upstream) -> None:
    from elevenlabs.realtime.scribe import AudioFormat, CommitStrategy, ScribeRealtime

    scribe_client = ScribeRealtime(api_key=TOKEN, base_url=relay_base(gw, "elevenlabs", "ws"))
    connection = await scribe_client.connect(
        {
            "model_id": "scribe_v2_realtime",
            "audio_format": AudioFormat.PCM_16000,
            "sample_rate": 16000,
            "commit_strategy": CommitStrategy.MANUAL,
        }
    )
    committed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_committed(data: dict[str, Any]) -> None:
        if not committed.done():
            committed.set_result(data["text"])

    from elevenlabs.realtime.connection import RealtimeEvents

    connection.on(RealtimeEvents.COMMITTED_TRANSCRIPT, on_committed)
    audio = pybase64.b64encode(b"\0\0" * 1600).decode()
    await connection.send({"audio_base_64": audio})
    await connection.commit()
    assert await asyncio.wait_for(committed, 5) == "hello world"
    await connection.close()
    (hs,) = up.seen
    assert hs["path"] == "/elevenlabs/v1/speech-to-text/realtime"  # not /v1/v1/...
    assert hs["query"]["model_id"] == "scribe_v2_realtime"
    await settled(gw)


async def test_openai_sdk_realtime_through_the_relay(gw: Gateway, up: Upstream) -> None:
    """The OpenAI SDK with its base URL at the relay dials ``…/openai/realtime``."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=TOKEN, base_url=relay_base(gw, "openai"))
    async with client.realtime.connect(model="gpt-realtime") as conn:
        created = await asyncio.wait_for(conn.recv(), 5)
        assert created.type == "session.created"
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        updated = await asyncio.wait_for(conn.recv(), 5)
        assert updated.type == "session.updated"
        assert updated.session.instructions == "Be brief."
    (hs,) = up.seen
    assert hs["path"] == "/openai/v1/realtime"
    await client.close()
    await settled(gw)


@pytest.fixture
async def tls_gw(
    tmp_path: Path,
    up: Upstream,
    speech_engines: EngineRegistry,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Gateway]:
    """voxgate serving wss:// with a self-signed certificate the clients here trust.

    ElevenLabs' realtime TTS client always dials ``wss://``, whatever its base URL says.
    """
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what the SDK's default context trusts
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    app = create_app(
        make_settings(up.toml(), tmp_path, {"GW": TOKEN, "K": STORED}), engines=speech_engines
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    gw = Gateway(runner.addresses[0][1], app[SERVICES], runner)
    yield gw
    await gw.stop()


async def test_elevenlabs_sdk_realtime_tts_through_the_relay(tls_gw: Gateway, up: Upstream) -> None:
    """``text_to_speech.convert_realtime``: the SDK's streaming TTS over its own websocket."""
    from elevenlabs.client import ElevenLabs

    client = ElevenLabs(
        api_key=TOKEN, base_url=f"https://127.0.0.1:{tls_gw.port}/v1/local/default/elevenlabs"
    )

    def speak() -> bytes:
        chunks = client.text_to_speech.convert_realtime(
            "voice-1", text=iter(["Hello ", "there."]), model_id="eleven_flash_v2_5"
        )
        return b"".join(chunks)

    audio = await asyncio.to_thread(speak)
    assert audio == b"".join(AUDIO)
    (hs,) = up.seen
    assert hs["path"] == "/elevenlabs/v1/text-to-speech/voice-1/stream-input"
    assert hs["query"]["model_id"] == "eleven_flash_v2_5"
    assert hs["headers"]["xi-api-key"] == STORED
    sent = up.fake.received["elevenlabs"]
    assert "".join(m["text"] for m in sent).strip() == "Hello there."
    await settled(tls_gw)
