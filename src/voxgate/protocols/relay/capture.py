"""Payload capture with audio redacted and secrets scrubbed (sans-I/O).

When a gateway turns ``capture_payloads`` on, each relayed frame is kept for the usage
log in a redacted form: binary frames become their length; in JSON text frames every
string that carries audio (known audio fields, or any long base64 string) becomes
``"<redacted N bytes>"``. Non-JSON text is kept as it is. Then every kept payload goes
through the :class:`~voxgate.scrub.SecretScrubber` (configured secrets, the session's
own keys, auth-scheme values) and is cut to the capture size limit.

Capturing never fails a session and its work is bounded for any frame:

- JSON is walked without recursion, in document order, and no further than the values
  that can reach the kept size; containers nested deeper than the bound clients' JSON
  has (:data:`~voxgate.protocols.nesting.MAX_DEPTH`, 32) become
  ``"<cut: nested deeper than 32 levels>"`` (a relayed frame is not refused, only cut).
- Text over :data:`MAX_PARSE_BYTES` is not parsed: JSON is kept as the placeholder
  ``"<not captured: …>"`` naming why, other text is kept cut.
- Only a prefix of a text, the size limit plus the scrubber's margin, is scrubbed and
  kept: a stored payload is at most ``max_bytes`` plus a marker (or the placeholder)
  of under 100 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.protocols.nesting import MAX_DEPTH
from voxgate.scrub import SecretScrubber

#: Field names whose string values are audio in the providers' documented messages.
AUDIO_FIELDS = frozenset(
    {"audio", "audio_base_64", "audioChunk", "audio_chunk", "chunk", "data", "delta"}
)
#: JSON text larger than this is not parsed for redaction: parsing holds the event loop
#: (~5 ms for 256 KiB of the worst shapes; realtime events are a few KiB).
MAX_PARSE_BYTES = 256 * 1024
TOO_DEEP = f"<cut: nested deeper than {MAX_DEPTH} levels>"
TOO_MANY = "<cut: more values than the capture keeps>"
_BASE64_MIN = 128
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


def redact_text(
    data: str, max_bytes: int, scrub: SecretScrubber | None = None, *, size: int | None = None
) -> str:
    """The stored form of one text frame: redacted, scrubbed, cut. Never raises.

    ``size`` is the frame's UTF-8 length when the caller has it already.
    """
    if size is None:
        size = utf8_len(data)
    if size > MAX_PARSE_BYTES:
        if _looks_like_json(data):
            return (
                f"<not captured: {size} bytes of JSON, over the {MAX_PARSE_BYTES}-byte "
                "limit for redaction>"
            )
        return _keep(data, max_bytes, scrub)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _keep(data, max_bytes, scrub)
    return _keep(orjson.dumps(_redact(value, max_bytes)).decode(), max_bytes, scrub)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _looks_like_json(data: str) -> bool:
    for ch in data[:64]:
        if ch not in _SPACE:
            return ch in "{["
    return False


def _mark(value: str) -> str:
    return f"<redacted {len(value)} bytes>"


class _Open:
    """A container being copied: its source, its copy, and how far the copy has got."""

    __slots__ = ("audio_event", "depth", "items", "out", "src")

    def __init__(self, src: dict[str, Any] | list[Any], out: Any, depth: int) -> None:
        self.src = src
        self.out = out
        self.depth = depth
        if isinstance(src, dict):
            kind = src.get("type")
            self.audio_event = isinstance(kind, str) and "audio" in kind
            self.items: Iterator[tuple[Any, Any]] = iter(src.items())
        else:
            self.audio_event = False
            self.items = enumerate(src)


def _redact(root: Any, budget: int) -> Any:
    """A copy of a parsed JSON value with audio strings replaced; no recursion.

    Values are copied in document order until the copy would be longer than ``budget``
    bytes of JSON (counted from below: what each value writes at least); each container
    left unfinished then ends with one :data:`TOO_MANY`. A budget of the kept size
    therefore loses nothing that would have been kept.
    """
    if not isinstance(root, dict | list):
        return _mark(root) if isinstance(root, str) and _BASE64.fullmatch(root) else root
    top = _Open(root, {} if isinstance(root, dict) else [], 0)
    stack = [top]
    while stack and budget > 0:
        frame = stack[-1]
        out, is_dict = frame.out, isinstance(frame.src, dict)
        for key, v in frame.items:
            # a separator, and for an object member its quoted key and colon
            budget -= len(key) + 4 if is_dict else 1
            t = type(v)  # orjson makes exact types: no subclasses to miss
            if t is str:
                if is_dict:
                    v = _mark(v) if _is_audio(key, v, frame.audio_event) else v
                elif len(v) >= _BASE64_MIN and _BASE64.fullmatch(v):
                    v = _mark(v)
                budget -= len(v) + 2
            elif t is dict or t is list:
                budget -= 1  # two brackets, less the separator its last member has not
                if frame.depth + 1 >= MAX_DEPTH:
                    v = TOO_DEEP
                else:
                    child = _Open(v, {} if t is dict else [], frame.depth + 1)
                    _put(out, is_dict, key, child.out)
                    stack.append(child)
                    break  # copy the child first: document order
            else:
                budget -= 1
            _put(out, is_dict, key, v)
            if budget <= 0:
                break
        else:
            stack.pop()
    for frame in stack:  # out of budget: say where each unfinished copy stops
        if len(frame.out) < len(frame.src):
            _put(frame.out, isinstance(frame.out, dict), "<cut>", TOO_MANY)
    return top.out


def _put(out: Any, is_dict: bool, key: Any, value: Any) -> None:
    if is_dict:
        out[key] = value
    else:
        out.append(value)


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
            size = utf8_len(data)
            payload = redact_text(data, self.max_bytes, self.scrub, size=size)
            frame = CapturedFrame(seq, direction, at, "text", size, payload)
        else:
            frame = CapturedFrame(seq, direction, at, "binary", len(data), "")
        self.frames.append(frame)

    @property
    def dropped(self) -> int:
        return self._seq - len(self.frames)
