"""What a voice session says: canonical events, one frozen dataclass each.

The voice session (``core/realtime``) emits these to the transport that binds it; they
live here, beside the items and session config they carry, because the core and every
renderer share them. Only :mod:`voxgate.protocols.realtime.render` knows how OpenAI
names them on the wire (GA or beta). Field names follow the Realtime
vocabulary (``item_id``, ``audio_end_ms``…) so rendering stays a table.

Events that carry an :class:`~voxgate.protocols.realtime.items.Item` refer to the live
item: a transport renders an event when it receives it, before the session goes on.
The spoken audio itself is not an event: it goes to the session's
:class:`~voxgate.core.realtime.ports.AudioSink`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.session import AudioSpec, SessionConfig

# -- the session ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionState:
    """The session as the client is shown it: its config with what is in force filled in."""

    config: SessionConfig
    session_id: str
    expires_at: int
    #: The voice and the speech engine used where the config leaves them to the defaults.
    voice: str
    stt: str


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session: SessionState


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    session: SessionState


@dataclass(frozen=True, slots=True)
class ConversationCreated:
    conversation_id: str


# -- the conversation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemAdded:
    item: Item
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ItemDone:
    """The item is complete (GA clients only)."""

    item: Item
    previous_item_id: str | None = None


@dataclass(frozen=True, slots=True)
class ItemRetrieved:
    item: Item


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    item_id: str


# -- input audio ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class InputCleared:
    pass


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class InputTimeout:
    """Server VAD's ``idle_timeout_ms`` passed with no speech after an answer."""

    audio_start_ms: int
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptionDelta:
    item_id: str
    content_index: int
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptionCompleted:
    item_id: str
    content_index: int
    transcript: str
    #: Seconds of audio transcribed (the usage).
    seconds: float


@dataclass(frozen=True, slots=True)
class TranscriptionFailed:
    item_id: str
    content_index: int
    code: str
    message: str


# -- responses -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseState:
    """A response as ``response.created``/``response.done`` show it."""

    id: str
    status: str  # in_progress | completed | cancelled | failed | incomplete
    reason: str | None
    #: (code, message) of a failed response.
    error: tuple[str, str] | None
    output: tuple[Item, ...]
    in_conversation: bool
    modalities: tuple[str, ...]
    max_output_tokens: int | None
    output_format: AudioSpec
    voice: str
    metadata: Mapping[str, str] | None
    #: (input, output) tokens.
    usage: tuple[int, int]
    audio_ms: float


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response: ResponseState


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response: ResponseState


@dataclass(frozen=True, slots=True)
class OutputItemAdded:
    response_id: str
    output_index: int
    item: Item


@dataclass(frozen=True, slots=True)
class OutputItemDone:
    response_id: str
    output_index: int
    item: Item


@dataclass(frozen=True, slots=True)
class ContentPartAdded:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@dataclass(frozen=True, slots=True)
class ContentPartDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@dataclass(frozen=True, slots=True)
class TextDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(frozen=True, slots=True)
class TextDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str


@dataclass(frozen=True, slots=True)
class AudioTranscriptDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(frozen=True, slots=True)
class AudioTranscriptDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str


@dataclass(frozen=True, slots=True)
class AudioDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int


@dataclass(frozen=True, slots=True)
class ArgumentsDelta:
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class ArgumentsDone:
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


# -- play-out (transports that play the audio: WebRTC calls) -------------------------------


@dataclass(frozen=True, slots=True)
class OutputAudioStarted:
    response_id: str


@dataclass(frozen=True, slots=True)
class OutputAudioStopped:
    response_id: str


@dataclass(frozen=True, slots=True)
class OutputAudioCleared:
    response_id: str


# -- limits and errors ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    name: str  # requests | tokens
    limit: int
    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class RateLimitsUpdated:
    rate_limits: tuple[RateLimit, ...]


@dataclass(frozen=True, slots=True)
class Error:
    """A refused command or a failure; the session goes on."""

    code: str
    message: str
    param: str | None = None
    event_id: str | None = None
    #: ``invalid_request_error`` (the client's) or ``server_error`` (ours).
    kind: str = "invalid_request_error"

    @classmethod
    def of(cls, code: str, message: str) -> Error:
        """An error the session itself raises: ``internal_error`` is ours
        (``server_error``), any other code the client's (``invalid_request_error``)."""
        kind = "server_error" if code == "internal_error" else "invalid_request_error"
        return cls(code, message, kind=kind)

    @classmethod
    def refusal(cls, exc: ClientEventError, event_id: str | None = None) -> Error:
        """The error event for a refused client event (``event_id`` if it has none)."""
        return cls(exc.code, exc.public_message, exc.param, exc.event_id or event_id, exc.kind)


Event = (
    SessionCreated
    | SessionUpdated
    | ConversationCreated
    | ItemAdded
    | ItemDone
    | ItemRetrieved
    | ItemTruncated
    | ItemDeleted
    | InputCommitted
    | InputCleared
    | SpeechStarted
    | SpeechStopped
    | InputTimeout
    | TranscriptionDelta
    | TranscriptionCompleted
    | TranscriptionFailed
    | ResponseCreated
    | ResponseDone
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | TextDelta
    | TextDone
    | AudioTranscriptDelta
    | AudioTranscriptDone
    | AudioDone
    | ArgumentsDelta
    | ArgumentsDone
    | OutputAudioStarted
    | OutputAudioStopped
    | OutputAudioCleared
    | RateLimitsUpdated
    | Error
)
