"""Deepgram's live WebSocket protocols, served on voxgate's engines (sans-I/O).

Clients of Deepgram (its SDKs, and Cloudflare's Workers AI ``@cf/deepgram/…`` models)
speak these; :class:`SpeakProtocol` and :class:`ListenProtocol` translate them to and
from the canonical events the speech sessions (:mod:`voxgate.core.speech`) work in, so
the sessions, limits and usage records are those of the unified protocol.

``speak`` (text to speech, ``/v1/speak?model=&encoding=&sample_rate=``): the client sends
``{"type": "Speak", "text"}``, ``Flush``, ``Clear`` and ``Close``; the server sends
``Metadata`` (``request_id``, ``model_name``, ``model_version``, ``model_uuid``) at once,
binary audio, ``Flushed`` (``sequence_id``) after a flush's audio, ``Cleared`` after a
clear, and ``Warning`` (``description``, ``code``) for a message it refuses.

``listen`` (speech to text, ``/v1/listen?model=&encoding=&sample_rate=&interim_results=``):
the client sends binary audio, ``KeepAlive``, ``Finalize``, ``CloseStream`` and
``Configure``; the server sends ``Results`` (``channel.alternatives[0]`` with
``transcript``, ``confidence``, ``words``; ``is_final``, ``speech_final``,
``from_finalize``, ``start``, ``duration``, ``metadata``), ``SpeechStarted`` with
``vad_events=true``, ``UtteranceEnd`` with ``utterance_end_ms``, ``Metadata`` before it
closes, ``ConfigureSuccess``/``ConfigureFailure``, and ``Error`` (``variant``,
``description``) for a message it refuses.

The session, not the client, opens the engine: the query string is the configuration,
so :meth:`SpeakProtocol.opening` / :meth:`ListenProtocol.opening` give the ``Init`` /
``Start`` the session handles before the first frame (the query string itself, model
names and handshake credentials: :mod:`voxgate.protocols.speech.deepgram_query`). Errors
raise :class:`~voxgate.protocols.speech.unified.MessageError` with voxgate's codes,
rendered by ``error`` as Deepgram's messages.

Sources: the message types of ``deepgram-sdk`` 7.17 (``deepgram/listen/v1/types``,
``deepgram/speak/v1/types``); developers.deepgram.com (Finalize, CloseStream, TTS Flush,
Clear and Close); Cloudflare AI Gateway's realtime WebSockets page (Workers AI models).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from voxgate.audio import Encoding
from voxgate.protocols.nesting import MAX_DEPTH, nesting_error
from voxgate.protocols.speech.deepgram_query import ListenOptions, derived_uuid
from voxgate.protocols.speech.unified import (
    Audio,
    Close,
    Finalize,
    Flush,
    Init,
    InputText,
    MessageError,
    Ping,
    Start,
    Stop,
    STTConfig,
    STTEvent,
    TTSConfig,
    TTSEvent,
)

# --- messages ------------------------------------------------------------------------------


def parse_message(data: str) -> tuple[str, dict[str, Any]]:
    """A client's JSON message: its ``type`` and the object. Raises :class:`MessageError`."""
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
    return kind, msg


def dump(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


#: Codes that precede a close (limits, and failures the session does not survive).
FATAL_CODES = frozenset(
    {"rate_limited", "message_too_large", "session_too_long", "idle_timeout", "internal_error"}
)


class SpeakProtocol:
    """One ``speak`` session's protocol state (a :class:`~voxgate.core.speech_wire.TTSWire`).

    ``Speak`` is the canonical ``input_text`` (sentences are spoken as they complete),
    ``Flush`` a flush (→ ``Flushed``), ``Clear`` a stop: the text not yet spoken and the
    audio not yet sent are dropped (→ ``Cleared``), ``Close`` ends the session.
    """

    def __init__(
        self, *, model: str, config: TTSConfig, request_id: str, max_text_chars: int
    ) -> None:
        self.model = model
        self.config = config
        self.request_id = request_id
        self.max_text_chars = max_text_chars
        self.context_id: str | None = None
        self._sequence = 0

    def opening(self) -> Init:
        """The ``Init`` the query string stands for; the session handles it first."""
        return Init(self.config, None)

    def receive(self, data: str | bytes) -> TTSEvent:
        if isinstance(data, bytes):
            raise MessageError(
                "invalid_json", 'speak takes JSON text messages ({"type": "Speak", …}), not binary'
            )
        kind, msg = parse_message(data)
        if kind == "Speak":
            text = msg.get("text")
            if not isinstance(text, str):
                raise MessageError("invalid_field", "field 'text' is required and must be a string")
            if len(text) > self.max_text_chars:
                raise MessageError(
                    "text_too_long",
                    f"text of {len(text)} characters is over the limit of {self.max_text_chars}",
                )
            return InputText(text)
        if kind == "Flush":
            return Flush()
        if kind == "Clear":
            return Stop()
        if kind == "Close":
            return Close()
        if kind == "KeepAlive":
            return Ping()
        raise MessageError(
            "unknown_type",
            f"unknown message type {kind[:64]!r} (Speak, Flush, Clear, Close)",
        )

    def start(self, context_id: str, config: TTSConfig) -> None:
        self.context_id = context_id
        self.config = config

    def reconfigure(self, config: TTSConfig) -> None:
        self.config = config

    def ready(self, session: str, capabilities: Mapping[str, Any]) -> str:
        engine = str(capabilities.get("engine", ""))
        version = f"{engine}/{self.config.voice_id}" if self.config.voice_id else engine
        return dump(
            {
                "type": "Metadata",
                "request_id": self.request_id,
                "model_name": self.model,
                "model_version": version,
                "model_uuid": derived_uuid("model", version),
            }
        )

    def audio_chunk(self, audio: bytes, duration_ms: float) -> bytes:
        return audio

    def audio_end(self, utterance_id: str, total_ms: float, *, interrupted: bool) -> str:
        seq = self._sequence
        self._sequence += 1
        return dump({"type": "Cleared" if interrupted else "Flushed", "sequence_id": seq})

    def cleared(self) -> str:
        return dump({"type": "Cleared", "sequence_id": self._sequence})

    def configured(self) -> None:
        return None

    def pong(self) -> None:
        return None

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        if code in FATAL_CODES:
            return dump({"type": "Error", "code": code, "description": message})
        return dump({"type": "Warning", "code": code, "description": message})

    def session_ended(self, reason: str, *, characters: int, audio_ms: float) -> None:
        return None


# --- listen --------------------------------------------------------------------------------

_PLAIN = re.compile(r"[^\w'\s-]+")
#: The category (``variant``) of listen's ``Error`` for a refused client message; other
#: errors (limits, engine failures) carry voxgate's code as their category.
_VARIANTS = {
    "invalid_json": "SchemaError",
    "unknown_type": "SchemaError",
    "invalid_field": "SchemaError",
    "not_initialized": "SchemaError",
}


def check_audio(data: bytes, encoding: Encoding, max_bytes: int) -> None:
    """Raise :class:`MessageError` for an audio frame the session cannot take whole."""
    if len(data) > max_bytes:
        raise MessageError(
            "invalid_field", f"audio chunk of {len(data)} bytes is over the limit of {max_bytes}"
        )
    if encoding is Encoding.PCM16 and len(data) % 2:
        raise MessageError(
            "invalid_field", f"linear16 audio must have an even number of bytes, got {len(data)}"
        )


def plain_words(text: str) -> list[str]:
    """``text`` as Deepgram's unformatted words: lower case, punctuation dropped."""
    return _PLAIN.sub(" ", text).lower().split()


class ListenProtocol:
    """One ``listen`` session's protocol state (a :class:`~voxgate.core.speech_wire.STTWire`).

    It counts the audio received so results carry their ``start`` and ``duration`` in
    seconds of the stream. Word timings are estimated (spread evenly over the result),
    because the engines report utterances, not words.
    """

    def __init__(
        self,
        *,
        options: ListenOptions,
        model: str,
        request_id: str,
        created: str,
        max_audio_bytes: int,
    ) -> None:
        self.options = options
        self.model = model
        self.request_id = request_id
        self.created = created
        self.max_audio_bytes = max_audio_bytes
        self.config = options.config
        self._bytes_per_second = (2 if self.config.encoding is Encoding.PCM16 else 1) * (
            self.config.sample_rate
        )
        self.received_seconds = 0.0
        self._sha = hashlib.sha256()
        self._finalizes = 0
        self._model_id = ""
        self._configured: str | None = None

    def opening(self) -> Start:
        """The ``Start`` the query string stands for; the session handles it first."""
        return Start(self.config)

    def receive(self, data: str | bytes) -> STTEvent:
        """One client frame. Audio is counted here (the only state ``receive`` changes,
        and nothing else reads it while a frame is parsed off the event loop)."""
        if isinstance(data, bytes):
            check_audio(data, self.config.encoding, self.max_audio_bytes)
            self.received_seconds += len(data) / self._bytes_per_second
            self._sha.update(data)
            return Audio(data)
        kind, msg = parse_message(data)
        if kind == "KeepAlive":
            return Ping()
        if kind == "Finalize":
            self._finalizes += 1
            return Finalize()
        if kind == "CloseStream":
            self._finalizes += 1
            return Close()
        if kind == "Configure":
            return self._configure(msg)
        raise MessageError(
            "unknown_type",
            f"unknown message type {kind[:64]!r} (KeepAlive, Finalize, CloseStream, Configure)",
        )

    def _configure(self, msg: Mapping[str, Any]) -> Ping:
        if msg.get("keyterms") is not None:
            raise MessageError(
                "CONFIGURE_KEYTERMS_NOT_SUPPORTED", "this model does not take keyterms"
            )
        features = msg.get("features")
        if features is not None and not (
            isinstance(features, dict) and all(isinstance(v, bool) for v in features.values())
        ):
            raise MessageError(
                "invalid_field", "field 'features' must be an object of true/false values"
            )
        # formatting features are accepted and, like their query parameters, ignored
        self._configured = dump({"type": "ConfigureSuccess", "request_id": self.request_id})
        return Ping()

    def start(self, context_id: str, config: STTConfig) -> None:
        self.config = config

    def ready(self, model_id: str) -> None:
        self._model_id = model_id  # listen has no greeting
        return None

    def pong(self) -> str | None:
        """KeepAlive has no answer; a Configure is answered by ``ConfigureSuccess``."""
        reply, self._configured = self._configured, None
        return reply

    def speech_started(self, timestamp: float) -> str | None:
        if not self.options.vad_events:
            return None
        return dump({"type": "SpeechStarted", "channel": [0, 1], "timestamp": timestamp})

    def transcript(
        self, text: str, *, is_final: bool, confidence: float, timestamp: float
    ) -> str | tuple[str, ...] | None:
        if not is_final and not self.config.interim_results:
            return None
        from_finalize = is_final and self._finalizes > 0
        if from_finalize:
            self._finalizes -= 1
        start = round(timestamp, 3)
        duration = round(max(0.0, self.received_seconds - timestamp), 3)
        speech_final = is_final and not from_finalize
        results = self._results(
            text,
            confidence=confidence if is_final else 0.0,
            start=start,
            duration=duration,
            is_final=is_final,
            speech_final=speech_final,
            from_finalize=from_finalize,
        )
        if speech_final and self.options.utterance_end_ms is not None:
            end = dump(
                {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": start + duration}
            )
            return (results, end)
        return results

    def final_transcript(self, text: str, audio_seconds: float, timestamp: float) -> str | None:
        """A finalize whose audio held no more words still gets its ``from_finalize``
        result, with an empty transcript."""
        if self._finalizes <= 0:
            return None
        self._finalizes -= 1
        at = round(self.received_seconds, 3)
        return self._results(
            "",
            confidence=0.0,
            start=at,
            duration=0.0,
            is_final=True,
            speech_final=False,
            from_finalize=True,
        )

    def _results(
        self,
        text: str,
        *,
        confidence: float,
        start: float,
        duration: float,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> str:
        plain = plain_words(text)
        shown = text.split() if self.options.punctuate else plain
        step = duration / len(plain) if plain else 0.0
        words: list[dict[str, Any]] = []
        for i, word in enumerate(plain):
            item: dict[str, Any] = {
                "word": word,
                "start": round(start + i * step, 3),
                "end": round(start + (i + 1) * step, 3),
                "confidence": confidence,
            }
            if self.options.punctuate and len(shown) == len(plain):
                item["punctuated_word"] = shown[i]
            words.append(item)
        return dump(
            {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": duration,
                "start": start,
                "is_final": is_final,
                "speech_final": speech_final,
                "from_finalize": from_finalize,
                "channel": {
                    "alternatives": [
                        {
                            "transcript": " ".join(shown),
                            "confidence": confidence,
                            "words": words,
                        }
                    ]
                },
                "metadata": {
                    "request_id": self.request_id,
                    "model_info": {
                        "name": self.model,
                        "version": self._model_id,
                        "arch": self._model_id,
                    },
                    "model_uuid": derived_uuid("model", self._model_id),
                },
            }
        )

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        if code.startswith("CONFIGURE_"):
            return dump(
                {
                    "type": "ConfigureFailure",
                    "request_id": self.request_id,
                    "code": code,
                    "description": message,
                }
            )
        variant = _VARIANTS.get(code, code)
        return dump({"type": "Error", "variant": variant, "code": code, "description": message})

    def session_ended(self, reason: str, *, audio_seconds: float) -> str:
        """``Metadata``: the summary Deepgram sends before it closes."""
        return dump(
            {
                "type": "Metadata",
                "transaction_key": "deprecated",
                "request_id": self.request_id,
                "sha256": self._sha.hexdigest(),
                "created": self.created,
                "duration": round(audio_seconds, 3),
                "channels": 1,
            }
        )
