"""STT ``pocketsphinx``: CMU pocketsphinx 5 with the en-us model its wheel ships.

Truly streaming: every chunk updates a partial hypothesis. A native decoder takes
~0.3 s to create — holding the interpreter all that time, so every session on the event
loop waits — and ~90 MB of memory. So the engine keeps a pool of idle decoders, and a
stream borrows one only for an utterance (from the VAD's start to its end), not for its
whole life: decoders in use are utterances being spoken at once, not open sessions.
"""

from __future__ import annotations

import threading
from typing import Any

from voxgate.engines.base import (
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


class DecoderPool:
    """Idle pocketsphinx decoders. ``take``/``give`` are called from worker threads.

    ``second_pass`` turns on pocketsphinx's flat-lexicon second search at the end of each
    utterance. It holds the interpreter for 80–160 ms per utterance end (every session on
    the event loop waits that long) for about 2 points of word error rate (30.8 % vs
    32.7 % on the Harvard sentences spoken by piper), so it is off unless asked for.
    """

    def __init__(self, *, second_pass: bool = False) -> None:
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._second_pass = second_pass

    def take(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise EngineUnavailable(f"STT 'pocketsphinx' is not installed: {HINT}") from exc
        return Decoder(samprate=16000, loglevel="FATAL", fwdflat=self._second_pass)

    def give(self, decoder: Any) -> None:
        with self._lock:
            self._idle.append(decoder)


class SphinxDecoder(UtteranceDecoder):
    """Borrows a pooled decoder at an utterance's start and gives it back at its end."""

    def __init__(self, pool: DecoderPool) -> None:
        self._pool = pool
        self._decoder: Any = None  # a decoder in an utterance, or None between them

    def begin(self) -> None:
        if self._decoder is None:
            self._decoder = self._pool.take()
        else:
            self._decoder.end_utt()
        self._decoder.start_utt()

    def add(self, pcm: bytes) -> str | None:
        if self._decoder is None:
            return None
        self._decoder.process_raw(pcm, False, False)
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None and hyp.hypstr else None

    def end(self) -> tuple[str, float]:
        d, self._decoder = self._decoder, None
        if d is None:
            return "", 0.0
        try:
            d.end_utt()
            hyp = d.hyp()
            if hyp is None or not hyp.hypstr:
                return "", 0.0
            # after end_utt, prob is the utterance's posterior probability
            return hyp.hypstr, min(1.0, max(0.0, float(hyp.prob)))
        finally:
            self._pool.give(d)

    def close(self) -> None:
        d, self._decoder = self._decoder, None
        if d is not None:
            d.end_utt()
            self._pool.give(d)


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
        self.pool = DecoderPool(second_pass=second_pass)

    @property
    def capabilities(self) -> STTCapabilities:
        return STTCapabilities(streaming=True, partials=True, languages=("en",))

    async def load(self) -> None:
        # one warm decoder, and proof that the model loads
        self.pool.give(await self._workers.run(self.pool.take))
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
