"""What a voice session uses of the server (engines, models, workers), and which engine
a session's config names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voxgate.engines.base import SpeechToText, TextToSpeech, VoiceActivity
from voxgate.engines.llm import LanguageModel
from voxgate.engines.workers import EngineWorkers
from voxgate.protocols.realtime.session import SessionConfig

#: Transcription model names of OpenAI's (those of the ``openai`` package's session types,
#: and Pipecat's default ``gpt-realtime-whisper``): they mean "the default engine" here.
OPENAI_STT_MODELS = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-latest",
        "gpt-4o-mini-transcribe-2025-12-15",
        "gpt-4o-transcribe-diarize",
        "gpt-transcribe",
        "gpt-live-transcribe",
        "gpt-realtime-whisper",
    }
)


def is_openai_stt_model(model: str) -> bool:
    """An OpenAI transcription model: a known name, or one of their naming pattern (so a
    model OpenAI adds later does not break an unchanged client)."""
    family = model.startswith(("gpt-", "whisper-"))
    return model in OPENAI_STT_MODELS or (family and ("transcribe" in model or "whisper" in model))


@dataclass(frozen=True)
class AgentDeps:
    """What a voice session uses; built by the server for each session."""

    workers: EngineWorkers
    get_tts: Callable[[str], Awaitable[TextToSpeech]]
    get_stt: Callable[[str], Awaitable[SpeechToText]]
    make_vad: Callable[[], VoiceActivity]
    resolve_model: Callable[[str], LanguageModel]
    tts_names: tuple[str, ...]
    stt_names: tuple[str, ...]
    default_tts: str
    default_stt: str
    #: The stored provider key a cloud engine uses (``None`` for local engines).
    engine_key: Callable[[str], str | None] = lambda _name: None
    #: The TTS engine that serves a name of ``audio.output.model``: an engine, or an alias
    #: (Inworld's ``inworld-tts-1.5-mini``…; ``EngineRegistry.resolve``). ``None``: the
    #: names of ``tts_names`` only.
    resolve_tts: Callable[[str], str | None] | None = None
    #: The same for ``audio.input.transcription.model``: an STT engine or an alias
    #: (Deepgram's ``nova-3``, SLNG's ``kyutai``…).
    resolve_stt: Callable[[str], str | None] | None = None

    def tts_name(self, c: SessionConfig) -> str:
        """The TTS engine that speaks for ``c`` (a name that resolves to none is returned
        as it is, for the session's check to refuse)."""
        name = c.tts_model or self.default_tts
        return (self.resolve_tts(name) if self.resolve_tts is not None else None) or name

    def stt_name(self, c: SessionConfig) -> str:
        """The STT engine that transcribes for ``c`` (returned as it is when it resolves to
        none, for the session's check to refuse)."""
        model = c.transcription.model if c.transcription is not None else None
        if model is None or is_openai_stt_model(model):
            return self.default_stt
        return (self.resolve_stt(model) if self.resolve_stt is not None else None) or model
