"""The unified speech protocol v1 (``shared/spec/speech-protocol.md``), sans-I/O.

:class:`TTSProtocol` and :class:`STTProtocol` take each client frame with ``receive``
and return one typed event, or raise :class:`MessageError` with the protocol's error
``code`` and a message naming what was wrong. They render server events to the frames
to send (``str`` for JSON, ``bytes`` for binary audio). They hold the protocol state —
whether ``init``/``start`` came, the ``context_id``, the audio ``sequence``, binary
mode — and nothing else: no sockets, no clock, no engines.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pybase64

from voxgate.audio import AudioFormatError, Encoding
from voxgate.errors import RemoteProtocolError
from voxgate.protocols.nesting import MAX_DEPTH, nesting_error


class MessageError(RemoteProtocolError):
    """A client message the protocol refuses. ``fatal`` errors end the session."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


MIN_RATE, MAX_RATE = 8000, 48000
MAX_CONTEXT_ID = 128


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TTSConfig:
    voice_id: str | None = None
    sample_rate: int = 24000
    encoding: Encoding = Encoding.PCM16
    language: str | None = None
    speed: float = 1.0
    binary: bool = False
    #: Engine-specific fields passed through (``voice_settings``, ``generation_config`` …).
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Init:
    config: TTSConfig
    context_id: str | None


@dataclass(frozen=True)
class InputText:
    text: str


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Configure:
    config: TTSConfig
    #: The names of the fields the message set.
    changed: tuple[str, ...]


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Close:
    """End the session normally (a protocol's close message; the unified protocol has
    none). TTS ends at once; STT answers what it holds first, as a finalize would."""


@dataclass(frozen=True)
class EndOfInput:
    """The client's text is over (SLNG's native ``__END__``): speak what is buffered, as a
    flush would, then end the session normally once it is spoken."""


TTSEvent = Init | InputText | Flush | Stop | Clear | Configure | Ping | Close | EndOfInput


@dataclass(frozen=True)
class STTConfig:
    sample_rate: int = 16000
    encoding: Encoding = Encoding.PCM16
    language: str | None = None
    interim_results: bool = True
    binary: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Start:
    config: STTConfig


@dataclass(frozen=True)
class Audio:
    #: Audio in the session's declared encoding (not yet converted).
    data: bytes


@dataclass(frozen=True)
class Finalize:
    pass


STTEvent = Start | Audio | Finalize | Ping | Close


# --- field readers -----------------------------------------------------------------------


def parse_object(data: str | bytes) -> dict[str, Any]:
    """A client's JSON message: an object with a string ``type``, nested at most
    ``MAX_DEPTH`` deep. Raises :class:`MessageError` naming the problem."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageError("invalid_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise MessageError("invalid_json", "message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise MessageError("invalid_field", "field 'type' is required and must be a string")
    deep = nesting_error(data, msg)
    if deep is not None:
        raise MessageError(
            "invalid_field", f"field {deep!r} nests more than {MAX_DEPTH} levels deep"
        )
    return msg


def _str(msg: Mapping[str, Any], name: str, *, max_len: int = 256) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageError("invalid_field", f"field {name!r} must be a string")
    if len(value) > max_len:
        raise MessageError("invalid_field", f"field {name!r} is longer than {max_len} characters")
    return value


def _bool(msg: Mapping[str, Any], name: str, default: bool) -> bool:
    value = msg.get(name, default)
    if not isinstance(value, bool):
        raise MessageError("invalid_field", f"field {name!r} must be true or false")
    return value


def _rate(msg: Mapping[str, Any], default: int) -> int:
    value = msg.get("sample_rate", default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError("invalid_field", "field 'sample_rate' must be an integer (Hz)")
    if not MIN_RATE <= value <= MAX_RATE:
        raise MessageError(
            "invalid_field", f"field 'sample_rate' must be {MIN_RATE}–{MAX_RATE} Hz, got {value}"
        )
    return value


def _encoding(msg: Mapping[str, Any], default: Encoding) -> Encoding:
    value = msg.get("encoding", default)
    try:
        return Encoding(value)
    except ValueError:
        raise MessageError(
            "unsupported_encoding",
            f"encoding {value!r} is not supported (pcm16, mulaw, alaw)",
        ) from None


def _speed(msg: Mapping[str, Any], default: float) -> float:
    value = msg.get("speed", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MessageError("invalid_field", "field 'speed' must be a number")
    if not 0.25 <= value <= 4.0:
        raise MessageError("invalid_field", f"field 'speed' must be 0.25–4.0, got {value}")
    return float(value)


_TTS_FIELDS = ("voice_id", "sample_rate", "encoding", "language", "speed", "binary")
_STT_FIELDS = ("sample_rate", "encoding", "language", "interim_results", "binary")


def _tts_config(msg: Mapping[str, Any], base: TTSConfig) -> TTSConfig:
    voice = _str(msg, "voice_id") if "voice_id" in msg else base.voice_id
    language = _str(msg, "language", max_len=32) if "language" in msg else base.language
    extra = {k: v for k, v in msg.items() if k not in (*_TTS_FIELDS, "type", "context_id")}
    return TTSConfig(
        voice_id=voice,
        sample_rate=_rate(msg, base.sample_rate),
        encoding=_encoding(msg, base.encoding),
        language=language,
        speed=_speed(msg, base.speed),
        binary=_bool(msg, "binary", base.binary),
        extra={**base.extra, **extra},
    )


def decode_base64(value: Any, name: str = "data") -> bytes:
    if not isinstance(value, str):
        raise MessageError("invalid_field", f"field {name!r} must be a base64 string")
    try:
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("invalid_field", f"field {name!r} is not valid base64") from None


def _dump(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


# --- TTS ---------------------------------------------------------------------------------


class TTSProtocol:
    """One TTS session's protocol state. Call :meth:`receive` for every client frame."""

    def __init__(self, *, max_text_chars: int, default_voice: str | None = None) -> None:
        self.max_text_chars = max_text_chars
        self.config = TTSConfig(voice_id=default_voice)
        self.context_id: str | None = None
        self.initialized = False
        self._sequence = 0

    def receive(self, data: str | bytes) -> TTSEvent:
        if isinstance(data, bytes):
            raise MessageError("invalid_json", "TTS takes JSON text messages, not binary frames")
        msg = parse_object(data)
        kind = msg["type"]
        if kind == "ping":
            return Ping()
        if kind == "init":
            if self.initialized:
                raise MessageError(
                    "invalid_field", "the session is already initialized: send configure instead"
                )
            context_id = _str(msg, "context_id", max_len=MAX_CONTEXT_ID)
            return Init(_tts_config(msg, self.config), context_id)
        if kind not in ("input_text", "flush", "stop", "clear", "configure"):
            raise MessageError("unknown_type", f"unknown message type {kind!r}")
        if not self.initialized:
            raise MessageError("not_initialized", f"{kind!r} before 'init': send init first")
        if kind == "input_text":
            text = msg.get("text")
            if not isinstance(text, str):
                raise MessageError("invalid_field", "field 'text' is required and must be a string")
            if len(text) > self.max_text_chars:
                raise MessageError(
                    "text_too_long",
                    f"text of {len(text)} characters is over the limit of {self.max_text_chars}",
                )
            return InputText(text)
        if kind == "configure":
            if "context_id" in msg:
                raise MessageError("invalid_field", "context_id cannot be changed by configure")
            changed = tuple(k for k in msg if k != "type")
            return Configure(_tts_config(msg, self.config), changed)
        if kind == "flush":
            return Flush()
        return Stop() if kind == "stop" else Clear()

    def start(self, context_id: str, config: TTSConfig) -> None:
        """Record that ``init`` was accepted with ``config`` (after the engine agreed)."""
        self.context_id = context_id
        self.config = config
        self.initialized = True

    def reconfigure(self, config: TTSConfig) -> None:
        self.config = config

    # rendering
    def ready(self, session: str, capabilities: Mapping[str, Any]) -> str:
        c = self.config
        return _dump(
            {
                "type": "ready",
                "session": session,
                "context_id": self.context_id,
                "capabilities": capabilities,
                "voice_id": c.voice_id,
                "sample_rate": c.sample_rate,
                "encoding": c.encoding.value,
            }
        )

    def audio_chunk(self, audio: bytes, duration_ms: float) -> str | bytes:
        seq = self._sequence
        self._sequence += 1
        if self.config.binary:
            return audio
        return _dump(
            {
                "type": "audio_chunk",
                "data": pybase64.b64encode(audio).decode(),
                "sequence": seq,
                "duration_ms": round(duration_ms, 3),
                "context_id": self.context_id,
            }
        )

    def audio_end(self, utterance_id: str, total_ms: float, *, interrupted: bool) -> str:
        return _dump(
            {
                "type": "audio_end",
                "id": utterance_id,
                "total_duration_ms": round(total_ms, 3),
                "interrupted": interrupted,
                "context_id": self.context_id,
            }
        )

    def cleared(self) -> str:
        return _dump({"type": "cleared", "context_id": self.context_id})

    def configured(self) -> str:
        c = self.config
        return _dump(
            {
                "type": "configured",
                "voice_id": c.voice_id,
                "sample_rate": c.sample_rate,
                "encoding": c.encoding.value,
                "language": c.language,
                "speed": c.speed,
                "binary": c.binary,
                "context_id": self.context_id,
            }
        )

    def pong(self) -> str:
        return _dump({"type": "pong", "context_id": self.context_id})

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        return render_error(code, message, retryable=retryable, context_id=self.context_id)

    def session_ended(self, reason: str, *, characters: int, audio_ms: float) -> str:
        return _dump(
            {
                "type": "session_ended",
                "reason": reason,
                "usage": {"characters": characters, "audio_ms": round(audio_ms, 3)},
                "context_id": self.context_id,
            }
        )


def render_error(code: str, message: str, *, retryable: bool, context_id: str | None) -> str:
    return _dump(
        {
            "type": "error",
            "code": code,
            "message": message,
            "retryable": retryable,
            "context_id": context_id,
        }
    )


# --- STT ---------------------------------------------------------------------------------


class STTProtocol:
    """One STT session's protocol state. Call :meth:`receive` for every client frame."""

    def __init__(self, *, language: str | None = None, max_audio_bytes: int) -> None:
        self.config = STTConfig(language=language)
        self.context_id: str | None = None
        self.started = False
        self.max_audio_bytes = max_audio_bytes

    def receive(self, data: str | bytes) -> STTEvent:
        if isinstance(data, bytes):
            if not self.started:
                raise MessageError("not_initialized", "audio before 'start': send start first")
            return Audio(self._check_audio(data))
        msg = parse_object(data)
        kind = msg["type"]
        if kind == "ping":
            return Ping()
        if kind == "start":
            if self.started:
                raise MessageError("invalid_field", "the session has already started")
            return Start(self._config(msg))
        if kind not in ("audio", "finalize"):
            raise MessageError("unknown_type", f"unknown message type {kind!r}")
        if not self.started:
            raise MessageError("not_initialized", f"{kind!r} before 'start': send start first")
        if kind == "audio":
            return Audio(self._check_audio(decode_base64(msg.get("data"))))
        return Finalize()

    def _config(self, msg: Mapping[str, Any]) -> STTConfig:
        base = self.config
        language = _str(msg, "language", max_len=32) if "language" in msg else base.language
        extra = {k: v for k, v in msg.items() if k not in (*_STT_FIELDS, "type")}
        return replace(
            base,
            sample_rate=_rate(msg, base.sample_rate),
            encoding=_encoding(msg, base.encoding),
            language=language,
            interim_results=_bool(msg, "interim_results", base.interim_results),
            binary=_bool(msg, "binary", base.binary),
            extra=extra,
        )

    def _check_audio(self, data: bytes) -> bytes:
        if len(data) > self.max_audio_bytes:
            raise MessageError(
                "invalid_field",
                f"audio chunk of {len(data)} bytes is over the limit of {self.max_audio_bytes}",
            )
        if self.config.encoding is Encoding.PCM16 and len(data) % 2:
            raise MessageError(
                "invalid_field",
                f"pcm16 audio must have an even number of bytes, got {len(data)}",
            )
        return data

    def start(self, context_id: str, config: STTConfig) -> None:
        self.context_id = context_id
        self.config = config
        self.started = True

    # rendering
    def ready(self, model_id: str) -> str:
        c = self.config
        return _dump(
            {
                "type": "ready",
                "model_id": model_id,
                "sample_rate": c.sample_rate,
                "encoding": c.encoding.value,
                "context_id": self.context_id,
            }
        )

    def speech_started(self, timestamp: float) -> str:
        return _dump(
            {"type": "speech_started", "timestamp": timestamp, "context_id": self.context_id}
        )

    def transcript(self, text: str, *, is_final: bool, confidence: float, timestamp: float) -> str:
        return _dump(
            {
                "type": "transcript",
                "text": text,
                "is_final": is_final,
                "confidence": confidence,
                "timestamp": timestamp,
                "context_id": self.context_id,
            }
        )

    def final_transcript(self, text: str, audio_seconds: float, timestamp: float) -> str:
        return _dump(
            {
                "type": "final_transcript",
                "text": text,
                "audio_duration_seconds": audio_seconds,
                "timestamp": timestamp,
                "context_id": self.context_id,
            }
        )

    def pong(self) -> str:
        return _dump({"type": "pong", "context_id": self.context_id})

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        return render_error(code, message, retryable=retryable, context_id=self.context_id)

    def session_ended(self, reason: str, *, audio_seconds: float) -> str:
        return _dump(
            {
                "type": "session_ended",
                "reason": reason,
                "usage": {"audio_seconds": round(audio_seconds, 3)},
                "context_id": self.context_id,
            }
        )


__all__ = [
    "Audio",
    "AudioFormatError",
    "Clear",
    "Close",
    "Configure",
    "EndOfInput",
    "Finalize",
    "Flush",
    "Init",
    "InputText",
    "MessageError",
    "Ping",
    "STTConfig",
    "STTEvent",
    "STTProtocol",
    "Start",
    "Stop",
    "TTSConfig",
    "TTSEvent",
    "TTSProtocol",
]
