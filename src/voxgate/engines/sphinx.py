"""STT ``pocketsphinx``: CMU pocketsphinx 5 with the en-us model its wheel ships.

Truly streaming: every chunk updates a partial hypothesis. pocketsphinx's native code
holds the Python interpreter while it works — building a decoder takes ~0.3 s, an
utterance's end up to 0.16 s with the second pass, each chunk a few ms — so in the
server's process it stalled the event loop for every session (py-spy during the soak
bench: 81 % of interpreter time in pocketsphinx, relay round trips p99 > 100 ms). So
decoders live in worker processes (:class:`SphinxProcesses`, code in
:mod:`voxgate.engines.sphinx_worker`): an engine thread that feeds one blocks on the
call without holding the interpreter, two processes decode on two cores at once, and a
native crash loses one process's utterances, not the server.

A decoder is ~90 MB, so each process keeps its idle ones, and a stream borrows one for
an utterance only (from the VAD's start to its end): decoders in use are utterances
being spoken at once, not open sessions.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from voxgate.engines import sphinx_worker
from voxgate.engines.base import (
    EngineError,
    EngineUnavailable,
    RecognitionOptions,
    RecognitionStream,
    SpeechToText,
    STTCapabilities,
)
from voxgate.engines.local_stt import LocalRecognitionStream, RecognitionCore, UtteranceDecoder
from voxgate.engines.vad import Segmenter, SegmenterSettings, make_vad
from voxgate.engines.workers import EngineWorkers

HINT = "pip install 'voxgate[speech]' (pocketsphinx)"
T = TypeVar("T")


class SphinxProcesses:
    """Worker processes holding pocketsphinx decoders. :meth:`call` runs a function of
    :mod:`~voxgate.engines.sphinx_worker` in one of them and blocks the calling thread
    (an engine worker, never the event loop) until it returns. A process is started on
    first use, and again after one ended."""

    def __init__(self, processes: int, *, nice: int) -> None:
        self._slots: list[ProcessPoolExecutor | None] = [None] * max(1, processes)
        self._lock = threading.Lock()
        self._nice = nice
        # decoders each process has built, and has lent out, by (process, second pass)
        self._built: Counter[tuple[int, bool]] = Counter()
        self._lent: Counter[tuple[int, bool]] = Counter()

    def __len__(self) -> int:
        return len(self._slots)

    def lend(self, second_pass: bool) -> int:
        """The process the next utterance goes to: one with an idle decoder of this kind,
        else the one that has built the fewest. So the decoders built, ~90 MB each, are
        the most utterances ever spoken at once — not that peak in every process."""
        with self._lock:
            slots = range(len(self._slots))
            idle = [n for n in slots if self._built[n, second_pass] > self._lent[n, second_pass]]
            slot = idle[0] if idle else min(slots, key=lambda n: self._built[n, second_pass])
            self._lent[slot, second_pass] += 1
            built = max(self._built[slot, second_pass], self._lent[slot, second_pass])
            self._built[slot, second_pass] = built
            return slot

    def built(self, second_pass: bool) -> int:
        """Decoders of this kind the processes hold (idle or lent)."""
        with self._lock:
            return sum(n for (_, kind), n in self._built.items() if kind is second_pass)

    def returned(self, slot: int, second_pass: bool) -> None:
        """A decoder lent by :meth:`lend` is idle again (or lost with its process)."""
        with self._lock:
            self._lent[slot, second_pass] = max(0, self._lent[slot, second_pass] - 1)

    def call(self, slot: int, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor(slot)
        try:
            return executor.submit(fn, *args).result()
        except BrokenProcessPool:
            with self._lock:
                if self._slots[slot] is executor:
                    self._slots[slot] = None
                    for kind in (False, True):
                        self._built[slot, kind] = 0
            raise EngineError(
                "the pocketsphinx process ended: the utterance in progress is lost"
            ) from None

    def _executor(self, slot: int) -> ProcessPoolExecutor:
        with self._lock:
            executor = self._slots[slot]
            if executor is None:
                executor = self._slots[slot] = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=sphinx_worker.init,
                    initargs=(self._nice,),
                )
            return executor

    def shutdown(self) -> None:
        with self._lock:
            slots, self._slots = self._slots, [None] * len(self._slots)
        for executor in slots:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)


class DecoderPool:
    """Decoders of one kind (second pass on or off) in :class:`SphinxProcesses`.

    ``second_pass`` turns on pocketsphinx's flat-lexicon second search at the end of each
    utterance: 80–160 ms more per utterance for about 2 points of word error rate (30.8 %
    vs 32.7 % on the Harvard sentences spoken by piper), so it is off unless asked for.
    """

    def __init__(self, processes: SphinxProcesses, *, second_pass: bool = False) -> None:
        self.processes = processes
        self.second_pass = second_pass

    def warm(self) -> None:
        """One idle decoder (and proof that the model loads), in the process that would
        take the next utterance."""
        slot = self.processes.lend(self.second_pass)
        try:
            self.processes.call(slot, sphinx_worker.warm, self.second_pass)
        except ImportError as exc:
            raise EngineUnavailable(f"STT 'pocketsphinx' is not installed: {HINT}") from exc
        finally:
            self.processes.returned(slot, self.second_pass)

    def begin(self, cmn: str | None) -> tuple[int, int]:
        """Start an utterance on a lent decoder: (process, decoder id)."""
        slot = self.processes.lend(self.second_pass)
        try:
            return slot, self.processes.call(slot, sphinx_worker.begin, self.second_pass, cmn)
        except BaseException:
            self.processes.returned(slot, self.second_pass)
            raise

    def done(self, slot: int) -> None:
        self.processes.returned(slot, self.second_pass)


class SphinxDecoder(UtteranceDecoder):
    """Borrows a decoder at an utterance's start and gives it back at its end."""

    def __init__(self, pool: DecoderPool) -> None:
        self._pool = pool
        self._key: tuple[int, int] | None = None  # (process, decoder) in an utterance
        #: The cepstral mean this stream's last utterance ended with: the next one,
        #: whichever decoder it gets, starts from it (as one decoder for the whole
        #: stream would), and from nothing another stream left behind.
        self._cmn: str | None = None

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._key is not None
        slot, key = self._key
        return self._pool.processes.call(slot, fn, key, *args)

    def begin(self) -> None:
        if self._key is None:
            self._key = self._pool.begin(self._cmn)
        else:
            self._call(sphinx_worker.restart)

    def add(self, pcm: bytes) -> str | None:
        if self._key is None:
            return None
        return self._call(sphinx_worker.process, pcm)

    def end(self) -> tuple[str, float]:
        if self._key is None:
            return "", 0.0
        try:
            text, confidence, self._cmn = self._call(sphinx_worker.end)
        finally:
            self._pool.done(self._key[0])
            self._key = None
        return text, confidence

    def close(self) -> None:
        if self._key is not None:
            try:
                self._call(sphinx_worker.release)
            finally:
                self._pool.done(self._key[0])
                self._key = None


class PocketsphinxSTT(SpeechToText):
    name = "pocketsphinx"
    model_id = "pocketsphinx-en-us"

    def __init__(
        self,
        workers: EngineWorkers,
        *,
        vad: str = "webrtc",
        segmenter: SegmenterSettings | None = None,
        shared: dict[str, Any] | None = None,
        second_pass: bool = False,
    ) -> None:
        self._workers = workers
        self._vad = vad
        self._segmenter = segmenter or SegmenterSettings()
        self._shared = shared if shared is not None else {}
        self.pool = DecoderPool(sphinx_processes(self._shared, workers), second_pass=second_pass)

    @property
    def capabilities(self) -> STTCapabilities:
        return STTCapabilities(streaming=True, partials=True, languages=("en",))

    async def load(self) -> None:
        await self._workers.run(self.pool.warm)
        await self._workers.run(make_vad, self._vad, sample_rate=16000, shared=self._shared)

    async def open(self, options: RecognitionOptions) -> RecognitionStream:
        def build() -> RecognitionCore:
            vad = make_vad(self._vad, sample_rate=16000, shared=self._shared)
            return RecognitionCore(
                Segmenter(vad, self._segmenter),
                SphinxDecoder(self.pool),
                interim=options.interim_results,
                sample_rate=16000,
            )

        return LocalRecognitionStream(self._workers, await self._workers.run(build))


def sphinx_processes(shared: dict[str, Any], workers: EngineWorkers) -> SphinxProcesses:
    """The decoder processes the engines of one registry share (one per engine thread)."""
    processes = shared.get("sphinx_processes")
    if not isinstance(processes, SphinxProcesses):
        processes = shared["sphinx_processes"] = SphinxProcesses(workers.threads, nice=workers.nice)
    return processes
