"""Deepgram's live WebSocket protocols, served on voxgate's engines (sans-I/O).

Clients of Deepgram (its SDKs, and Cloudflare's Workers AI ``@cf/deepgram/…`` models)
speak these; :class:`SpeakProtocol` (here) and ``ListenProtocol``
(:mod:`voxgate.protocols.speech.deepgram_listen`) translate them to and from the
canonical events the speech sessions (:mod:`voxgate.core.speech`) work in, so the
sessions, limits and usage records are those of the unified protocol.

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
so ``SpeakProtocol.opening`` / ``ListenProtocol.opening`` give the ``Init`` /
``Start`` the session handles before the first frame (the query string itself, model
names and handshake credentials: :mod:`voxgate.protocols.speech.deepgram_query`). Errors
raise :class:`~voxgate.protocols.speech.unified.MessageError` with voxgate's codes,
rendered by ``error`` as Deepgram's messages.

Sources: the message types of ``deepgram-sdk`` 7.17 (``deepgram/listen/v1/types``,
``deepgram/speak/v1/types``); developers.deepgram.com (Finalize, CloseStream, TTS Flush,
Clear and Close); Cloudflare AI Gateway's realtime WebSockets page (Workers AI models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from voxgate.protocols.speech.deepgram_query import derived_uuid
from voxgate.protocols.speech.unified import (
    Close,
    Flush,
    Init,
    InputText,
    MessageError,
    Ping,
    Stop,
    TTSConfig,
    TTSEvent,
    parse_object,
)

# --- messages ------------------------------------------------------------------------------


def parse_message(data: str) -> tuple[str, dict[str, Any]]:
    """A client's JSON message: its ``type`` and the object. Raises :class:`MessageError`."""
    msg = parse_object(data)
    return msg["type"], msg


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
