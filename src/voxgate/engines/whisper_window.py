"""Whisper decodes on a window cut to the audio instead of faster-whisper's 30 s.

faster-whisper pads every decode to 30 s of log-mel frames (3,000), and its
``transcribe`` pads each window back to 3,000 whatever ``chunk_length`` says, so the
encoder always pays for 30 s. CTranslate2's whisper encoder takes fewer frames (its
positional table is sliced), so :class:`WhisperWindow` computes the features itself and
encodes only the audio plus :data:`TAIL_SECONDS` of digital silence. The silence is not
optional: with a tail under ~4 s whisper, which never saw speech reach the end of its
window in training, repeats the utterance until the output cap (measured on the
benchmark's 30 sentences decoded in one process: 36 % WER with a 3 s tail, 75 % with
1 s, 15–16 % with 6, 8 or 10 s, 15 % with the full window; 8 s is the default). As a
second guard the output is capped in proportion to the audio
(:data:`TOKENS_PER_SECOND`), and a decode that still reads as a loop (it fills the
cap, or its text compresses like a repetition) is done again the old way.

Audio longer than ``30 s - tail`` is cut at its quietest moments into pieces that fit.
Everything here is synchronous and runs in an engine worker thread.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
#: Seconds of silence decoded after the audio (see the module docstring).
TAIL_SECONDS = 8.0
#: The encoder's longest input: 30 s of 10 ms frames.
MAX_FRAMES = 3000
#: Output tokens allowed per second of audio, beyond :data:`BASE_TOKENS`. English speech
#: is ~4 tokens a second with punctuation; a loop runs into the cap within ~2× the text.
TOKENS_PER_SECOND = 8.0
BASE_TOKENS = 16
#: faster-whisper's own thresholds: a repetition compresses better than 2.4 : 1; a
#: window whisper believes silent (no-speech probability over 0.6) whose text it is
#: unsure of (mean log-probability under -1) is silence, whatever text it made up.
COMPRESSION_RATIO = 2.4
NO_SPEECH_PROB = 0.6
LOG_PROB = -1.0


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    avg_logprob: float
    #: The decode ran into its output cap or repeats itself: not to be trusted.
    looped: bool


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def split_at_pauses(samples: np.ndarray, max_seconds: float) -> list[np.ndarray]:
    """``samples`` in pieces of at most ``max_seconds``, each cut at the quietest 100 ms
    of the second half of the piece (between two sentences, in speech): the latest of
    those within 3 dB of the quietest, so pieces stay long."""
    limit = int(max_seconds * SAMPLE_RATE)
    frame = SAMPLE_RATE // 10
    hop = SAMPLE_RATE // 100
    pieces = []
    start = 0
    while len(samples) - start > limit:
        lo, hi = start + limit // 2, start + limit - frame
        window = samples[lo : hi + frame].astype(np.float64) ** 2
        energy = np.convolve(window, np.ones(frame), mode="valid")[::hop]
        quietest = np.flatnonzero(energy <= 2 * energy.min() + 1e-9)[-1]
        cut = lo + int(quietest) * hop + frame // 2
        pieces.append(samples[start:cut])
        start = cut
    pieces.append(samples[start:])
    return pieces


class WhisperWindow:
    """A loaded ``faster_whisper.WhisperModel``, decoded on windows cut to the audio.

    Thread-safe: CTranslate2 serializes or replicates concurrent calls, and nothing
    here changes the model (``transcribe(chunk_length=…)`` would: it is never passed).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._tokenizers: dict[str | None, Any] = {}
        self._suppress: tuple[int, ...] | None = None

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def transcribe(
        self, samples: np.ndarray, *, language: str | None, beam_size: int, window: str
    ) -> tuple[str, float]:
        """The text of ``samples`` (float32 at 16 kHz) and a confidence in [0, 1].

        ``window="short"`` decodes the audio plus the silence tail, in pieces when it is
        long, and a piece that loops the old way; ``"full"`` is faster-whisper's own path.
        """
        if window == "full":
            return self.transcribe_full(samples, language=language, beam_size=beam_size)
        texts, logprobs = [], []
        for piece in split_at_pauses(samples, MAX_FRAMES / 100 - TAIL_SECONDS):
            decoded = self.decode(piece, language=language, beam_size=beam_size)
            if decoded.looped:
                text, confidence = self.transcribe_full(
                    piece, language=language, beam_size=beam_size
                )
                decoded = Decoded(text, float(np.log(max(confidence, 1e-9))), False)
            if decoded.text:
                texts.append(decoded.text)
                logprobs.append(decoded.avg_logprob)
        confidence = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return " ".join(texts), confidence

    def transcribe_full(
        self, samples: np.ndarray, *, language: str | None, beam_size: int
    ) -> tuple[str, float]:
        """faster-whisper's ``transcribe``: 30 s windows, temperature fallback."""
        segments, _info = self.model.transcribe(
            samples,
            language=language if language in self._languages() else None,
            beam_size=beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        texts, logprobs = [], []
        for seg in segments:
            texts.append(seg.text.strip())
            logprobs.append(seg.avg_logprob)
        confidence = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return " ".join(t for t in texts if t), confidence

    def decode(
        self,
        samples: np.ndarray,
        *,
        language: str | None,
        beam_size: int,
        tail_seconds: float = TAIL_SECONDS,
    ) -> Decoded:
        """One decode of at most ``30 s - tail_seconds`` of audio (longer is cut off)."""
        import ctranslate2  # type: ignore[import-untyped]

        tail = np.zeros(int(tail_seconds * SAMPLE_RATE), np.float32)
        features = self.model.feature_extractor(np.concatenate([samples, tail]))
        frames = min(features.shape[-1], MAX_FRAMES)
        frames -= frames % 2  # the encoder's first convolution has a stride of 2
        storage = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(features[None, :, :frames], dtype=np.float32)
        )
        encoded = self.model.model.encode(storage)
        tokenizer = self._tokenizer(language, encoded)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        seconds = len(samples) / SAMPLE_RATE
        cap = min(BASE_TOKENS + int(TOKENS_PER_SECOND * seconds), 448 - len(prompt))
        result = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=beam_size,
            max_length=len(prompt) + cap,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed(tokenizer),
        )[0]
        tokens = result.sequences_ids[0]
        # the score is the log-probability over length ** length_penalty (1)
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOG_PROB:
            return Decoded("", avg_logprob, False)
        text = tokenizer.decode(tokens).strip()
        looped = len(tokens) >= cap or compression_ratio(text) > COMPRESSION_RATIO
        return Decoded(text, avg_logprob, looped)

    def _languages(self) -> tuple[str, ...]:
        return tuple(self.model.supported_languages)

    def _tokenizer(self, language: str | None, encoded: Any) -> Any:
        from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped]

        if not self.multilingual:
            language = "en"
        elif language not in self._languages():
            # the most likely language token of the first (only) item, "<|en|>" → "en"
            language = self.model.model.detect_language(encoded)[0][0][0][2:-2]
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            tokenizer = Tokenizer(
                self.model.hf_tokenizer, self.multilingual, task="transcribe", language=language
            )
            self._tokenizers[language] = tokenizer
        return tokenizer

    def _suppressed(self, tokenizer: Any) -> list[int]:
        # faster-whisper's default (suppress_tokens=[-1]): symbols that are not speech,
        # and the task tokens; the same for every language of one model
        if self._suppress is None:
            from faster_whisper.transcribe import (  # type: ignore[import-untyped]
                get_suppressed_tokens,
            )

            self._suppress = tuple(get_suppressed_tokens(tokenizer, [-1]) or ())
        return list(self._suppress)
