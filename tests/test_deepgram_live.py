"""Deepgram's live ``listen``/``speak`` protocols on the local engines, over real sockets.

Three kinds of client: the official ``deepgram-sdk`` pointed at voxgate; Cloudflare's
Workers AI Deepgram examples (AI Gateway's realtime WebSockets page), translated to
Python and changed only in host; and hostile input. Every JSON message a client gets is
checked against the SDK's own pydantic model of its ``type``, strictly.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.listen.v1.types import (
    ListenV1ConfigureFailure,
    ListenV1ConfigureSuccess,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from deepgram.listen.v2.types import (
    ListenV2ConfigureFailure,
    ListenV2Connected,
    ListenV2FatalError,
    ListenV2TurnInfo,
    ListenV2Warning,
)
from deepgram.speak.v1.types import (
    SpeakV1Cleared,
    SpeakV1Flushed,
    SpeakV1Metadata,
    SpeakV1Text,
    SpeakV1Warning,
)
from pydantic import BaseModel
from tests.conftest import Gateway, GatewayFactory, settled

from voxgate.audio import AudioFormat, chunks, read_wav

pytestmark = [
    pytest.mark.timeout(180),
    # the SDK's own use of websockets' legacy client
    pytest.mark.filterwarnings("ignore::DeprecationWarning:deepgram.*"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
]

DATA = Path(__file__).parent / "data"
TOKEN = "dg-test-token"
TOKEN_TOML = '[accounts.local.gateways.default]\ntokens = [{ name = "ci", env = "TOK" }]\n'
ENV = {"TOK": TOKEN}
#: arctic_a0007.wav: "And you always want to see it in the superlative degree."
SPOKEN = {"always", "want", "see", "superlative", "degree"}

LISTEN_TYPES: dict[str, type[BaseModel]] = {
    "Results": ListenV1Results,
    "Metadata": ListenV1Metadata,
    "SpeechStarted": ListenV1SpeechStarted,
    "UtteranceEnd": ListenV1UtteranceEnd,
    "Error": ListenV1Error,
    "ConfigureSuccess": ListenV1ConfigureSuccess,
    "ConfigureFailure": ListenV1ConfigureFailure,
}
FLUX_TYPES: dict[str, type[BaseModel]] = {
    "Connected": ListenV2Connected,
    "TurnInfo": ListenV2TurnInfo,
    "ConfigureFailure": ListenV2ConfigureFailure,
    "Warning": ListenV2Warning,
    "Error": ListenV2FatalError,
}
SPEAK_TYPES: dict[str, type[BaseModel]] = {
    "Metadata": SpeakV1Metadata,
    "Flushed": SpeakV1Flushed,
    "Cleared": SpeakV1Cleared,
    "Warning": SpeakV1Warning,
}


def checked(text: str, types: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """A server message, validated strictly by the SDK's model of its type."""
    msg: dict[str, Any] = orjson.loads(text)
    if msg["type"] == "Error" and types is SPEAK_TYPES:  # speak v1's SDK has no Error type
        assert set(msg) == {"type", "code", "description"}, msg
        return msg
    types[msg["type"]].model_validate(msg, strict=True)
    return msg


def speech() -> bytes:
    """Real speech, 16 kHz PCM16, with a second of silence either side."""
    wav = read_wav(DATA / "arctic_a0007.wav")
    assert wav.sample_rate == 16000
    return b"\0" * 32000 + wav.mono() + b"\0" * 32000


def words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def environment(gw: Gateway) -> DeepgramClientEnvironment:
    """Deepgram's SDK, pointed at voxgate (its ``production`` is the WebSocket host)."""
    return DeepgramClientEnvironment(
        base=gw.base, production=gw.ws(""), agent=gw.ws(""), agent_rest=gw.base
    )


async def records(gw: Gateway) -> list[Any]:
    from voxgate.store.base import UsageQuery

    await settled(gw)
    return await gw.services.store.query(UsageQuery(account="local", gateway="default", limit=50))


# --- the official SDK ------------------------------------------------------------------


async def test_sdk_listen_gets_interims_and_a_final_transcript_of_real_speech(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway(TOKEN_TOML, ENV)
    client = AsyncDeepgramClient(api_key=TOKEN, environment=environment(gw))
    audio = speech()
    got: list[Any] = []
    async with client.listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate=16000,
        channels=1,
        interim_results=True,
        vad_events=True,
        utterance_end_ms=1000,
        smart_format=True,
        language="en",
    ) as socket:
        for piece in chunks(audio, AudioFormat(sample_rate=16000), 100):
            await socket.send_media(piece)
        await socket.send_keep_alive()
        await socket.send_finalize()
        async with asyncio.timeout(60):
            while not (isinstance(got[-1:] and got[-1], ListenV1Results) and got[-1].from_finalize):
                got.append(await socket.recv())
        await socket.send_close_stream()
        async with asyncio.timeout(30):
            got += [msg async for msg in socket]
    kinds = [type(m).__name__ for m in got]
    assert "ListenV1SpeechStarted" in kinds, kinds
    results = [m for m in got if isinstance(m, ListenV1Results)]
    assert any(not r.is_final for r in results), kinds  # interim results
    finals = [r for r in results if r.is_final]
    text = " ".join(r.channel.alternatives[0].transcript for r in finals)
    assert len(SPOKEN & words(text)) >= 3, text
    final = next(r for r in finals if r.channel.alternatives[0].transcript)
    assert final.speech_final or final.from_finalize
    assert 0.5 < final.start < 2.0  # speech starts a second in
    assert final.metadata.model_info.name == "nova-3"
    assert isinstance(got[-1], ListenV1Metadata), kinds
    assert got[-1].duration == pytest.approx(len(audio) / 32000, abs=0.01)
    (record,) = await records(gw)
    assert (record.kind, record.provider, record.model) == ("stt", "pocketsphinx", "nova-3")
    assert record.client_close_code == 1000
    assert record.audio_seconds == pytest.approx(len(audio) / 32000, abs=0.01)
    assert record.token_name == "ci"


async def sdk_speak(gw: Gateway, text: str, **query: Any) -> tuple[bytes, list[Any]]:
    client = AsyncDeepgramClient(api_key=TOKEN, environment=environment(gw))
    got: list[Any] = []
    audio = b""
    async with client.speak.v1.connect(**query) as socket:
        got.append(await socket.recv())
        await socket.send_text(SpeakV1Text(text=text))
        await socket.send_flush()
        async with asyncio.timeout(60):
            while True:
                msg = await socket.recv()
                if isinstance(msg, bytes):
                    audio += msg
                    continue
                got.append(msg)
                if msg.type == "Flushed":
                    break
        await socket.send_close()
        async with asyncio.timeout(10):
            got += [msg async for msg in socket]
    return audio, got


async def test_sdk_speak_gets_audio_then_flushed_and_the_audio_says_the_text(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(TOKEN_TOML, ENV)
    text = "Rice is often served in round bowls."
    audio, got = await sdk_speak(
        gw, text, model="aura-2-thalia-en", encoding="linear16", sample_rate=16000
    )
    assert isinstance(got[0], SpeakV1Metadata), got
    assert got[0].model_name == "aura-2-thalia-en"
    assert got[0].model_version.startswith("piper")
    assert [type(m).__name__ for m in got[1:]] == ["SpeakV1Flushed"]
    assert got[1].sequence_id == 0
    assert 1.5 < len(audio) / 32000 < 5  # seconds of 16 kHz PCM16
    # what the speak socket said, heard by the listen socket
    url = gw.ws("/v1/listen?model=nova-2&encoding=linear16&sample_rate=16000")
    async with http.ws_connect(url, headers={"Authorization": f"Token {TOKEN}"}) as ws:
        for piece in chunks(b"\0" * 16000 + audio + b"\0" * 16000, AudioFormat(), 100):
            await ws.send_bytes(piece)
        await ws.send_str('{"type": "CloseStream"}')
        heard = [
            checked(m.data, LISTEN_TYPES) async for m in ws if m.type is aiohttp.WSMsgType.TEXT
        ]
    assert heard[-1]["type"] == "Metadata"
    said = " ".join(m["channel"]["alternatives"][0]["transcript"] for m in heard[:-1])
    assert len({"rice", "served", "round", "bowls"} & words(said)) >= 3, said
    recs = {r.kind: r for r in await records(gw)}
    assert (recs["tts"].provider, recs["tts"].model) == ("piper", "aura-2-thalia-en")
    assert recs["tts"].characters == len(text)
    assert recs["tts"].client_close_code == 1000
    assert recs["tts"].audio_seconds == pytest.approx(len(audio) / 32000, abs=0.01)


async def test_sdk_flux_reports_a_turn_with_its_transcript(gateway: GatewayFactory) -> None:
    gw = await gateway(TOKEN_TOML, ENV)
    client = AsyncDeepgramClient(api_key=TOKEN, environment=environment(gw))
    got: list[dict[str, Any]] = []
    async with client.listen.v2.connect(
        model="flux-general-en", encoding="linear16", sample_rate=16000
    ) as socket:
        for piece in chunks(speech(), AudioFormat(sample_rate=16000), 100):
            await socket.send_media(piece)
        await socket.send_close_stream()
        async with asyncio.timeout(60):
            # the raw messages, to check them against the SDK's types strictly
            got += [checked(m, FLUX_TYPES) async for m in socket._websocket]
    assert got[0]["type"] == "Connected"
    assert [m["sequence_id"] for m in got] == list(range(len(got)))
    turns = [m for m in got if m["type"] == "TurnInfo"]
    events = [m["event"] for m in turns]
    assert events[0] == "StartOfTurn", events
    assert "Update" in events, events
    assert "EndOfTurn" in events, events
    end = next(m for m in turns if m["event"] == "EndOfTurn")
    assert len(SPOKEN & words(end["transcript"])) >= 3, end
    assert end["turn_index"] == 0
    assert 0.5 < end["audio_window_start"] < end["audio_window_end"]
    (record,) = await records(gw)
    assert (record.kind, record.model, record.client_close_code) == (
        "stt",
        "flux-general-en",
        1000,
    )


# --- Cloudflare's Workers AI examples, changed only in host ---------------------------


async def test_workers_ai_nova3_example_prints_interim_and_final_transcripts(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """AI Gateway's "Deepgram (Workers AI)" speech-to-text example: microphone audio
    (here a recording, in 100 ms pieces) to nova-3, transcripts printed as they come."""
    gw = await gateway(TOKEN_TOML, ENV)
    url = gw.ws(
        "/v1/local/default/workers-ai"
        "?model=@cf/deepgram/nova-3&encoding=linear16&sample_rate=16000&interim_results=true"
    )
    interim: list[str] = []
    final: list[str] = []
    async with http.ws_connect(url, headers={"cf-aig-authorization": TOKEN}) as ws:

        async def microphone() -> None:
            for piece in chunks(speech() + b"\0" * 32000, AudioFormat(sample_rate=16000), 100):
                await ws.send_bytes(piece)
                await asyncio.sleep(0.01)

        mic = asyncio.create_task(microphone())
        async with asyncio.timeout(60):
            async for message in ws:
                parse = checked(message.data, LISTEN_TYPES)
                transcript = parse.get("channel", {}).get("alternatives", [{}])[0].get("transcript")
                if transcript:
                    (final if parse["is_final"] else interim).append(transcript)
                if final:
                    break
        await mic
    assert interim, "no interim transcript"
    assert len(SPOKEN & words(final[0])) >= 3, final


async def test_workers_ai_aura1_example_speaks_flushes_clears_and_closes(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """AI Gateway's text-to-speech example: Speak then Flush per line typed; audio is
    played at 24 kHz until Flushed; Cleared and Warning are logged; "quit" sends Close."""
    gw = await gateway(TOKEN_TOML, ENV)
    url = gw.ws("/v1/local/default/workers-ai?model=@cf/deepgram/aura-1")
    log: list[dict[str, Any]] = []
    played: list[bytes] = []
    async with http.ws_connect(url, headers={"cf-aig-authorization": f"Bearer {TOKEN}"}) as ws:

        async def until(kind: str) -> None:
            async with asyncio.timeout(60):
                async for message in ws:
                    if message.type is aiohttp.WSMsgType.BINARY:
                        played.append(message.data)
                        continue
                    log.append(checked(message.data, SPEAK_TYPES))
                    if log[-1]["type"] == kind:
                        return

        await until("Metadata")
        assert log[0]["model_name"] == "aura-1"
        for line in ("Hello from the gateway.", "The second line is spoken too."):
            await ws.send_str(orjson.dumps({"type": "Speak", "text": line}).decode())
            await ws.send_str(orjson.dumps({"type": "Flush"}).decode())
            await until("Flushed")
        seconds = sum(map(len, played)) / 48000  # 24 kHz PCM16
        assert 1.5 < seconds < 8, seconds
        # a barge-in: a long text, flushed, cleared at once
        await ws.send_str(orjson.dumps({"type": "Speak", "text": "Words. " * 200}).decode())
        await ws.send_str('{"type": "Flush"}')
        await ws.send_str('{"type": "Clear"}')
        await until("Cleared")
        await ws.send_str('{"type": "Close"}')
        async with asyncio.timeout(10):
            rest = [m async for m in ws]
        assert all(m.type is aiohttp.WSMsgType.BINARY for m in rest)
    assert ws.close_code == 1000
    assert [m["sequence_id"] for m in log if m["type"] in ("Flushed", "Cleared")] == [0, 1, 2]
    (record,) = await records(gw)
    assert (record.kind, record.provider, record.model) == ("tts", "piper", "@cf/deepgram/aura-1")
    assert record.client_close_code == 1000


async def test_browser_token_pair_and_the_model_in_the_path(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(TOKEN_TOML, ENV)
    url = gw.ws("/v1/local/default/workers-ai/@cf/deepgram/aura-2-en?encoding=mulaw")
    async with http.ws_connect(url, protocols=("token", TOKEN)) as ws:
        assert ws.protocol == "token"  # never the secret
        meta = checked((await ws.receive()).data, SPEAK_TYPES)
        assert meta["model_name"] == "aura-2-en"
        await ws.send_str('{"type": "Speak", "text": "Hi."}')
        await ws.send_str('{"type": "Flush"}')
        audio = b""
        async for message in ws:
            if message.type is aiohttp.WSMsgType.BINARY:
                audio += message.data
            elif checked(message.data, SPEAK_TYPES)["type"] == "Flushed":
                break
    assert 0.2 < len(audio) / 8000 < 3  # 8 kHz µ-law by default for mulaw


# --- refusals before the upgrade ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "status", "named"),
    [
        ("/v1/listen?model=nova-9x&encoding=linear16&sample_rate=16000", {}, 400, "nova-9x"),
        ("/v1/speak?model=nova-3", {}, 400, "nova-3"),  # an STT model on speak
        ("/v1/local/default/workers-ai?model=@cf/meta/llama-3", {}, 400, "@cf/meta/llama-3"),
        ("/v1/local/default/workers-ai", {}, 400, "model"),
        ("/v1/nobody/default/workers-ai?model=@cf/deepgram/nova-3", {}, 404, "nobody"),
        ("/v1/listen?model=nova-3&encoding=opus&sample_rate=16000", {}, 400, "opus"),
        ("/v1/listen?model=nova-3&encoding=linear16", {}, 400, "sample_rate"),
        ("/v1/listen?model=nova-3", {}, 400, "encoding"),
        ("/v1/listen?encoding=linear16&sample_rate=16000&channels=2", {}, 400, "channels"),
        ("/v1/listen?encoding=linear16&sample_rate=99&channels=1", {}, 400, "sample_rate"),
        ("/v1/listen?encoding=linear16&sample_rate=8000&interim_results=yes", {}, 400, "interim"),
        ("/v1/speak?speed=fast", {}, 400, "speed"),
        ("/v1/speak", {"Authorization": "Token wrong"}, 401, "token"),
        ("/v1/speak", {"Authorization": "Basic " + TOKEN}, 401, "token"),
    ],
)
async def test_refusals_name_the_problem_and_leave_no_session(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    path: str,
    headers: dict[str, str],
    status: int,
    named: str,
) -> None:
    gw = await gateway(TOKEN_TOML, ENV)
    auth = {"Authorization": f"Token {TOKEN}", **headers}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(gw.ws(path), headers=auth)
    assert refused.value.status == status
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    answer = await http.get(
        gw.base + path, headers={**auth, **upgrade, "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw=="}
    )
    assert answer.status == status
    assert named in (await answer.json())["error"]["message"]
    assert (await http.get(gw.base + "/v1/listen")).status == 426
    assert await records(gw) == []


async def test_the_relay_still_answers_other_providers(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(gw.ws("/v1/local/default/no-such-provider"))
    assert refused.value.status == 404


# --- hostile input -----------------------------------------------------------------------

LIMITS = (
    "[accounts.local.gateways.default]\n"
    "limits = { max_text_chars = 200, max_audio_chunk_bytes = 8192 }\n"
)


async def test_hostile_speak_messages_get_warnings_and_nothing_else_is_lost(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks: Any
) -> None:
    gw = await gateway(LIMITS)
    async with http.ws_connect(gw.ws("/v1/speak?model=aura-2-thalia-en")) as ws:
        assert checked((await ws.receive()).data, SPEAK_TYPES)["type"] == "Metadata"
        hostile: list[tuple[str | bytes, str, str]] = [
            ("not json", "invalid_json", "JSON"),
            ("[1, 2]", "invalid_json", "object"),
            ('{"text": "no type"}', "invalid_field", "'type'"),
            ('{"type": "Speak"}', "invalid_field", "'text'"),
            ('{"type": "Speak", "text": 7}', "invalid_field", "'text'"),
            ('{"type": "Shout", "text": "x"}', "unknown_type", "'Shout'"),
            (orjson.dumps({"type": "Speak", "text": "x" * 201}).decode(), "text_too_long", "200"),
            (
                '{"type": "Speak", "text": "deep", "x": ' + "[" * 40 + "]" * 40 + "}",
                "invalid_field",
                "'x[0][0][0]",
            ),
            (b"\x00\x01 binary", "invalid_json", "binary"),
        ]
        for frame, code, named in hostile:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            warning = checked((await ws.receive()).data, SPEAK_TYPES)
            assert (warning["type"], warning["code"]) == ("Warning", code), (frame, warning)
            assert named in warning["description"], warning
        await ws.send_str('{"type": "Speak", "text": "Still here."}')
        await ws.send_str('{"type": "Flush"}')
        audio = b""
        async for message in ws:
            if message.type is aiohttp.WSMsgType.BINARY:
                audio += message.data
            elif checked(message.data, SPEAK_TYPES)["type"] == "Flushed":
                break
        assert len(audio) > 24000  # half a second and more of speech
    (record,) = await records(gw)
    assert record.characters == len("Still here.")  # refused text is not counted
    assert tracebacks() == []


async def test_hostile_listen_messages_get_errors_and_the_stream_goes_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks: Any
) -> None:
    gw = await gateway(LIMITS)
    url = gw.ws("/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000")
    async with http.ws_connect(url) as ws:
        hostile: list[tuple[str | bytes, str, str, str]] = [
            ("{oops", "Error", "SchemaError", "JSON"),
            ('{"type": "Transcribe"}', "Error", "SchemaError", "'Transcribe'"),
            (b"\x01\x02\x03", "Error", "SchemaError", "even number"),
            (b"\0" * 8194, "Error", "SchemaError", "8192"),
            ('{"type": "Configure", "keyterms": ["voxgate"]}', "ConfigureFailure", "", "keyterms"),
            ('{"type": "Configure", "features": {"numerals": true}}', "ConfigureSuccess", "", ""),
        ]
        for frame, kind, variant, named in hostile:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            answer = checked((await ws.receive()).data, LISTEN_TYPES)
            assert answer["type"] == kind, (frame, answer)
            assert answer.get("variant", "") == variant
            assert named in answer.get("description", ""), answer
        await ws.send_str('{"type": "KeepAlive"}')  # no answer
        for piece in chunks(speech(), AudioFormat(sample_rate=16000), 100):
            await ws.send_bytes(piece)
        await ws.send_str('{"type": "CloseStream"}')
        rest = [checked(m.data, LISTEN_TYPES) async for m in ws]
    assert ws.close_code == 1000
    assert rest[-1]["type"] == "Metadata"
    said = " ".join(
        m["channel"]["alternatives"][0]["transcript"] for m in rest if m.get("is_final")
    )
    assert len(SPOKEN & words(said)) >= 3, said
    assert any(m.get("from_finalize") for m in rest)
    (record,) = await records(gw)
    assert record.audio_seconds == pytest.approx(len(speech()) / 32000, abs=0.01)
    assert tracebacks() == []


@pytest.mark.parametrize("path", ["/v1/speak", "/v1/listen?encoding=mulaw&sample_rate=8000"])
async def test_a_limit_ends_the_session_with_an_error_and_its_close_code(
    gateway: GatewayFactory, http: aiohttp.ClientSession, path: str
) -> None:
    gw = await gateway("[accounts.local.gateways.default]\nlimits = { messages_per_minute = 3 }\n")
    types = SPEAK_TYPES if "speak" in path else LISTEN_TYPES
    async with http.ws_connect(gw.ws(path)) as ws:
        for _ in range(5):
            await ws.send_str('{"type": "KeepAlive"}')
        got = [checked(m.data, types) async for m in ws if m.type is aiohttp.WSMsgType.TEXT]
    assert ws.close_code == 4001
    error = next(m for m in got if m["type"] == "Error")
    assert error["code"] == "rate_limited"
    assert "3 messages per minute" in error["description"]
    if types is LISTEN_TYPES:
        assert got[-1]["type"] == "Metadata"
    (record,) = await records(gw)
    assert (record.client_close_code, record.error) == (4001, "rate_limit_exceeded")


# --- the translators, without a socket ---------------------------------------------------


def test_model_names_resolve_to_engines_through_the_aliases() -> None:
    from voxgate.engines.registry import EngineRegistry
    from voxgate.server.deepgram_routes import resolve_model
    from voxgate.settings import SpeechSettings

    engines = EngineRegistry(SpeechSettings(aliases={"aura-2-zeus-en": "piper", "mine": "whisper"}))
    resolve = lambda model, kinds=("stt", "tts"): resolve_model(engines, model, kinds)  # noqa: E731
    assert resolve("@cf/deepgram/nova-3") == ("stt", "pocketsphinx")
    assert resolve("nova-2-meeting") == ("stt", "pocketsphinx")
    assert resolve("@cf/deepgram/flux") == ("stt", "pocketsphinx")
    assert resolve("aura-2-thalia-en") == ("tts", "piper")
    assert resolve("aura-asteria-en") == ("tts", "piper")
    assert resolve("aura-2-zeus-en") == ("tts", "piper")
    assert resolve("mine") == ("stt", "whisper")
    assert resolve("whisper") == ("stt", "whisper")
    assert resolve("nova-3", ("tts",)) is None
    assert resolve("nova-9") is None
    assert resolve("aura-3-thalia-en") is None
    assert resolve("@cf/meta/llama-3") is None


def test_handshake_credentials() -> None:
    from multidict import CIMultiDict

    from voxgate.protocols.speech.deepgram_query import Handshake, read_handshake

    def read(authorization: str | None, offered: list[str]) -> Handshake:
        headers = CIMultiDict({"Authorization": authorization} if authorization else {})
        return read_handshake(headers, tuple(offered))

    assert read("Token abc", []) == Handshake("abc", None)
    assert read("bearer abc", ["x"]) == Handshake("abc", "x")
    assert read("Basic abc", []) == Handshake(None, None)
    assert read(None, ["token", "abc"]) == Handshake("abc", "token")
    assert read(None, ["cf-aig-authorization.abc"]) == Handshake("abc", "cf-aig-authorization.abc")
    assert read(None, ["token"]) == Handshake(None, "token")


def test_query_defaults() -> None:
    from voxgate.audio import Encoding
    from voxgate.protocols.speech.deepgram_query import listen_options, speak_options

    assert speak_options({}).config.sample_rate == 24000
    mulaw = speak_options({"encoding": "mulaw"}).config
    assert (mulaw.encoding, mulaw.sample_rate) == (Encoding.MULAW, 8000)
    listen = listen_options({"encoding": "alaw", "sample_rate": "8000", "endpointing": "false"})
    assert listen.config.interim_results is False  # Deepgram's default
    assert (listen.vad_events, listen.punctuate, listen.utterance_end_ms) == (False, False, None)
    assert listen_options(
        {"encoding": "linear16", "sample_rate": "16000", "smart_format": "true"}
    ).punctuate


def _listen(**query: str) -> Any:
    from voxgate.protocols.speech.deepgram_listen import ListenProtocol
    from voxgate.protocols.speech.deepgram_query import listen_options

    options = listen_options({"encoding": "linear16", "sample_rate": "16000", **query})
    protocol = ListenProtocol(
        options=options, model="nova-3", request_id="r", created="t", max_audio_bytes=1 << 20
    )
    protocol.ready("pocketsphinx-en-us")
    return protocol


def test_listen_results_follow_the_query() -> None:
    plain = _listen()
    plain.receive(b"\0" * 32000)  # one second
    assert plain.transcript("Hello, World.", is_final=False, confidence=0, timestamp=0.2) is None
    result = checked(
        plain.transcript("Hello, World.", is_final=True, confidence=0.8, timestamp=0.2),
        LISTEN_TYPES,
    )
    alt = result["channel"]["alternatives"][0]
    assert alt["transcript"] == "hello world"  # unformatted, as Deepgram without punctuate
    assert [w["word"] for w in alt["words"]] == ["hello", "world"]
    assert (result["start"], result["duration"]) == (0.2, 0.8)
    assert (result["is_final"], result["speech_final"], result["from_finalize"]) == (
        True,
        True,
        False,
    )
    assert plain.speech_started(0.2) is None

    rich = _listen(punctuate="true", vad_events="true", utterance_end_ms="1000")
    rich.receive(b"\0" * 32000)
    checked(rich.speech_started(0.2), LISTEN_TYPES)
    results, end = rich.transcript("Hello, World.", is_final=True, confidence=0.8, timestamp=0.2)
    alt = checked(results, LISTEN_TYPES)["channel"]["alternatives"][0]
    assert alt["transcript"] == "Hello, World."
    assert [w["punctuated_word"] for w in alt["words"]] == ["Hello,", "World."]
    assert checked(end, LISTEN_TYPES)["last_word_end"] == 1.0


def test_every_finalize_gets_one_from_finalize_result() -> None:
    from voxgate.protocols.speech.unified import Close, Finalize

    protocol = _listen()
    assert isinstance(protocol.receive('{"type": "Finalize", "channel": 0}'), Finalize)
    forced = checked(
        protocol.transcript("hi", is_final=True, confidence=0.5, timestamp=0), LISTEN_TYPES
    )
    assert (forced["from_finalize"], forced["speech_final"]) == (True, False)
    assert protocol.final_transcript("hi", 0.0, 0.0) is None  # answered already
    assert isinstance(protocol.receive('{"type": "CloseStream"}'), Close)
    empty = checked(protocol.final_transcript("hi", 0.0, 0.0), LISTEN_TYPES)
    assert empty["from_finalize"] is True
    assert empty["channel"]["alternatives"][0]["transcript"] == ""
    checked(protocol.session_ended("closed", audio_seconds=0.0), LISTEN_TYPES)


def test_flux_turns() -> None:
    from voxgate.protocols.speech.deepgram_flux import FluxProtocol
    from voxgate.protocols.speech.deepgram_query import listen_options

    options = listen_options({"encoding": "linear16", "sample_rate": "16000"})
    flux = FluxProtocol(options=options, request_id="r", max_audio_bytes=1 << 20)
    assert flux.opening().config.interim_results  # Flux always reports the turn so far
    flux.receive(b"\0" * 32000)
    out = [flux.ready("m")]
    out += flux.transcript("hello", is_final=False, confidence=0, timestamp=0.25)
    out += flux.transcript("hello there", is_final=True, confidence=0.7, timestamp=0.25)
    out.append(flux.error("invalid_json", "bad"))
    out.append(flux.error("idle_timeout", "idle"))
    got = [checked(m, FLUX_TYPES) for m in out]
    assert [m.get("event", m["type"]) for m in got] == [
        "Connected",
        "StartOfTurn",
        "Update",
        "EndOfTurn",
        "Warning",
        "Error",
    ]
    assert [m["sequence_id"] for m in got] == list(range(6))
    assert got[3]["transcript"] == "hello there"
    assert (got[3]["audio_window_start"], got[3]["audio_window_end"]) == (0.25, 1.0)
    assert flux.transcript("again", is_final=True, confidence=1, timestamp=2)[-1].count(
        '"turn_index":1'
    )


async def test_the_benchmark_measures_first_audio_and_finalize_latency(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    from voxgate.bench.deepgram import listen_final, speak_first_audio

    gw = await gateway()
    first, audio = await speak_first_audio(http, gw.ws(""), "The first clause comes out early.")
    assert 0 < first < 5
    assert len(audio) > 48000  # over a second at 24 kHz
    heard = await listen_final(http, gw.ws(""), speech())
    assert len(SPOKEN & words(heard.text)) >= 3, heard
    assert 0 < heard.finalize_seconds < 5


async def test_a_model_that_maps_to_a_cloud_engine_is_refused(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        '[speech.engines.dg]\ntype = "deepgram"\n[speech.aliases]\n"nova-3" = "dg"\n',
        own_engines=True,
    )
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw==",
    }
    path = "/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000"
    answer = await http.get(gw.base + path, headers=upgrade)
    assert answer.status == 400
    assert "cloud engine 'dg'" in (await answer.json())["error"]["message"]
