"""The engine registry: engine name → one shared instance, created and loaded on first use.

Built-in names need no configuration; ``[speech.engines.NAME]`` entries add engines of a
known type with options (two whisper engines with different models, say). An engine
that cannot be built raises :class:`EngineUnavailable` with what to install; the next
request tries again, so installing the extra fixes a running server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voxgate.engines.base import EngineUnavailable, SpeechToText, TextToSpeech
from voxgate.engines.llm import LocalEngine
from voxgate.engines.options import STT_TYPES, TTS_TYPES, engine_types
from voxgate.engines.vad import SegmenterSettings
from voxgate.engines.workers import EngineWorkers
from voxgate.settings import LocalLLMSettings, SpeechSettings

#: Engine and model names from other catalogues → the kind of engine they name. Each
#: resolves to the default engine of its kind (``speech.default_tts``/``default_stt``)
#: unless ``[speech.aliases]`` names another engine for it.
BUILTIN_ALIASES: Mapping[str, str] = {
    # SLNG's catalogue
    **dict.fromkeys(
        ("orpheus", "orpheus-indic", "kokoro", "cosyvoice", "chatterbox", "xtts"), "tts"
    ),
    "kyutai": "stt",
    # Deepgram's models (Workers AI's @cf/deepgram/… and Deepgram's own /v1/listen, /v1/speak)
    **dict.fromkeys(("nova-3", "nova-2", "nova", "flux"), "stt"),
    **dict.fromkeys(("aura-1", "aura-2", "aura"), "tts"),
    # TTS models of realtime APIs (``audio.output.model``): Inworld's and OpenAI's
    **dict.fromkeys(
        (
            "inworld-tts-1",
            "inworld-tts-1-max",
            "inworld-tts-1.5-mini",
            "inworld-tts-1.5-max",
            "inworld-tts-2",
            "tts-1",
            "tts-1-hd",
            "gpt-4o-mini-tts",
        ),
        "tts",
    ),
}


class EngineRegistry:
    def __init__(
        self,
        settings: SpeechSettings,
        *,
        workers: EngineWorkers | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers or EngineWorkers(threads=settings.workers, nice=settings.nice)
        self._types = engine_types(settings)
        self._options: dict[str, Mapping[str, Any]] = {
            e.name: e.options for e in settings.engines.values()
        }
        self._tts: dict[str, TextToSpeech] = {}
        self._stt: dict[str, SpeechToText] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Models several engines share (the silero VAD graph, pocketsphinx decoders).
        self._shared: dict[str, Any] = {}

    @property
    def shared(self) -> dict[str, Any]:
        """Models instances share (the silero VAD graph), for VADs made outside engines."""
        return self._shared

    def tts_names(self) -> list[str]:
        return sorted(n for n, t in self._types.items() if t in TTS_TYPES)

    def stt_names(self) -> list[str]:
        return sorted(n for n, t in self._types.items() if t in STT_TYPES)

    def resolve(self, name: str, kind: str) -> str | None:
        """The engine that serves ``name`` as a ``kind`` ("tts" or "stt") engine: ``name``
        itself, the engine ``[speech.aliases]`` names for it, or for a built-in alias the
        default engine of that kind. ``None`` when nothing of that kind answers to it."""
        names = self.tts_names() if kind == "tts" else self.stt_names()
        if name in names:
            return name
        target = self.settings.aliases.get(name)
        if target is None and BUILTIN_ALIASES.get(name) == kind:
            target = self.settings.default_tts if kind == "tts" else self.settings.default_stt
        return target if target in names else None

    def provider_of(self, name: str) -> str:
        """The relay provider a cloud engine talks to ("" for a local engine)."""
        engine_type = self._types.get(name, "")
        if engine_type not in ("elevenlabs", "cartesia", "deepgram"):
            return ""
        return str(self._options.get(name, {}).get("provider", engine_type))

    def type_of(self, name: str) -> str:
        return self._types.get(name, "")

    def loaded(self) -> dict[str, list[str]]:
        return {"tts": sorted(self._tts), "stt": sorted(self._stt)}

    def describe_tts(self, name: str) -> TextToSpeech:
        """The local TTS engine ``name`` built but not loaded (when not loaded already):
        enough to read its capabilities, such as the voices. Raises EngineUnavailable."""
        engine = self._tts.get(name)
        if engine is None:
            built = self._build(name, "tts")
            assert isinstance(built, TextToSpeech)
            return built
        return engine

    async def tts(self, name: str) -> TextToSpeech:
        engine = self._tts.get(name)
        if engine is None:
            async with self._locks.setdefault(f"tts:{name}", asyncio.Lock()):
                if name not in self._tts:
                    built = self._build(name, "tts")
                    assert isinstance(built, TextToSpeech)
                    await built.load()
                    self._tts[name] = built
            engine = self._tts[name]
        return engine

    async def stt(self, name: str) -> SpeechToText:
        engine = self._stt.get(name)
        if engine is None:
            async with self._locks.setdefault(f"stt:{name}", asyncio.Lock()):
                if name not in self._stt:
                    built = self._build(name, "stt")
                    assert isinstance(built, SpeechToText)
                    await built.load()
                    self._stt[name] = built
            engine = self._stt[name]
        return engine

    def local_llm(self, settings: LocalLLMSettings) -> LocalEngine:
        """The engine of ``voxgate/local`` with ``settings``: one per registry (and
        settings), created now, loaded on first use, closed with the registry."""
        from voxgate.engines.local_llm import LocalLLM

        key = f"local_llm:{settings!r}"
        engine = self._shared.get(key)
        if not isinstance(engine, LocalLLM):
            engine = LocalLLM(
                settings, cache_dir=Path(self.settings.cache_dir).expanduser(), workers=self.workers
            )
            self._shared[key] = engine
        return engine

    async def preload(self) -> None:
        for name in self.settings.preload:
            kind = self._types.get(name)
            if kind in TTS_TYPES:
                await self.tts(name)
            if kind in STT_TYPES:
                await self.stt(name)

    async def close(self) -> None:
        for tts in self._tts.values():
            await tts.close()
        for stt in self._stt.values():
            await stt.close()
        from voxgate.engines.local_llm import LocalLLM

        for shared in self._shared.values():
            if isinstance(shared, LocalLLM):
                await shared.close()
        self.workers.shutdown()
        processes = self._shared.get("sphinx_processes")
        if processes is not None:
            processes.shutdown()

    def _build(self, name: str, kind: str) -> TextToSpeech | SpeechToText:
        engine_type = self._types.get(name)
        allowed = TTS_TYPES if kind == "tts" else STT_TYPES
        if engine_type not in allowed:
            raise EngineUnavailable(f"no {kind.upper()} engine named {name!r}")
        opts = self._options.get(name, {})
        if engine_type == "piper":
            from voxgate.engines.piper import PiperTTS

            return PiperTTS(
                self.workers,
                voices=opts.get("voices"),
                default_voice=opts.get("default_voice"),
                first_clause_words=opts.get("first_clause_words", 6),
                first_clause_words_busy=opts.get("first_clause_words_busy", 4),
                noise_scale=opts.get("noise_scale"),
                noise_w_scale=opts.get("noise_w_scale"),
                voice_aliases=opts.get("voice_aliases"),
            )
        if engine_type == "pocketsphinx":
            from voxgate.engines.sphinx import PocketsphinxSTT

            return PocketsphinxSTT(
                self.workers,
                vad=opts.get("vad", "webrtc"),
                segmenter=_segmenter(opts),
                shared=self._shared,
                second_pass=opts.get("second_pass", "off") == "on",
            )
        if engine_type == "whisper":
            from voxgate.engines.sphinx import DecoderPool, sphinx_processes
            from voxgate.engines.whisper import DEFAULT_PARTIALS, DEFAULT_WINDOW, WhisperSTT

            pool = self._shared.get("sphinx_pool")
            if not isinstance(pool, DecoderPool):
                pool = DecoderPool(sphinx_processes(self._shared, self.workers))
                self._shared["sphinx_pool"] = pool
            return WhisperSTT(
                self.workers,
                cache_dir=Path(self.settings.cache_dir).expanduser(),
                model=opts.get("model"),
                compute_type=opts.get("compute_type", "int8"),
                beam_size=opts.get("beam_size", 5),
                vad=opts.get("vad", "silero"),
                window=opts.get("window", DEFAULT_WINDOW),
                partials=opts.get("partials", DEFAULT_PARTIALS),
                segmenter=_segmenter(opts),
                shared=self._shared,
                sphinx_pool=pool,
            )
        raise EngineUnavailable(f"engine {name!r} ({engine_type}) is a cloud engine")


def _segmenter(opts: Mapping[str, Any]) -> SegmenterSettings:
    d = SegmenterSettings()
    return SegmenterSettings(
        threshold=opts.get("threshold", d.threshold),
        min_speech_ms=d.min_speech_ms,
        min_silence_ms=opts.get("min_silence_ms", d.min_silence_ms),
        pause_ms=opts.get("pause_ms", d.pause_ms),
        preroll_ms=d.preroll_ms,
    )
