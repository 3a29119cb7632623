"""Deepgram's live ``listen`` protocol (speech to text), served on voxgate's engines
(sans-I/O); the shared message helpers and ``speak`` are in
:mod:`voxgate.protocols.speech.deepgram_live`.

The client sends binary audio, ``KeepAlive``, ``Finalize``, ``CloseStream`` and
``Configure``; the server sends ``Results``, ``SpeechStarted`` (``vad_events=true``),
``UtteranceEnd`` (``utterance_end_ms``), ``Metadata`` before it closes,
``ConfigureSuccess``/``ConfigureFailure``, and ``Error`` for a message it refuses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from voxgate.audio import Encoding
from voxgate.protocols.speech.deepgram_live import dump, parse_message
from voxgate.protocols.speech.deepgram_query import ListenOptions, derived_uuid
from voxgate.protocols.speech.unified import (
    Audio,
    Close,
    Finalize,
    MessageError,
    Ping,
    Start,
    STTConfig,
    STTEvent,
)

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
