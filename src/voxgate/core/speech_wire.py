"""What a speech session needs of the wire protocol it speaks.

:class:`~voxgate.core.speech.TTSSession` and :class:`~voxgate.core.speech.STTSession`
work in canonical events (``Init``, ``InputText``, ``Flush``, ``Start``, ``Audio`` …,
from :mod:`voxgate.protocols.speech.unified`) and ask their protocol to parse client
frames into them and to render what happens into frames. Any translator with these
methods can drive the same sessions, limits and usage records: the unified protocol
(``protocols/speech/unified.py``) and Deepgram's live ``speak``/``listen`` protocols
(``protocols/speech/deepgram_live.py``).

A render method answers the frames to send: one (``str`` for JSON, ``bytes`` for
binary audio), several in order (a tuple), or none (``None``) where the protocol has no
such message. :meth:`error` always answers one frame, because the transport sends it
ahead of a close.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from voxgate.protocols.speech.unified import STTConfig, STTEvent, TTSConfig, TTSEvent

#: What a render method answers: a frame, frames in order, or nothing.
Frames = str | bytes | tuple[str | bytes, ...] | None


def frames_of(rendered: Frames) -> tuple[str | bytes, ...]:
    """The frames ``rendered`` stands for, in order."""
    if rendered is None:
        return ()
    if isinstance(rendered, tuple):
        return rendered
    return (rendered,)


class TTSWire(Protocol):
    """A TTS protocol's state and rendering, as :class:`TTSSession` drives it."""

    max_text_chars: int

    @property
    def context_id(self) -> str | None: ...

    def receive(self, data: str | bytes) -> TTSEvent | tuple[TTSEvent, ...]:
        """One client frame as a canonical event, or several in order (a frame of SLNG's
        native form also starts the session); raises ``MessageError`` naming the problem."""

    def start(self, context_id: str, config: TTSConfig) -> None:
        """The session began with ``config`` (the engine agreed to it)."""

    def reconfigure(self, config: TTSConfig) -> None: ...

    def ready(self, session: str, capabilities: Mapping[str, Any]) -> Frames: ...

    def audio_chunk(self, audio: bytes, duration_ms: float) -> Frames: ...

    def audio_end(self, utterance_id: str, total_ms: float, *, interrupted: bool) -> Frames:
        """A flushed utterance was spoken to its end, or ``interrupted`` by a stop."""

    def cleared(self) -> Frames: ...

    def configured(self) -> Frames: ...

    def pong(self) -> Frames: ...

    def error(self, code: str, message: str, *, retryable: bool = False) -> str: ...

    def session_ended(self, reason: str, *, characters: int, audio_ms: float) -> str | None:
        """The protocol's goodbye before the server closes (``None`` if it has none)."""


class STTWire(Protocol):
    """An STT protocol's state and rendering, as :class:`STTSession` drives it."""

    def receive(self, data: str | bytes) -> STTEvent: ...

    def start(self, context_id: str, config: STTConfig) -> None: ...

    def ready(self, model_id: str) -> Frames: ...

    def speech_started(self, timestamp: float) -> Frames: ...

    def transcript(
        self, text: str, *, is_final: bool, confidence: float, timestamp: float
    ) -> Frames: ...

    def final_transcript(self, text: str, audio_seconds: float, timestamp: float) -> Frames:
        """The answer to a finalize: every final since the previous one (``text``)."""

    def pong(self) -> Frames: ...

    def error(self, code: str, message: str, *, retryable: bool = False) -> str: ...

    def session_ended(self, reason: str, *, audio_seconds: float) -> str | None: ...
