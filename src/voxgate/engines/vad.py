"""Voice activity detectors (``webrtc``, ``silero``) and the utterance segmenter.

:class:`Segmenter` is pure: PCM16 in, utterance boundaries out. It keeps a pre-roll so
the decoder hears the onset that happened before the detector was sure, and ends an
utterance after ``min_silence_ms`` of frames scored below the threshold. After
``pause_ms`` of those it says the utterance may end here (:class:`UtterancePause`), so a
decoder that reads whole utterances can start on it while the rest of the silence comes
in; speech after that is an :class:`UtteranceResumed`.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.engines.base import EngineUnavailable, VoiceActivity

SILERO_HINT = "pip install onnxruntime && pip install --no-deps silero-vad"
WEBRTC_HINT = "pip install webrtcvad-wheels"


class WebRtcVad(VoiceActivity):
    """Google's WebRTC VAD (GMM): 30 ms frames, ``aggressiveness`` 0–3. Scores are 0 or 1."""

    name = "webrtc"

    def __init__(self, *, sample_rate: int = 16000, aggressiveness: int = 2) -> None:
        try:
            import webrtcvad
        except ImportError as exc:
            raise EngineUnavailable(f"VAD 'webrtc' needs webrtcvad: {WEBRTC_HINT}") from exc
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise EngineUnavailable(f"webrtc VAD does not take {sample_rate} Hz")
        self._vad = webrtcvad.Vad(aggressiveness)
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * 30 // 1000

    def score(self, frame: bytes) -> float:
        return 1.0 if self._vad.is_speech(frame, self.sample_rate) else 0.0


class SileroModel:
    """The silero VAD ONNX graph, loaded once and shared by every :class:`SileroVad`."""

    def __init__(self) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise EngineUnavailable(f"VAD 'silero' needs onnxruntime: {SILERO_HINT}") from exc
        # find the package without importing it: its __init__ imports torch
        spec = importlib.util.find_spec("silero_vad")
        where = spec.submodule_search_locations if spec is not None else None
        path = Path(next(iter(where)), "data", "silero_vad.onnx") if where else None
        if path is None or not path.is_file():
            raise EngineUnavailable(f"VAD 'silero' needs its model: {SILERO_HINT}")
        model = path.read_bytes()
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            model, sess_options=opts, providers=["CPUExecutionProvider"]
        )


class SileroVad(VoiceActivity):
    """Silero VAD v5 on onnxruntime (no torch): 512-sample frames at 16 kHz."""

    name = "silero"
    _CONTEXT = 64

    def __init__(self, model: SileroModel, *, sample_rate: int = 16000) -> None:
        if sample_rate != 16000:
            raise EngineUnavailable("silero VAD is used at 16000 Hz here")
        self._session = model.session
        self.sample_rate = sample_rate
        self.frame_samples = 512
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, self._CONTEXT), dtype=np.float32)

    def score(self, frame: bytes) -> float:
        x = np.frombuffer(frame, dtype="<i2").astype(np.float32).reshape(1, -1) / 32768.0
        inp = np.concatenate([self._context, x], axis=1)
        out, self._state = self._session.run(
            None, {"input": inp, "state": self._state, "sr": self._sr}
        )
        self._context = x[:, -self._CONTEXT :]
        return float(out[0][0])


def make_vad(name: str, *, sample_rate: int, shared: dict[str, Any]) -> VoiceActivity:
    """A VAD instance by name; ``shared`` caches models across instances."""
    if name == "webrtc":
        return WebRtcVad(sample_rate=sample_rate)
    if name == "silero":
        model = shared.get("silero")
        if model is None:
            model = shared["silero"] = SileroModel()
        return SileroVad(model, sample_rate=sample_rate)
    raise EngineUnavailable(f"unknown VAD {name!r} (known: webrtc, silero)")


# --- segmentation ------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmenterSettings:
    threshold: float = 0.5
    #: Speech must last this long before an utterance starts (filters clicks).
    min_speech_ms: int = 90
    #: An utterance ends after this much silence.
    min_silence_ms: int = 500
    #: After this much silence an utterance may be ending (:class:`UtterancePause`); 0 or
    #: at least ``min_silence_ms``: never. Silero (threshold 0.5) finds no pause of 96 ms
    #: or more inside a sentence of piper's voice (58 sentences and questions) nor of the
    #: two CMU ARCTIC speakers in ``tests/data``; between sentences 0.2 s apart, it pauses
    #: at every gap with any setting from 128 to 224 ms. Whisper decodes at a pause
    #: (:class:`~voxgate.engines.whisper.WhisperDecoder`): at 128 ms instead of 224 its
    #: finals came ~100 ms sooner after a finalize.
    pause_ms: int = 128
    #: Audio kept from before the start, handed to the decoder with the start.
    preroll_ms: int = 300
    #: An utterance ends here even if speech goes on (the decoder holds an utterance's
    #: audio: unbroken "speech", such as noise, must not grow it without bound).
    max_utterance_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class UtteranceStart:
    #: Seconds of stream audio before the first frame of the utterance (pre-roll included).
    timestamp: float
    #: The utterance's audio so far (pre-roll and the frames that confirmed speech).
    audio: bytes


@dataclass(frozen=True, slots=True)
class UtteranceAudio:
    audio: bytes


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    timestamp: float


@dataclass(frozen=True, slots=True)
class UtterancePause:
    """The utterance has been silent for ``pause_ms`` up to here: it may end (if the
    silence lasts) or go on (:class:`UtteranceResumed`)."""

    timestamp: float


@dataclass(frozen=True, slots=True)
class UtteranceResumed:
    """Speech again after an :class:`UtterancePause`: the utterance goes on."""

    timestamp: float


Segment = UtteranceStart | UtteranceAudio | UtterancePause | UtteranceResumed | UtteranceEnd


@dataclass
class Segmenter:
    """Splits a PCM16 stream into utterances with a :class:`VoiceActivity`.

    Feed any number of bytes with :meth:`push`; it returns what the new audio decided.
    Within an utterance every frame is passed on (:class:`UtteranceAudio`), including
    the trailing silence up to the end, so decoders hear natural pauses.
    """

    vad: VoiceActivity
    settings: SegmenterSettings = field(default_factory=SegmenterSettings)
    samples_seen: int = 0
    in_speech: bool = False
    _pending: bytes = b""
    _recent: deque[bytes] = field(default_factory=deque)
    _speech_run: int = 0
    _silence_run: int = 0
    _utterance_frames: int = 0
    _paused: bool = False

    def __post_init__(self) -> None:
        frame_ms = 1000 * self.vad.frame_samples / self.vad.sample_rate
        s = self.settings
        self._start_frames = max(1, round(s.min_speech_ms / frame_ms))
        self._end_frames = max(1, round(s.min_silence_ms / frame_ms))
        pause = round(s.pause_ms / frame_ms)
        self._pause_frames = pause if 0 < pause < self._end_frames else None
        self._preroll_frames = round(s.preroll_ms / frame_ms)
        self._max_frames = max(1, round(s.max_utterance_ms / frame_ms))

    def push(self, pcm: bytes) -> list[Segment]:
        out: list[Segment] = []
        data = self._pending + pcm
        size = self.vad.frame_bytes
        end = len(data) - len(data) % size
        self._pending = data[end:]
        for i in range(0, end, size):
            self._frame(data[i : i + size], out)
        return out

    def _frame(self, frame: bytes, out: list[Segment]) -> None:
        speech = self.vad.score(frame) >= self.settings.threshold
        self.samples_seen += self.vad.frame_samples
        if self.in_speech:
            if speech and self._paused:
                self._paused = False
                at = self.samples_seen - self.vad.frame_samples
                out.append(UtteranceResumed(self._seconds(at)))
            out.append(UtteranceAudio(frame))
            self._silence_run = 0 if speech else self._silence_run + 1
            self._utterance_frames += 1
            if self._silence_run >= self._end_frames or self._utterance_frames >= self._max_frames:
                self.in_speech = self._paused = False
                self._speech_run = 0
                out.append(UtteranceEnd(self._seconds(self.samples_seen)))
            elif self._silence_run == self._pause_frames:
                self._paused = True
                out.append(UtterancePause(self._seconds(self.samples_seen)))
            return
        self._recent.append(frame)
        while len(self._recent) > self._preroll_frames + self._start_frames:
            self._recent.popleft()
        self._speech_run = self._speech_run + 1 if speech else 0
        if self._speech_run >= self._start_frames:
            self.in_speech = True
            self._silence_run = 0
            self._utterance_frames = len(self._recent)
            audio = b"".join(self._recent)
            self._recent.clear()
            started = self.samples_seen - len(audio) // 2
            out.append(UtteranceStart(self._seconds(started), audio))

    def end(self) -> UtteranceEnd | None:
        """End the current utterance now (the stream is being finalized)."""
        self._pending = b""
        if not self.in_speech:
            return None
        self.in_speech = self._paused = False
        self._speech_run = self._silence_run = 0
        self.vad.reset()
        return UtteranceEnd(self._seconds(self.samples_seen))

    def _seconds(self, samples: int) -> float:
        return round(samples / self.vad.sample_rate, 3)
