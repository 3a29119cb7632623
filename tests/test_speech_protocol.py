"""The unified speech protocol translators, without sockets."""

from __future__ import annotations

import orjson
import pybase64
import pytest

from voxgate.audio import Encoding
from voxgate.protocols.speech.unified import (
    Audio,
    Configure,
    Finalize,
    Flush,
    Init,
    InputText,
    MessageError,
    Ping,
    Start,
    STTProtocol,
    TTSConfig,
    TTSProtocol,
)


def tts(**over: object) -> TTSProtocol:
    return TTSProtocol(max_text_chars=int(over.get("max_text_chars", 100)))


def msg(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def refused(p: TTSProtocol | STTProtocol, data: str | bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        p.receive(data)
    return info.value


def test_tts_init_then_text_flush() -> None:
    p = tts()
    ev = p.receive(
        msg(
            type="init",
            voice_id="v",
            sample_rate=16000,
            encoding="mulaw",
            speed=1.5,
            voice_settings={"stability": 0.5},
            context_id="c1",
        )
    )
    assert isinstance(ev, Init)
    assert ev.context_id == "c1"
    assert ev.config == TTSConfig(
        voice_id="v",
        sample_rate=16000,
        encoding=Encoding.MULAW,
        speed=1.5,
        extra={"voice_settings": {"stability": 0.5}},
    )
    p.start("c1", ev.config)
    assert p.receive(msg(type="input_text", text="Hi.")) == InputText("Hi.")
    assert isinstance(p.receive(msg(type="flush")), Flush)
    assert isinstance(p.receive(msg(type="ping")), Ping)


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        ("not json", "invalid_json", "not valid JSON"),
        ("[1, 2]", "invalid_json", "JSON object"),
        (msg(text="x"), "invalid_field", "'type'"),
        (msg(type=7), "invalid_field", "'type'"),
        (msg(type="dance"), "unknown_type", "'dance'"),
        (msg(type="input_text", text="x"), "not_initialized", "send init first"),
        (msg(type="init", sample_rate="fast"), "invalid_field", "'sample_rate'"),
        (msg(type="init", sample_rate=1000), "invalid_field", "8000–48000"),
        (msg(type="init", encoding="opus"), "unsupported_encoding", "'opus'"),
        (msg(type="init", speed=9), "invalid_field", "'speed'"),
        (msg(type="init", speed=True), "invalid_field", "'speed'"),
        (msg(type="init", binary="yes"), "invalid_field", "'binary'"),
        (msg(type="init", voice_id=3), "invalid_field", "'voice_id'"),
        (msg(type="init", context_id="x" * 200), "invalid_field", "'context_id'"),
        (b"\x00\x01", "invalid_json", "binary"),
    ],
)
def test_tts_refusals_name_the_problem(data: str | bytes, code: str, words: str) -> None:
    err = refused(tts(), data)
    assert err.code == code
    assert words in err.public_message
    assert not err.fatal


def test_tts_refusals_after_init() -> None:
    p = tts(max_text_chars=10)
    p.start("c", TTSConfig())
    assert refused(p, msg(type="input_text", text="x" * 11)).code == "text_too_long"
    assert refused(p, msg(type="input_text")).code == "invalid_field"
    assert refused(p, msg(type="input_text", text=5)).code == "invalid_field"
    assert "already initialized" in refused(p, msg(type="init")).public_message
    assert "context_id" in refused(p, msg(type="configure", context_id="y")).public_message
    ev = p.receive(msg(type="configure", speed=2))
    assert isinstance(ev, Configure)
    assert ev.changed == ("speed",)
    assert ev.config.speed == 2.0


def test_tts_rendering_json_and_binary() -> None:
    p = tts()
    p.start("ctx", TTSConfig(sample_rate=16000))
    first = orjson.loads(p.audio_chunk(b"\1\2", 62.5))
    assert first == {
        "type": "audio_chunk",
        "data": "AQI=",
        "sequence": 0,
        "duration_ms": 62.5,
        "context_id": "ctx",
    }
    assert orjson.loads(p.audio_chunk(b"\1\2", 1))["sequence"] == 1
    p.reconfigure(TTSConfig(binary=True))
    assert p.audio_chunk(b"\1\2", 1) == b"\1\2"
    end = orjson.loads(p.audio_end("u1", 12.5, interrupted=True))
    assert end == {
        "type": "audio_end",
        "id": "u1",
        "total_duration_ms": 12.5,
        "interrupted": True,
        "context_id": "ctx",
    }
    ended = orjson.loads(p.session_ended("idle timeout", characters=3, audio_ms=5))
    assert ended["usage"] == {"characters": 3, "audio_ms": 5}
    err = orjson.loads(p.error("engine_unavailable", "down", retryable=True))
    assert err == {
        "type": "error",
        "code": "engine_unavailable",
        "message": "down",
        "retryable": True,
        "context_id": "ctx",
    }


def test_stt_start_audio_finalize() -> None:
    p = STTProtocol(max_audio_bytes=8)
    assert refused(p, b"\0\0").code == "not_initialized"
    assert refused(p, msg(type="audio", data="AAA=")).code == "not_initialized"
    assert refused(p, msg(type="start", encoding="flac")).code == "unsupported_encoding"
    ev = p.receive(msg(type="start", sample_rate=8000, encoding="mulaw", interim_results=False))
    assert isinstance(ev, Start)
    p.start("c", ev.config)
    assert p.receive(b"\1\2\3") == Audio(b"\1\2\3")  # µ-law: any length
    data = pybase64.b64encode(b"\5\6").decode()
    assert p.receive(msg(type="audio", data=data)) == Audio(b"\5\6")
    assert isinstance(p.receive(msg(type="finalize")), Finalize)
    assert "base64" in refused(p, msg(type="audio", data="***")).public_message
    assert "base64 string" in refused(p, msg(type="audio", data=1)).public_message
    assert "over the limit of 8" in refused(p, b"\0" * 9).public_message
    assert "already started" in refused(p, msg(type="start")).public_message


def test_stt_pcm16_needs_whole_samples() -> None:
    p = STTProtocol(max_audio_bytes=100)
    p.start("c", p.receive(msg(type="start")).config)  # type: ignore[union-attr]
    assert "even number" in refused(p, b"\0\0\0").public_message
    final = orjson.loads(p.final_transcript("hi there", 1.5, 0.2))
    assert final == {
        "type": "final_transcript",
        "text": "hi there",
        "audio_duration_seconds": 1.5,
        "timestamp": 0.2,
        "context_id": "c",
    }
