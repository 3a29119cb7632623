"""Sans-I/O translators between canonical speech requests and cloud providers' messages.

Each TTS translator turns "speak this text" into the provider's documented messages and
the provider's replies into :class:`AudioOut` / :class:`UtteranceDone` /
:class:`ProviderFailed`; the Deepgram STT translator turns live results into the
canonical recognition events. None of them opens a socket or reads a clock:
``voxgate.engines.cloud`` drives them over the relay's upstream connector.

- ElevenLabs ``text-to-speech/{voice}/stream-input``: one connection per utterance
  (init message with a single space, the text, ``{"text": ""}`` to end; ``isFinal``).
- Cartesia ``tts/websocket``: one connection per session, a ``context_id`` per
  utterance (``continue: false`` ends it, ``type: done`` answers, ``cancel`` interrupts);
  speed as ``generation_config.speed`` (sonic-3 on) or ``voice.__experimental_controls``.
- Deepgram ``speak``: ``Speak`` + ``Flush`` → binary audio then ``Flushed``; ``Clear``
  interrupts and is answered by ``Cleared``; speed as the ``speed`` query parameter.
  ``listen``: binary audio in, ``Results``
  out, ``Finalize`` answered by results with ``from_finalize``.

``receive`` never raises, whatever a provider sends: a TTS failure is a
:class:`ProviderFailed` value, a malformed recognition result a ``RecognitionFailed``
event naming the field; messages of other types are ignored.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pybase64

from voxgate.engines.base import (
    Finalized,
    RecognitionEvent,
    RecognitionFailed,
    SpeechStarted,
    Transcript,
    UpstreamEngineError,
)


@dataclass(frozen=True, slots=True)
class AudioOut:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class UtteranceDone:
    pass


@dataclass(frozen=True, slots=True)
class ProviderFailed:
    message: str
    retryable: bool = False


TTSReply = AudioOut | UtteranceDone | ProviderFailed


def _json(data: str | bytes) -> dict[str, Any] | None:
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) else None


def _dump(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


#: The speeds each provider documents (multipliers of the normal rate): ElevenLabs'
#: ``voice_settings.speed``; Cartesia's ``generation_config.speed`` (sonic-3 and later);
#: Deepgram's ``speed`` query parameter of ``speak`` (Aura-2 voices).
ELEVENLABS_SPEEDS = (0.7, 1.2)
CARTESIA_SPEEDS = (0.6, 1.5)
DEEPGRAM_SPEEDS = (0.7, 1.5)
#: Cartesia models older than sonic-3, whose speed is the experimental voice control
#: ``__experimental_controls.speed`` (-1.0 slowest … 0 normal … 1.0 fastest).
CARTESIA_EXPERIMENTAL_SPEED_MODELS = ("sonic-2", "sonic-turbo", "sonic-english", "sonic-multi")
#: The multipliers voxgate maps onto that control: 0.5 → -1.0, 1.0 → 0, 1.5 → 1.0.
CARTESIA_EXPERIMENTAL_SPEEDS = (0.5, 1.5)


def cartesia_speeds(model_id: str) -> tuple[float, float]:
    if model_id.startswith(CARTESIA_EXPERIMENTAL_SPEED_MODELS):
        return CARTESIA_EXPERIMENTAL_SPEEDS
    return CARTESIA_SPEEDS


def nearest_rate(wanted: int, offered: tuple[int, ...]) -> int:
    """The provider rate to ask for: ``wanted`` if offered, else the nearest above it."""
    if wanted in offered:
        return wanted
    above = [r for r in offered if r > wanted]
    return min(above) if above else max(offered)


@dataclass
class ElevenLabsTTS:
    voice_id: str
    model_id: str
    sample_rate: int
    speed: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    RATES = (8000, 16000, 22050, 24000, 44100)
    per_utterance_connection = True

    def __post_init__(self) -> None:
        self.sample_rate = nearest_rate(self.sample_rate, self.RATES)

    def path(self) -> str:
        return f"text-to-speech/{quote(self.voice_id, safe='')}/stream-input"

    def query(self) -> str:
        return urlencode({"model_id": self.model_id, "output_format": f"pcm_{self.sample_rate}"})

    def utterance(self, text: str, context_id: str) -> list[str]:
        init: dict[str, Any] = {"text": " "}
        settings = dict(self.extra.get("voice_settings") or {})
        if self.speed != 1.0:
            settings["speed"] = self.speed
        if settings:
            init["voice_settings"] = settings
        if isinstance(self.extra.get("generation_config"), dict):
            init["generation_config"] = self.extra["generation_config"]
        return [_dump(init), _dump({"text": text.strip() + " "}), _dump({"text": ""})]

    def cancel(self, context_id: str) -> list[str]:
        return []  # the connection is closed instead

    def receive(self, data: str | bytes, context_id: str) -> list[TTSReply]:
        msg = _json(data)
        if msg is None:
            return [ProviderFailed("elevenlabs sent a message that is not a JSON object")]
        if msg.get("error") or (msg.get("message") and "audio" not in msg):
            return [ProviderFailed(f"elevenlabs: {msg.get('message') or msg.get('error')}")]
        out: list[TTSReply] = []
        audio = _b64(msg.get("audio"))
        if audio:
            out.append(AudioOut(audio))
        if msg.get("isFinal") is True:
            out.append(UtteranceDone())
        return out


@dataclass
class CartesiaTTS:
    voice_id: str
    model_id: str
    sample_rate: int
    language: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    speed: float = 1.0

    RATES = (8000, 16000, 22050, 24000, 44100, 48000)
    per_utterance_connection = False

    def __post_init__(self) -> None:
        self.sample_rate = nearest_rate(self.sample_rate, self.RATES)

    def path(self) -> str:
        return "tts/websocket"

    def query(self) -> str:
        return ""

    def utterance(self, text: str, context_id: str) -> list[str]:
        request: dict[str, Any] = {
            "model_id": self.model_id,
            "transcript": text,
            "voice": {"mode": "id", "id": self.voice_id},
            "context_id": context_id,
            "output_format": {
                "container": "raw",
                "encoding": "pcm_s16le",
                "sample_rate": self.sample_rate,
            },
            "continue": False,
        }
        if self.language:
            request["language"] = self.language
        config = self.extra.get("generation_config")
        config = dict(config) if isinstance(config, dict) else {}
        if self.speed != 1.0:
            if cartesia_speeds(self.model_id) is CARTESIA_EXPERIMENTAL_SPEEDS:
                controls = {"speed": round((self.speed - 1.0) * 2.0, 3)}
                request["voice"]["__experimental_controls"] = controls
            else:
                config["speed"] = self.speed
        if config:
            request["generation_config"] = config
        return [_dump(request)]

    def cancel(self, context_id: str) -> list[str]:
        return [_dump({"context_id": context_id, "cancel": True})]

    def receive(self, data: str | bytes, context_id: str) -> list[TTSReply]:
        msg = _json(data)
        if msg is None:
            return [ProviderFailed("cartesia sent a message that is not a JSON object")]
        if msg.get("context_id") not in (None, context_id):
            return []  # a cancelled context's late output
        kind = msg.get("type")
        if kind == "error":
            status = msg.get("status_code")
            text = msg.get("message") or msg.get("error") or msg.get("title") or "error"
            retryable = isinstance(status, int) and (status == 429 or status >= 500)
            return [ProviderFailed(f"cartesia: {text}", retryable=retryable)]
        out: list[TTSReply] = []
        if kind == "chunk":
            audio = _b64(msg.get("data"))
            if audio:
                out.append(AudioOut(audio))
        if kind == "done" or msg.get("done") is True:
            out.append(UtteranceDone())
        return out


@dataclass
class DeepgramTTS:
    model_id: str
    sample_rate: int
    #: ``speak``'s ``speed`` query parameter (Aura-2); 1.0 is not sent.
    speed: float = 1.0

    RATES = (8000, 16000, 24000, 32000, 48000)
    per_utterance_connection = False

    def __post_init__(self) -> None:
        self.sample_rate = nearest_rate(self.sample_rate, self.RATES)
        self._clearing = False

    def path(self) -> str:
        return "speak"

    def query(self) -> str:
        params: dict[str, Any] = {
            "model": self.model_id,
            "encoding": "linear16",
            "sample_rate": self.sample_rate,
        }
        if self.speed != 1.0:
            params["speed"] = f"{self.speed:g}"
        return urlencode(params)

    def utterance(self, text: str, context_id: str) -> list[str]:
        return [_dump({"type": "Speak", "text": text}), _dump({"type": "Flush"})]

    def cancel(self, context_id: str) -> list[str]:
        self._clearing = True
        return [_dump({"type": "Clear"})]

    def receive(self, data: str | bytes, context_id: str) -> list[TTSReply]:
        if isinstance(data, bytes):
            return [] if self._clearing else [AudioOut(data)]
        msg = _json(data) or {}
        kind = msg.get("type")
        if kind == "Cleared":
            self._clearing = False
        elif kind == "Flushed" and not self._clearing:
            return [UtteranceDone()]
        elif kind == "Error":
            text = msg.get("description") or msg.get("message") or "error"
            return [ProviderFailed(f"deepgram: {text}")]
        return []


@dataclass
class DeepgramSTT:
    """Deepgram live transcription, translated to canonical recognition events."""

    model_id: str
    language: str | None
    interim: bool
    sample_rate: int = 16000
    _finals: list[str] = field(default_factory=list)
    _audio_seconds: float = 0.0

    def path(self) -> str:
        return "listen"

    def query(self) -> str:
        params = {
            "model": self.model_id,
            "encoding": "linear16",
            "sample_rate": str(self.sample_rate),
            "channels": "1",
            "interim_results": "true",
            "punctuate": "true",
            "vad_events": "true",
        }
        if self.language:
            params["language"] = self.language
        return urlencode(params)

    def audio(self, pcm: bytes) -> bytes:
        self._audio_seconds += len(pcm) / (2 * self.sample_rate)
        return pcm

    def finalize(self) -> str:
        return _dump({"type": "Finalize"})

    def keepalive(self) -> str:
        return _dump({"type": "KeepAlive"})

    def close(self) -> str:
        return _dump({"type": "CloseStream"})

    def finalized_now(self) -> Finalized:
        """The answer to a finalize the provider did not answer (nothing was buffered)."""
        text = " ".join(self._finals)
        self._finals.clear()
        return Finalized(text, round(self._audio_seconds, 3), 0.0)

    def receive(self, data: str | bytes) -> list[RecognitionEvent]:
        """Events for one provider message; a malformed ``Results`` message becomes one
        :class:`RecognitionFailed` naming the field. Never raises."""
        msg = _json(data) if isinstance(data, str) else None
        if msg is None:
            return []
        kind = msg.get("type")
        if kind == "SpeechStarted":
            return [SpeechStarted(_number(msg.get("timestamp")))]
        if kind != "Results":
            return []
        alt = _first_alternative(msg)
        if isinstance(alt, str):
            return [_malformed(alt)]
        text = alt.get("transcript")
        if text is None:
            text = ""
        elif not isinstance(text, str):
            return [_malformed("channel.alternatives[0].transcript: expected a string")]
        conf = _number(alt.get("confidence"))
        ts = _number(msg.get("start"))
        out: list[RecognitionEvent] = []
        if msg.get("is_final") is True:
            if text:
                self._finals.append(text)
                out.append(Transcript(text, True, conf, ts))
            if msg.get("from_finalize") is True:
                done = self.finalized_now()
                out.append(Finalized(done.text, done.audio_duration_seconds, ts))
        elif text and self.interim:
            out.append(Transcript(text, False, conf, ts))
        return out


def _first_alternative(msg: dict[str, Any]) -> dict[str, Any] | str:
    """``channel.alternatives[0]`` of a ``Results`` message (``{}`` when there is none),
    or what is wrong with the message."""
    channel = msg.get("channel")
    if channel is None:
        return {}
    if not isinstance(channel, dict):
        return "channel: expected an object"
    alts = channel.get("alternatives")
    if alts is None:
        return {}
    if not isinstance(alts, list):
        return "channel.alternatives: expected a list"
    if not alts:
        return {}
    if not isinstance(alts[0], dict):
        return "channel.alternatives[0]: expected an object"
    return alts[0]


def _number(value: Any) -> float:
    """A number the provider reported, or 0.0 when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) else 0.0


def _malformed(what: str) -> RecognitionFailed:
    return RecognitionFailed(
        UpstreamEngineError(f"deepgram sent a malformed Results message: {what}")
    )
