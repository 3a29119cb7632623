"""Payload capture with audio redacted (sans-I/O).

When a gateway turns ``capture_payloads`` on, each relayed frame is kept for the usage
log in a redacted form: binary frames become their length; in JSON text frames every
string that carries audio (known audio fields, or any long base64 string) becomes
``"<redacted N bytes>"``. Non-JSON text is kept, cut to the capture size limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

#: Field names whose string values are audio in the providers' documented messages.
AUDIO_FIELDS = frozenset(
    {"audio", "audio_base_64", "audioChunk", "audio_chunk", "chunk", "data", "delta"}
)
_BASE64 = re.compile(r"[A-Za-z0-9+/=_-]{128,}")


@dataclass(frozen=True)
class CapturedFrame:
    seq: int
    direction: str  # "client" (client → upstream) or "upstream"
    at: float  # seconds since session start
    kind: str  # "text" | "binary"
    size: int
    payload: str  # redacted JSON or text; for binary, ""


def redact_text(data: str, max_bytes: int) -> str:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _cut(data, max_bytes)
    return _cut(orjson.dumps(_redact(value, None)).decode(), max_bytes)


def _redact(value: Any, key: str | None) -> Any:
    if isinstance(value, dict):
        audio_event = "audio" in str(value.get("type", ""))
        out = {}
        for k, v in value.items():
            if isinstance(v, str) and _is_audio(k, v, audio_event):
                out[k] = f"<redacted {len(v)} bytes>"
            else:
                out[k] = _redact(v, k)
        return out
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and _BASE64.fullmatch(value):
        return f"<redacted {len(value)} bytes>"
    return value


def _is_audio(key: str, value: str, audio_event: bool) -> bool:
    if key == "delta":  # text deltas stay readable; audio deltas go
        return audio_event
    if key in AUDIO_FIELDS:
        return len(value) > 16 or audio_event
    return _BASE64.fullmatch(value) is not None


def _cut(text: str, max_bytes: int) -> str:
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode(errors="ignore") + f"…<cut, {len(raw)} bytes>"


class Capture:
    """Collects redacted frames for one session, up to a frame and size limit."""

    __slots__ = ("_seq", "frames", "max_bytes", "max_frames")

    def __init__(self, *, max_frames: int, max_bytes: int) -> None:
        self.frames: list[CapturedFrame] = []
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._seq = 0

    def add(self, direction: str, at: float, data: str | bytes) -> None:
        seq = self._seq
        self._seq += 1
        if len(self.frames) >= self.max_frames:
            return
        if isinstance(data, str):
            frame = CapturedFrame(
                seq, direction, at, "text", len(data.encode()), redact_text(data, self.max_bytes)
            )
        else:
            frame = CapturedFrame(seq, direction, at, "binary", len(data), "")
        self.frames.append(frame)

    @property
    def dropped(self) -> int:
        return self._seq - len(self.frames)
