"""The usage record every session leaves behind."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from voxgate.protocols.relay.capture import CapturedFrame
from voxgate.protocols.relay.usage import MAX_COUNT


@dataclass(frozen=True)
class UsageRecord:
    session_id: str
    account: str
    gateway: str
    provider: str
    model: str | None
    #: The name of the token used (never the token itself); None on an open gateway.
    token_name: str | None
    client_address: str | None
    started_at: float  # Unix seconds
    ended_at: float
    duration_seconds: float
    #: Frames and bytes the client sent (relayed upstream) ...
    client_frames: int
    client_bytes: int
    #: ... and the upstream sent (relayed to the client).
    upstream_frames: int
    upstream_bytes: int
    client_close_code: int | None
    upstream_close_code: int | None
    error: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    #: ``relay``, ``tts`` or ``stt``.
    kind: str = "relay"
    #: Characters of text synthesized (TTS).
    characters: int = 0
    #: Seconds of audio produced (TTS) or received (STT).
    audio_seconds: float = 0.0
    #: How the client reached the session: ``websocket``, ``webrtc`` (an OpenAI Realtime
    #: call) or ``sfu`` (an agent in a media-server call).
    transport: str = "websocket"
    #: The node the session ran on (``server.node``): several nodes share one store.
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def clamped(self) -> UsageRecord:
        """This record with integers within ±:data:`MAX_COUNT` (exact for JSON readers,
        within SQLite's 64 bits: counters saturate instead of failing the write) and
        floats finite."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, int) and abs(value) > MAX_COUNT:
                changes[f.name] = MAX_COUNT if value > 0 else -MAX_COUNT
            elif isinstance(value, float) and not math.isfinite(value):
                changes[f.name] = 0.0
        return replace(self, **changes) if changes else self


@dataclass(frozen=True)
class SessionCapture:
    session_id: str
    frames: tuple[CapturedFrame, ...]
    dropped: int
