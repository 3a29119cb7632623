"""Payload capture with audio redacted and secrets scrubbed (sans-I/O).

When a gateway turns ``capture_payloads`` on, each relayed frame is kept for the usage
log in a redacted form: binary frames become their length; in JSON text frames every
string that carries audio (known audio fields, or any long base64 string) becomes
``"<redacted N bytes>"``. Non-JSON text is kept as it is. Then every kept payload goes
through the :class:`~voxgate.scrub.SecretScrubber` (configured secrets, the session's
own keys, auth-scheme values) and is cut to the capture size limit.

Capturing never fails a session and its work is bounded for any frame:

- JSON is walked without recursion; containers nested deeper than :data:`MAX_DEPTH`
  become ``"<cut: nested deeper than 32 levels>"``.
- JSON text over :data:`MAX_PARSE_BYTES` is not parsed; it is kept as the placeholder
  ``"<not captured: …>"`` naming why.
- Only a prefix of a text, the size limit plus the scrubber's margin, is scrubbed, so
  a stored payload is at most ``max_bytes`` plus a marker of under 40 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.scrub import SecretScrubber

#: Field names whose string values are audio in the providers' documented messages.
AUDIO_FIELDS = frozenset(
    {"audio", "audio_base_64", "audioChunk", "audio_chunk", "chunk", "data", "delta"}
)
#: Containers nested deeper than this are replaced by a marker (orjson writes 254 at most).
MAX_DEPTH = 32
#: JSON text larger than this is not parsed for redaction (it would hold the event loop).
MAX_PARSE_BYTES = 1024 * 1024
TOO_DEEP = f"<cut: nested deeper than {MAX_DEPTH} levels>"
_BASE64 = re.compile(r"[A-Za-z0-9+/=_-]{128,}")
_SPACE = frozenset(" \t\r\n")


@dataclass(frozen=True)
class CapturedFrame:
    seq: int
    direction: str  # "client" (client → upstream) or "upstream"
    at: float  # seconds since session start
    kind: str  # "text" | "binary"
    size: int
    payload: str  # redacted JSON or text; for binary, ""


def redact_text(data: str, max_bytes: int, scrub: SecretScrubber | None = None) -> str:
    """The stored form of one text frame: redacted, scrubbed, cut. Never raises."""
    size = utf8_len(data)
    if size > MAX_PARSE_BYTES and _looks_like_json(data):
        return (
            f"<not captured: {size} bytes of JSON, over the {MAX_PARSE_BYTES}-byte "
            "limit for redaction>"
        )
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _keep(data, max_bytes, scrub)
    return _keep(orjson.dumps(_redact(value)).decode(), max_bytes, scrub)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _looks_like_json(data: str) -> bool:
    for ch in data[:64]:
        if ch not in _SPACE:
            return ch in "{["
    return False


def _mark(value: str) -> str:
    return f"<redacted {len(value)} bytes>"


def _redact(root: Any) -> Any:
    """A copy of a parsed JSON value with audio strings replaced; no recursion."""
    if isinstance(root, str):
        return _mark(root) if _BASE64.fullmatch(root) else root
    holder: list[Any] = [None]
    # (node, the container to put its copy in, the key or index there, depth)
    stack: list[tuple[Any, Any, Any, int]] = [(root, holder, 0, 0)]
    while stack:
        node, parent, slot, depth = stack.pop()
        if isinstance(node, dict):
            if depth >= MAX_DEPTH:
                parent[slot] = TOO_DEEP
                continue
            kind = node.get("type")
            audio_event = isinstance(kind, str) and "audio" in kind
            obj: dict[str, Any] = {}
            parent[slot] = obj
            for k, v in node.items():
                if isinstance(v, str):
                    obj[k] = _mark(v) if _is_audio(k, v, audio_event) else v
                elif isinstance(v, dict | list):
                    obj[k] = None
                    stack.append((v, obj, k, depth + 1))
                else:
                    obj[k] = v
        elif isinstance(node, list):
            if depth >= MAX_DEPTH:
                parent[slot] = TOO_DEEP
                continue
            arr: list[Any] = [None] * len(node)
            parent[slot] = arr
            for i, v in enumerate(node):
                if isinstance(v, str):
                    arr[i] = _mark(v) if _BASE64.fullmatch(v) else v
                elif isinstance(v, dict | list):
                    stack.append((v, arr, i, depth + 1))
                else:
                    arr[i] = v
        else:
            parent[slot] = node
    return holder[0]


def _is_audio(key: str, value: str, audio_event: bool) -> bool:
    if key == "delta":  # text deltas stay readable; audio deltas go
        return audio_event
    if key in AUDIO_FIELDS:
        return len(value) > 16 or audio_event
    return _BASE64.fullmatch(value) is not None


def _keep(text: str, max_bytes: int, scrub: SecretScrubber | None) -> str:
    """``text`` scrubbed and cut to ``max_bytes`` of UTF-8 (plus a marker when cut).

    Only the prefix that can reach the kept part is scrubbed: a secret or pattern that
    starts inside ``max_bytes`` ends within the scrubber's margin after it.
    """
    reach = max_bytes + (scrub.margin if scrub is not None else 0)
    whole = len(text) <= reach
    head = text if whole else text[:reach]  # characters: at least ``reach`` bytes of UTF-8
    if scrub is not None:
        head = scrub(head)
    raw = head.encode("utf-8", "replace")
    if whole and len(raw) <= max_bytes:
        return raw.decode("utf-8", "ignore")
    return raw[:max_bytes].decode("utf-8", "ignore") + f"…<cut, {utf8_len(text)} bytes>"


class Capture:
    """Collects redacted frames for one session, up to a frame and size limit."""

    __slots__ = ("_seq", "frames", "max_bytes", "max_frames", "scrub")

    def __init__(
        self, *, max_frames: int, max_bytes: int, scrub: SecretScrubber | None = None
    ) -> None:
        self.frames: list[CapturedFrame] = []
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.scrub = scrub
        self._seq = 0

    def add(self, direction: str, at: float, data: str | bytes) -> None:
        seq = self._seq
        self._seq += 1
        if len(self.frames) >= self.max_frames:
            return
        if isinstance(data, str):
            payload = redact_text(data, self.max_bytes, self.scrub)
            frame = CapturedFrame(seq, direction, at, "text", utf8_len(data), payload)
        else:
            frame = CapturedFrame(seq, direction, at, "binary", len(data), "")
        self.frames.append(frame)

    @property
    def dropped(self) -> int:
        return self._seq - len(self.frames)
