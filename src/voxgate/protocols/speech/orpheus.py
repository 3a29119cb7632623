"""The native form of SLNG's hosted TTS models (Orpheus and the others), sans-I/O.

What SLNG documents (docs.slng.ai, "WebSockets" and "WebSocket Provider Differences"):
a client of ``wss://…/v1/tts/orpheus-websocket-stream`` sends its text as plain text
frames and ``{"type": "control", "action": "flush"}`` to have it spoken; the legacy query
parameters are ``voice`` (or ``voice_id``), ``sample_rate_hz``, ``codec``, ``buffer_size``
(words before the model speaks on its own, default 10) and ``temperature``; unified
messages may be mixed in. The model behind it (Baseten's Orpheus WebSocket server, which
SLNG's legacy parameters follow) also takes a first JSON object of settings
(``{"voice", "max_tokens", "buffer_size"}``), the sentinel ``__END__`` (speak the rest,
then close) and answers with raw audio in binary frames.

So :class:`OrpheusProtocol` reads:

- a text frame that does not begin with ``{``: text to speak; consecutive frames are
  joined with a space where neither side has one (clients send word by word);
- ``__END__``: speak what is buffered, then the server closes the socket (1000);
- ``{"type": "control", "action": "flush" | "clear" | "stop"}``;
- a JSON object without ``type``: settings (``voice``/``voice_id``, ``buffer_size``,
  ``temperature``, ``max_tokens``, ``language``, ``speed``);
- a unified message (``input_text``, ``flush``, ``clear``, ``stop``, ``configure``,
  ``ping``), as SLNG allows mixing them.

It answers with binary PCM16 frames at ``sample_rate_hz`` (default 24000) and nothing
else, except ``{"type": "error", "code", "message", …}`` for what it refuses (the unified
codes) and ``pong`` for a ``ping``. The first frame also starts the session: there is no
``init``. Like :mod:`.unified`, it holds protocol state only: no sockets, no engines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from voxgate.audio import Encoding
from voxgate.protocols.nesting import MAX_DEPTH, nesting_error
from voxgate.protocols.speech.unified import (
    MAX_RATE,
    MIN_RATE,
    Clear,
    Configure,
    EndOfInput,
    Flush,
    Init,
    InputText,
    MessageError,
    Stop,
    TTSConfig,
    TTSEvent,
    TTSProtocol,
    render_error,
)

END_SENTINEL = "__END__"
DEFAULT_BUFFER_WORDS = 10
MAX_BUFFER_WORDS = 1000
MAX_VOICE = 256
_CONTROL: dict[str, type[Flush | Clear | Stop]] = {
    "flush": Flush,
    "clear": Clear,
    "stop": Stop,
    "cancel": Stop,
}
#: Settings of the model itself, passed to the engine (which may ignore them).
_MODEL_SETTINGS = (
    ("temperature", 0.0, 1.0),
    ("top_p", 0.0, 1.0),
    ("repetition_penalty", 0.0, 10.0),
    ("max_tokens", 1, 100_000),
)
_SETTINGS = (
    "voice",
    "voice_id",
    "buffer_size",
    "temperature",
    "max_tokens",
    "language",
    "speed",
    "top_p",
    "repetition_penalty",
)


def looks_native(data: str | bytes) -> bool:
    """Whether a first frame speaks this form rather than the unified protocol: plain
    text, a ``control`` message, or a settings object without ``type``. A frame that
    begins like JSON but is not is the unified protocol's to refuse (``invalid_json``)."""
    if not isinstance(data, str):
        return False
    try:
        msg = _json_object(data)
    except MessageError:
        return False
    return msg is None or "type" not in msg or msg.get("type") == "control"


def _json_object(data: str) -> dict[str, Any] | None:
    """``data`` parsed when it is a JSON object; ``None`` for text to speak (text such as
    ``42`` too). Text that begins with ``{`` must be a JSON object: raises ``MessageError``."""
    if not data.lstrip().startswith("{"):
        return None
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageError("invalid_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(msg, dict):  # pragma: no cover - "{…" parses to an object or fails
        raise MessageError("invalid_json", "message must be a JSON object")
    return msg


def _field(message: str) -> MessageError:
    return MessageError("invalid_field", message)


class OrpheusProtocol:
    """One session of the native form. Call :meth:`receive` for every client frame; it
    returns the events in order (the first frame also yields the ``Init``).

    ``receive`` keeps two counters of its own (words since the model last spoke, and
    whether the last text ended inside a word); nothing else reads them, and frames are
    received one at a time, so it may run off the event loop like the unified one."""

    def __init__(self, *, max_text_chars: int, query: Mapping[str, str]) -> None:
        self.max_text_chars = max_text_chars
        self._query = dict(query)
        self.config = TTSConfig(binary=True)
        self.context_id: str | None = None
        self.initialized = False
        self._buffer_words = DEFAULT_BUFFER_WORDS
        self._words = 0
        self._open_word = False
        #: Parses the unified messages mixed in. Marked initialized at once: this form
        #: has no ``init``, the session starts with its first frame.
        self._unified = TTSProtocol(max_text_chars=max_text_chars)
        self._unified.initialized = True

    # -- receiving -----------------------------------------------------------------------

    def receive(self, data: str | bytes) -> tuple[TTSEvent, ...]:
        if isinstance(data, bytes):
            raise MessageError("invalid_json", "send text frames: this form takes no binary")
        msg = _json_object(data)
        if msg is not None and nesting_error(data, msg) is not None:
            raise _field(f"the message nests more than {MAX_DEPTH} levels deep")
        base = self._base()  # the query's settings apply before the first text counts
        if msg is not None and "type" not in msg:
            config = self._settings(msg, base)
            if self.initialized:
                return (Configure(config, tuple(msg)),)
            return (Init(config, None),)
        events: list[TTSEvent]
        if msg is None:
            events = self._text(data)
        elif msg["type"] == "control":
            events = [self._control(msg)]
        elif msg["type"] == "init":
            raise _field(
                "this session speaks SLNG's native form (it began with text or settings): "
                "send configure, not init"
            )
        else:
            events = [self._unified_event(data)]
        if not self.initialized:
            events.insert(0, Init(base, None))
        return tuple(events)

    def _unified_event(self, data: str) -> TTSEvent:
        """A unified message mixed in; audio stays binary PCM16 whatever it asks."""
        event = self._unified.receive(data)
        if isinstance(event, Configure):
            fixed = replace(event.config, encoding=Encoding.PCM16, binary=True)
            return Configure(fixed, event.changed)
        return event

    def _text(self, text: str) -> list[TTSEvent]:
        if text.strip() == END_SENTINEL:
            self._words = 0
            return [EndOfInput()]
        if len(text) > self.max_text_chars:
            raise MessageError(
                "text_too_long",
                f"text of {len(text)} characters is over the limit of {self.max_text_chars}",
            )
        if not text:
            return []
        if self._open_word and not text[0].isspace():
            text = " " + text
        self._open_word = not text[-1].isspace()
        out: list[TTSEvent] = [InputText(text)]
        self._words += len(text.split())
        if self._words >= self._buffer_words:
            self._words = 0
            out.append(Flush())
        return out

    def _control(self, msg: Mapping[str, Any]) -> TTSEvent:
        action = msg.get("action")
        kind = _CONTROL.get(action) if isinstance(action, str) else None
        if kind is None:
            raise _field(f"field 'action' must be flush, clear or stop; got {str(action)[:64]!r}")
        if kind is Flush:
            self._words = 0
        return kind()

    def _base(self) -> TTSConfig:
        """The session's settings: what is in force, or at the start the query's."""
        if self.initialized:
            return self.config
        return self._settings(self._query, TTSConfig(binary=True), query=True)

    def _settings(
        self, values: Mapping[str, Any], base: TTSConfig, *, query: bool = False
    ) -> TTSConfig:
        """``base`` with the settings in ``values`` (the query string's, or a settings
        object's); each refusal names the parameter."""
        config = base
        extra = dict(base.extra)
        if not query:
            unknown = [k for k in values if k not in _SETTINGS]
            if unknown:
                raise _field(
                    f"field {unknown[0][:64]!r} is not a setting of this form "
                    f"({', '.join(_SETTINGS)})"
                )
        for key in ("voice_id", "voice"):
            if key in values:
                config = replace(config, voice_id=_voice(values[key], key))
                break
        buffer_words = self._buffer_words
        if "buffer_size" in values:
            buffer_words = int(
                _number(values["buffer_size"], "buffer_size", 1, MAX_BUFFER_WORDS, integer=True)
            )
        for key, low, high in _MODEL_SETTINGS:
            if key in values:
                number = _number(values[key], key, low, high, integer=key == "max_tokens")
                extra[key] = int(number) if key == "max_tokens" else number
        if "speed" in values:
            config = replace(config, speed=_number(values["speed"], "speed", 0.25, 4.0))
        if "language" in values:
            config = replace(config, language=_voice(values["language"], "language", 32))
        if query:
            if "sample_rate_hz" in values:
                rate = _number(
                    values["sample_rate_hz"], "sample_rate_hz", MIN_RATE, MAX_RATE, integer=True
                )
                config = replace(config, sample_rate=int(rate))
            codec = values.get("codec", "pcm16")
            if codec != "pcm16":
                raise MessageError(
                    "unsupported_encoding", f"codec {str(codec)[:32]!r} is not supported (pcm16)"
                )
        self._buffer_words = buffer_words  # all checked: a refused message changes nothing
        return replace(config, encoding=Encoding.PCM16, binary=True, extra=extra)

    # -- state ---------------------------------------------------------------------------

    def start(self, context_id: str, config: TTSConfig) -> None:
        """Record that the session started with ``config`` (after the engine agreed)."""
        self.context_id = context_id
        self.config = config
        self.initialized = True
        self._unified.start(context_id, config)

    def reconfigure(self, config: TTSConfig) -> None:
        self.config = replace(config, encoding=Encoding.PCM16, binary=True)
        self._unified.reconfigure(self.config)

    # -- rendering: binary audio; JSON only for errors and pong ----------------------------

    def ready(self, session: str, capabilities: Mapping[str, Any]) -> None:
        return None

    def audio_chunk(self, audio: bytes, duration_ms: float) -> bytes:
        return audio

    def audio_end(self, utterance_id: str, total_ms: float, *, interrupted: bool) -> None:
        return None

    def cleared(self) -> None:
        return None

    def configured(self) -> None:
        return None

    def pong(self) -> str:
        return orjson.dumps({"type": "pong", "context_id": self.context_id}).decode()

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        return render_error(code, message, retryable=retryable, context_id=self.context_id)

    def session_ended(self, reason: str, *, characters: int, audio_ms: float) -> None:
        return None


def _voice(value: Any, name: str, max_len: int = MAX_VOICE) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise _field(f"{name!r} must be a string of 1–{max_len} characters")
    return value


def _number(value: Any, name: str, low: float, high: float, *, integer: bool = False) -> float:
    """A number from JSON or from the query string (text), within ``low``–``high``."""
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            value = None
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise _field(f"{name!r} must be {kind}")
    if not low <= value <= high:
        raise _field(f"{name!r} must be {low:g}–{high:g}, got {value:g}")
    return float(value)
