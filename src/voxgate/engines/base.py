"""The engine interfaces: :class:`TextToSpeech`, :class:`SpeechToText`, :class:`VoiceActivity`.

An engine is created once per process (see :mod:`voxgate.engines.registry`) and shared
by every session; per-session state lives in the stream objects an engine opens.

- ``TextToSpeech.open(options)`` → :class:`SynthesisStream`. ``synthesize(text)`` yields
  PCM16 mono chunks at ``stream.sample_rate``, one per clause for local engines. The
  caller cancels the iteration to interrupt; it must call ``aclose()`` when done.
- ``SpeechToText.open(options)`` → :class:`RecognitionStream`. The caller sends PCM16
  mono at ``stream.sample_rate`` with ``send``, reads :data:`RecognitionEvent` values
  from ``events()``, calls ``finalize()`` to get the transcript of what is buffered
  (a :class:`Finalized` event follows, in order with the others) and ``aclose()``.
- ``VoiceActivity`` scores fixed-size frames synchronously; it is cheap and runs inside
  the recognition stream's worker, never on the event loop.

Engines raise :class:`EngineUnavailable` when they cannot run (an extra is missing, the
model cannot be found, the upstream refused) and :class:`EngineRejected` when a request
cannot be served (an unknown voice, an unsupported option).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from voxgate.engines.voices import resolve_voice
from voxgate.errors import VoxgateError


class EngineError(VoxgateError):
    code = "engine_error"
    retryable = False


class EngineUnavailable(EngineError):
    """The engine cannot run now or here; the message says what to install or fix."""

    code = "engine_unavailable"
    retryable = True


class EngineRejected(EngineError):
    """A request the engine cannot serve; ``code`` is the unified protocol's error code."""

    def __init__(self, message: str, *, code: str = "invalid_field") -> None:
        super().__init__(message)
        self.code = code


class UpstreamEngineError(EngineError):
    """A cloud provider reported an error for this request."""

    code = "upstream_error"

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        #: The provider's HTTP status when it refused the connection.
        self.status = status

    @property
    def refused(self) -> bool:
        """The provider refused for the client's credentials or limits (a 4xx other than
        408): trying again as it is would only be refused again."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 408


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    language: str = "en"
    sample_rate: int | None = None


@dataclass(frozen=True)
class SynthesisOptions:
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0
    #: The rate the caller wants; an engine that can produce it natively should.
    sample_rate: int = 24000
    #: Engine-specific fields from the client, passed through (``voice_settings`` …).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The provider key a cloud engine uses (the gateway's stored key).
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TTSCapabilities:
    voices: tuple[Voice, ...] = ()
    streaming_text: bool = False
    speed: bool = True
    sample_rates: tuple[int, ...] = ()
    local: bool = True
    #: The speeds the engine takes (``None``: any the protocol allows).
    speed_range: tuple[float, float] | None = None


class SynthesisStream(ABC):
    #: The rate of the PCM16 the stream yields.
    sample_rate: int
    #: The voice in use.
    voice: str

    @abstractmethod
    def synthesize(self, text: str, *, first: bool = True) -> AsyncIterator[bytes]:
        """Speak ``text``; yields PCM16 mono chunks. Cancel the iteration to interrupt.

        ``first``: the text starts an answer, so a listener waits for its first clause
        (a local engine computes that clause ahead of other sessions' later ones); the
        realtime speaker passes ``False`` for an answer's later clauses."""

    async def aclose(self) -> None:  # noqa: B027 - most streams hold nothing
        """Release what the stream holds (an upstream connection)."""


class TextToSpeech(ABC):
    name: str
    #: ``voice_aliases``: voice names from other catalogues → this engine's voices.
    voice_aliases: Mapping[str, str] = MappingProxyType({})

    @property
    @abstractmethod
    def capabilities(self) -> TTSCapabilities: ...

    @property
    def default_voice_id(self) -> str:
        """The voice spoken when none is named."""
        voices = self.capabilities.voices
        return voices[0].id if voices else ""

    def voice_for(self, requested: str | None) -> str:
        """The voice this engine speaks ``requested`` with (see
        :func:`voxgate.engines.voices.resolve_voice`); ``open`` applies it itself."""
        return resolve_voice(
            requested,
            voices=[v.id for v in self.capabilities.voices],
            default=self.default_voice_id,
            aliases=self.voice_aliases,
        )

    async def load(self) -> None:  # noqa: B027 - engines without models load nothing
        """Load models; called once, before the first ``open``."""

    @abstractmethod
    async def open(self, options: SynthesisOptions) -> SynthesisStream:
        """A stream for one session. Raises :class:`EngineRejected` for a bad option."""

    async def close(self) -> None:  # noqa: B027
        """Release models and threads at shutdown."""


# --- recognition -------------------------------------------------------------------------


@dataclass(frozen=True)
class RecognitionOptions:
    language: str | None = None
    interim_results: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    #: Seconds of audio from the start of the stream.
    timestamp: float


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    is_final: bool
    confidence: float
    #: Seconds of audio from the start of the stream to the start of the utterance.
    timestamp: float


@dataclass(frozen=True, slots=True)
class Finalized:
    """The answer to ``finalize()``: the transcript of what was buffered."""

    text: str
    #: Seconds of audio the stream has received in all.
    audio_duration_seconds: float
    timestamp: float


@dataclass(frozen=True, slots=True)
class RecognitionFailed:
    error: EngineError


RecognitionEvent = SpeechStarted | Transcript | Finalized | RecognitionFailed


@dataclass(frozen=True)
class STTCapabilities:
    streaming: bool
    partials: bool
    languages: tuple[str, ...] = ("en",)
    local: bool = True


class RecognitionStream(ABC):
    #: The rate of the PCM16 the stream takes.
    sample_rate: int

    @abstractmethod
    async def send(self, pcm: bytes) -> None:
        """Queue audio. Awaits while the stream's backlog is full (backpressure)."""

    @abstractmethod
    async def finalize(self) -> None:
        """Ask for the transcript of everything sent so far; a :class:`Finalized` follows."""

    @abstractmethod
    def events(self) -> AsyncIterator[RecognitionEvent]:
        """Events in order; ends after ``aclose()``."""

    @abstractmethod
    async def aclose(self) -> None: ...


class SpeechToText(ABC):
    name: str
    #: An identifier for the model, sent to clients in ``ready``.
    model_id: str

    @property
    @abstractmethod
    def capabilities(self) -> STTCapabilities: ...

    async def load(self) -> None:  # noqa: B027
        """Load models; called once, before the first ``open``."""

    @abstractmethod
    async def open(self, options: RecognitionOptions) -> RecognitionStream: ...

    async def close(self) -> None:  # noqa: B027
        """Release models and threads at shutdown."""


# --- voice activity ----------------------------------------------------------------------


class VoiceActivity(ABC):
    """Scores fixed-size PCM16 frames: 0.0 (silence) … 1.0 (speech).

    Instances are per stream (models with recurrent state keep it here); ``reset``
    forgets it. Synchronous and cheap: call from a worker thread.
    """

    name: str
    sample_rate: int
    frame_samples: int

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * 2

    @abstractmethod
    def score(self, frame: bytes) -> float: ...

    def reset(self) -> None:  # noqa: B027
        """Forget state between utterances."""
