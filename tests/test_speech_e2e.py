"""The unified speech endpoints over real sockets, with the real local engines."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import aiohttp
import orjson
import pybase64
import pytest
from tests.conftest import GatewayFactory, settled

from voxgate.audio import AudioFormat, Encoding, chunks, from_pcm16, resample, to_pcm16
from voxgate.engines.base import SynthesisOptions
from voxgate.engines.registry import EngineRegistry

pytestmark = pytest.mark.timeout(180)


async def receive_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(60):
        while True:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            event = orjson.loads(msg.data)
            out.append(event)
            if event["type"] == kind:
                return out


async def speak(
    http: aiohttp.ClientSession, url: str, text: str, **init: Any
) -> tuple[bytes, list[dict[str, Any]]]:
    async with http.ws_connect(url) as ws:
        await ws.send_json({"type": "init", **init})
        ready = (await receive_until(ws, "ready"))[-1]
        await ws.send_json({"type": "input_text", "text": text})
        await ws.send_json({"type": "flush"})
        events = [ready, *await receive_until(ws, "audio_end")]
    audio = b"".join(pybase64.b64decode(e["data"]) for e in events if e["type"] == "audio_chunk")
    return audio, events


async def transcribe(
    http: aiohttp.ClientSession, url: str, pcm16k: bytes, *, realtime: bool = False
) -> list[dict[str, Any]]:
    async with http.ws_connect(url) as ws:
        await ws.send_json({"type": "start", "sample_rate": 16000})
        await receive_until(ws, "ready")
        for piece in chunks(pcm16k, AudioFormat(sample_rate=16000), 100):
            await ws.send_bytes(piece)
            if realtime:
                await asyncio.sleep(0.01)
        await ws.send_json({"type": "finalize"})
        return await receive_until(ws, "final_transcript")


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", "", text.lower()).split()


SENTENCE = "Rice is often served in round bowls."


async def test_piper_to_pocketsphinx_and_whisper(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    audio, events = await speak(http, gw.ws("/v1/tts/piper"), SENTENCE, sample_rate=16000)
    ready = events[0]
    assert ready["voice_id"] == "en_US-joe-medium"
    assert ready["sample_rate"] == 16000
    chunks_ = [e for e in events if e["type"] == "audio_chunk"]
    assert [c["sequence"] for c in chunks_] == list(range(len(chunks_)))
    end = events[-1]
    assert end["interrupted"] is False
    assert end["total_duration_ms"] == pytest.approx(len(audio) / 32, abs=1)
    assert 1.5 < len(audio) / 32000 < 5  # seconds of speech
    padded = b"\0" * 8000 + audio + b"\0" * 8000

    ps = await transcribe(http, gw.ws("/v1/stt/pocketsphinx"), padded)
    assert ps[0]["type"] == "speech_started"
    final = ps[-1]
    # pocketsphinx is fast but inexact: most of the content words, not all
    assert len({"rice", "served", "round", "bowls"} & set(words(final["text"]))) >= 3, final
    assert final["audio_duration_seconds"] == pytest.approx(len(padded) / 32000, abs=0.05)
    assert any(e["type"] == "transcript" and not e["is_final"] for e in ps)  # partials

    wh = await transcribe(http, gw.ws("/v1/stt/whisper-websocket-stream"), padded)
    assert {"rice", "often", "served", "round", "bowls"} <= set(words(wh[-1]["text"]))
    finals = [e for e in wh if e["type"] == "transcript" and e["is_final"]]
    assert finals
    assert 0 < finals[0]["confidence"] <= 1

    await settled(gw)
    records = (await (await http.get(f"{gw.base}/v1/local/default/logs")).json())["records"]
    by_kind = {r["kind"]: r for r in records}
    assert by_kind["tts"]["provider"] == "piper"
    assert by_kind["tts"]["characters"] == len(SENTENCE)
    assert by_kind["tts"]["audio_seconds"] == pytest.approx(len(audio) / 32000, abs=0.01)
    assert by_kind["stt"]["audio_seconds"] == pytest.approx(len(padded) / 32000, abs=0.01)
    metrics = await (await http.get(f"{gw.base}/metrics")).text()
    assert 'voxgate_speech_sessions_total{kind="tts",engine="piper"} 1' in metrics
    assert 'voxgate_speech_characters_total{kind="tts",engine="piper"} 36' in metrics


async def test_piper_speaks_a_shorter_first_piece_while_other_engine_work_runs(
    speech_engines: EngineRegistry,
) -> None:
    """A listener's first audio waits for other sessions' engine work too: while some
    runs, piper's first piece has ``first_clause_words_busy`` words (4), not 6; the
    text is spoken whole either way."""
    tts = await speech_engines.tts("piper")
    stream = await tts.open(SynthesisOptions())
    text = "The morning train was late again so we walked to the office."
    idle = [pcm async for pcm in stream.synthesize(text)]
    gate = threading.Event()
    other = asyncio.ensure_future(speech_engines.workers.run(gate.wait, 10))
    try:
        await asyncio.sleep(0.05)
        busy = [pcm async for pcm in stream.synthesize(text)]
    finally:
        gate.set()
        await other
    seconds = [len(pcm) / (2 * stream.sample_rate) for pcm in (idle[0], busy[0])]
    assert seconds[1] < 0.8 * seconds[0], seconds  # "The morning train was" | "... again"
    whole = [sum(map(len, pieces)) for pieces in (idle, busy)]
    assert abs(whole[1] - whole[0]) < 0.15 * whole[0], whole


async def test_tts_formats_binary_and_first_audio_before_the_end(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    text = "Glue the sheet to the dark blue background and then set it on the table to dry."
    mulaw, events = await speak(
        http, gw.ws("/v1/tts/piper"), text, sample_rate=8000, encoding="mulaw"
    )
    assert events[0]["encoding"] == "mulaw"
    assert len([e for e in events if e["type"] == "audio_chunk"]) >= 2  # clause by clause
    pcm = to_pcm16(mulaw, Encoding.MULAW)
    assert events[-1]["total_duration_ms"] == pytest.approx(len(mulaw) / 8, abs=1)
    # the µ-law speech is loud enough to be speech, not noise or silence
    assert (
        max(
            abs(int.from_bytes(pcm[i : i + 2], "little", signed=True))
            for i in range(0, len(pcm), 2)
        )
        > 3000
    )

    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_json({"type": "init", "binary": True, "context_id": "mine"})
        ready = (await receive_until(ws, "ready"))[-1]
        assert ready["context_id"] == "mine"
        assert ready["sample_rate"] == 24000
        await ws.send_json({"type": "input_text", "text": "Hello there. "})
        await ws.send_json({"type": "flush"})
        got = b""
        async with asyncio.timeout(30):
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    got += msg.data
                    continue
                event = orjson.loads(msg.data)
                if event["type"] == "audio_end":
                    break
        assert event["id"].startswith("mine:")
        assert event["total_duration_ms"] == pytest.approx(len(got) / 48, abs=1)


async def test_tts_stop_clear_configure_ping(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_json({"type": "init"})
        await receive_until(ws, "ready")
        await ws.send_json({"type": "ping"})
        assert (await receive_until(ws, "pong"))[-1]["type"] == "pong"
        # a long text, then stop as soon as the first audio arrives
        await ws.send_json(
            {"type": "input_text", "text": "One two three four five six seven. " * 20}
        )
        first = (await receive_until(ws, "audio_chunk"))[-1]
        assert first["sequence"] == 0
        await ws.send_json({"type": "stop"})
        after = await receive_until(ws, "audio_end")
        assert after[-1]["interrupted"] is True
        # nothing more comes for the stopped text
        await ws.send_json({"type": "ping"})
        assert [e["type"] for e in await receive_until(ws, "pong")] == ["pong"]
        # buffered text without a sentence end is dropped by clear
        await ws.send_json({"type": "input_text", "text": "never spoken"})
        await ws.send_json({"type": "clear"})
        assert (await receive_until(ws, "cleared"))[-1]["type"] == "cleared"
        await ws.send_json({"type": "flush"})
        end = await receive_until(ws, "audio_end")
        assert [e["type"] for e in end] == ["audio_end"]
        assert end[-1]["total_duration_ms"] == 0
        await ws.send_json({"type": "configure", "sample_rate": 16000, "speed": 2.0})
        conf = (await receive_until(ws, "configured"))[-1]
        assert (conf["sample_rate"], conf["speed"]) == (16000, 2.0)
        await ws.send_json({"type": "configure", "voice_id": "nobody"})
        err = (await receive_until(ws, "error"))[-1]
        assert err["code"] == "unsupported_voice"
        assert "nobody" in err["message"]
        await ws.send_json({"type": "input_text", "text": "Still here."})
        await ws.send_json({"type": "flush"})
        events = await receive_until(ws, "audio_end")
        assert events[-1]["total_duration_ms"] > 0


async def test_bad_input_gets_errors_and_the_session_goes_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        "[accounts.local.gateways.default]\nlimits = { max_text_chars = 50, max_audio_chunk_bytes = 1000 }\n"
    )
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        for bad, code in (
            ("{", "invalid_json"),
            ('{"type": "input_text", "text": "early"}', "not_initialized"),
            ('{"type": "init", "encoding": "mp3"}', "unsupported_encoding"),
            ('{"type": "init", "voice_id": "nobody"}', "unsupported_voice"),
            ('{"type": "wave"}', "unknown_type"),
        ):
            await ws.send_str(bad)
            err = (await receive_until(ws, "error"))[-1]
            assert err["code"] == code, (bad, err)
            assert err["message"]
        await ws.send_bytes(b"\0\1")
        assert (await receive_until(ws, "error"))[-1]["code"] == "invalid_json"
        await ws.send_json({"type": "init"})
        await receive_until(ws, "ready")
        await ws.send_json({"type": "input_text", "text": "x" * 51})
        err = (await receive_until(ws, "error"))[-1]
        assert err["code"] == "text_too_long"
        assert "limit of 50" in err["message"]
        await ws.send_json({"type": "input_text"})
        assert (await receive_until(ws, "error"))[-1]["code"] == "invalid_field"
        # the text accepted before the errors is still spoken
        await ws.send_json({"type": "input_text", "text": "Fine."})
        await ws.send_json({"type": "flush"})
        events = await receive_until(ws, "audio_end")
        assert events[-1]["total_duration_ms"] > 200

    async with http.ws_connect(gw.ws("/v1/stt/pocketsphinx?language=en")) as ws:
        await ws.send_bytes(b"\0\0")
        assert (await receive_until(ws, "error"))[-1]["code"] == "not_initialized"
        await ws.send_json({"type": "start", "sample_rate": 5})
        assert (await receive_until(ws, "error"))[-1]["code"] == "invalid_field"
        await ws.send_json({"type": "start", "sample_rate": 24000})
        await receive_until(ws, "ready")
        await ws.send_bytes(b"\0\0\0")
        assert "even number" in (await receive_until(ws, "error"))[-1]["message"]
        await ws.send_bytes(b"\0" * 1002)
        assert "limit of 1000" in (await receive_until(ws, "error"))[-1]["message"]
        await ws.send_json({"type": "audio", "data": "!!"})
        assert "base64" in (await receive_until(ws, "error"))[-1]["message"]
        await ws.send_json({"type": "audio", "data": pybase64.b64encode(b"\0" * 960).decode()})
        await ws.send_json({"type": "finalize"})
        final = (await receive_until(ws, "final_transcript"))[-1]
        assert final["text"] == ""
        assert final["audio_duration_seconds"] == pytest.approx(0.02, abs=0.001)


async def test_mulaw_stt_at_8khz(gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    """Telephone audio: 8 kHz µ-law, upsampled for whisper (pocketsphinx's 16 kHz model
    reads narrowband speech poorly)."""
    gw = await gateway()
    audio, _ = await speak(http, gw.ws("/v1/tts/piper"), SENTENCE, sample_rate=8000)
    mulaw = from_pcm16(b"\0" * 4000 + audio + b"\0" * 4000, Encoding.MULAW)
    async with http.ws_connect(gw.ws("/v1/stt/whisper")) as ws:
        await ws.send_json(
            {"type": "start", "sample_rate": 8000, "encoding": "mulaw", "interim_results": False}
        )
        ready = (await receive_until(ws, "ready"))[-1]
        assert (ready["sample_rate"], ready["encoding"]) == (8000, "mulaw")
        for piece in chunks(mulaw, AudioFormat(Encoding.MULAW, 8000), 200):
            await ws.send_bytes(piece)
        await ws.send_json({"type": "finalize"})
        events = await receive_until(ws, "final_transcript")
    assert not [e for e in events if e["type"] == "transcript" and not e["is_final"]]
    assert {"rice", "served", "round", "bowls"} <= set(words(events[-1]["text"]))


async def test_handshake_refusals_and_auth(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        '[accounts.local.gateways.default]\ntokens = [{ name = "ci", env = "TOK" }]\n',
        env={"TOK": "s3cret"},
    )
    r = await http.get(f"{gw.base}/v1/tts/nope")
    assert r.status == 404
    assert "unknown TTS engine 'nope'" in (await r.json())["error"]["message"]
    assert (await http.get(f"{gw.base}/v1/stt/piper")).status == 404  # piper is TTS only
    r = await http.get(f"{gw.base}/v1/tts/piper", headers={"Authorization": "Bearer s3cret"})
    assert r.status == 426
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(gw.ws("/v1/tts/piper"))
    assert info.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(gw.ws("/v1/tts/piper"), headers={"Authorization": "Bearer wrong"})
    for kwargs in (
        {"headers": {"Authorization": "Bearer s3cret"}},
        {"headers": {"voxgate-authorization": "Bearer s3cret"}},
        {"protocols": ("voxgate-authorization.s3cret",)},
    ):
        async with http.ws_connect(gw.ws("/v1/tts/piper"), **kwargs) as ws:
            await ws.send_json({"type": "ping"})
            assert (await receive_until(ws, "pong"))[-1]["type"] == "pong"
            if "protocols" in kwargs:
                assert ws.protocol == "voxgate-authorization.s3cret"


async def test_limits_close_with_an_error_first(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        "[accounts.local.gateways.default]\n"
        "limits = { max_message_bytes = 2000, messages_per_minute = 5, idle_seconds = 1, max_connections = 1 }\n"
    )
    async with http.ws_connect(gw.ws("/v1/stt/pocketsphinx")) as ws:
        await ws.send_json({"type": "start"})
        await receive_until(ws, "ready")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(gw.ws("/v1/tts/piper"))
        assert info.value.status == 429
        await ws.send_bytes(b"\0" * 4000)
        err = (await receive_until(ws, "error"))[-1]
        assert err["code"] == "message_too_large"
        ended = (await receive_until(ws, "session_ended"))[-1]
        assert ended["reason"] == "message too large"
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4002
    await settled(gw)  # max_connections = 1: the slot is free once the record is written

    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        for _ in range(6):
            await ws.send_json({"type": "ping"})
        events = await receive_until(ws, "session_ended")
        assert [e["type"] for e in events][-2:] == ["error", "session_ended"]
        assert events[-2]["code"] == "rate_limited"
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001
    await settled(gw)

    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        started = time.monotonic()
        events = await receive_until(ws, "session_ended")
        assert events[-2]["code"] == "idle_timeout"
        assert 0.9 < time.monotonic() - started < 4
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4008
    await settled(gw)
    records = (await (await http.get(f"{gw.base}/v1/local/default/logs")).json())["records"]
    assert sorted(r["client_close_code"] for r in records) == [4001, 4002, 4008]


async def test_realtime_stream_whisper_final_follows_finalize(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    audio, _ = await speak(
        http, gw.ws("/v1/tts/piper"), "These days a chicken leg is a rare dish.", sample_rate=16000
    )
    events = await transcribe(http, gw.ws("/v1/stt/whisper"), b"\0" * 6400 + audio, realtime=True)
    assert "chicken leg" in events[-1]["text"].lower()
    assert resample(b"", 16000, 8000) == b""


async def test_session_too_long_and_bad_configure(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway("[accounts.local.gateways.default]\nlimits = { max_session_seconds = 1 }\n")
    await gw.services.engines.tts("piper")  # loaded before the one-second session starts
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_json({"type": "configure", "speed": 2})
        assert (await receive_until(ws, "error"))[-1]["code"] == "not_initialized"
        await ws.send_json({"type": "init"})
        await receive_until(ws, "ready")
        await ws.send_json({"type": "configure", "encoding": "flac"})
        assert (await receive_until(ws, "error"))[-1]["code"] == "unsupported_encoding"
        events = await receive_until(ws, "session_ended")
        assert events[-2]["code"] == "session_too_long"
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4003
