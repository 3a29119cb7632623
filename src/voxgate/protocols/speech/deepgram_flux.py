"""Deepgram Flux's turn-based ``listen`` protocol (``/v2/listen``), sans-I/O.

Flux (``flux-general-en``; Workers AI's ``@cf/deepgram/flux``) reports turns instead of
results: ``Connected`` (``request_id``, ``sequence_id``) when the socket opens, then
``TurnInfo`` messages whose ``event`` is ``StartOfTurn`` when speech starts, ``Update``
with the turn's transcript so far, and ``EndOfTurn`` with its final transcript; each
carries ``turn_index``, ``audio_window_start``/``_end`` (seconds of the stream),
``transcript``, ``words`` and ``end_of_turn_confidence``. The client sends binary audio
and ``CloseStream`` (also ``ForceEndTurn``, ``KeepAlive``). Every server message
carries the next ``sequence_id``.

On voxgate's engines a turn is an utterance of the engine's endpointer, so
``EagerEndOfTurn``/``TurnResumed`` never come, and ``Configure`` (turn thresholds,
keyterms) is answered by ``ConfigureFailure``: there is nothing to tune.

Source: the message types of ``deepgram-sdk`` 7.17 (``deepgram/listen/v2/types``).
"""

from __future__ import annotations

from typing import Any

from voxgate.audio import Encoding
from voxgate.protocols.speech.deepgram_listen import check_audio
from voxgate.protocols.speech.deepgram_live import FATAL_CODES, dump, parse_message
from voxgate.protocols.speech.deepgram_query import ListenOptions
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


class FluxProtocol:
    """One Flux session's protocol state (a :class:`~voxgate.core.speech_wire.STTWire`)."""

    def __init__(self, *, options: ListenOptions, request_id: str, max_audio_bytes: int) -> None:
        self.request_id = request_id
        self.max_audio_bytes = max_audio_bytes
        #: Flux always reports the turn so far.
        self.config = STTConfig(
            sample_rate=options.config.sample_rate,
            encoding=options.config.encoding,
            language=options.config.language,
            interim_results=True,
            binary=True,
        )
        self.received_seconds = 0.0
        self._bytes_per_second = options.config.sample_rate * (
            2 if options.config.encoding is Encoding.PCM16 else 1
        )
        self._sequence = 0
        self._turn = 0
        self._turn_start: float | None = None

    def opening(self) -> Start:
        return Start(self.config)

    def receive(self, data: str | bytes) -> STTEvent:
        if isinstance(data, bytes):
            check_audio(data, self.config.encoding, self.max_audio_bytes)
            self.received_seconds += len(data) / self._bytes_per_second
            return Audio(data)
        kind, _ = parse_message(data)
        if kind == "CloseStream":
            return Close()
        if kind == "ForceEndTurn":
            return Finalize()
        if kind == "KeepAlive":
            return Ping()
        if kind == "Configure":
            raise MessageError(
                "CONFIGURE_NOT_SUPPORTED",
                "this model takes no end-of-turn thresholds or keyterms to configure",
            )
        raise MessageError(
            "unknown_type",
            f"unknown message type {kind[:64]!r} (CloseStream, ForceEndTurn, Configure)",
        )

    def start(self, context_id: str, config: STTConfig) -> None:
        self.config = config

    def _next(self) -> int:
        seq = self._sequence
        self._sequence += 1
        return seq

    def ready(self, model_id: str) -> str:
        return dump(
            {"type": "Connected", "request_id": self.request_id, "sequence_id": self._next()}
        )

    def _turn_info(self, event: str, text: str, confidence: float, eot: float) -> str:
        start = self._turn_start if self._turn_start is not None else 0.0
        return dump(
            {
                "type": "TurnInfo",
                "request_id": self.request_id,
                "sequence_id": self._next(),
                "event": event,
                "turn_index": self._turn,
                "audio_window_start": round(start, 3),
                "audio_window_end": round(max(start, self.received_seconds), 3),
                "transcript": text,
                "words": [{"word": w, "confidence": confidence} for w in text.split()],
                "end_of_turn_confidence": eot,
            }
        )

    def speech_started(self, timestamp: float) -> str | None:
        if self._turn_start is not None:
            return None
        self._turn_start = float(timestamp)
        return self._turn_info("StartOfTurn", "", 0.0, 0.0)

    def transcript(
        self, text: str, *, is_final: bool, confidence: float, timestamp: float
    ) -> tuple[str, ...]:
        out: list[str] = []
        if self._turn_start is None:
            started = self.speech_started(timestamp)
            assert started is not None
            out.append(started)
        if not is_final:
            out.append(self._turn_info("Update", text, 0.0, 0.0))
            return tuple(out)
        out.append(self._turn_info("EndOfTurn", text, confidence, 1.0))
        self._turn += 1
        self._turn_start = None
        return tuple(out)

    def final_transcript(self, text: str, audio_seconds: float, timestamp: float) -> None:
        """A forced end of turn was already reported by its ``EndOfTurn``."""
        return None

    def pong(self) -> None:
        return None

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        body: dict[str, Any] = {"sequence_id": self._next(), "code": code, "description": message}
        if code.startswith("CONFIGURE_"):
            return dump({"type": "ConfigureFailure", "request_id": self.request_id, **body})
        if code in FATAL_CODES:
            return dump({"type": "Error", **body})
        return dump({"type": "Warning", "request_id": self.request_id, **body})

    def session_ended(self, reason: str, *, audio_seconds: float) -> None:
        return None
