"""Turn detection: voice-activity scores in, turn boundaries out. Pure and clock-free.

Time is the position in the input audio stream (milliseconds of audio received), so the
detector behaves the same whether audio arrives in real time, faster, or from a test.

States (one transition table, :data:`_TRANSITIONS`)::

    SILENT ──speech for min_speech_ms──▶ SPEAKING ──silence for the window──▶ SILENT
                                                   (TurnStarted)      (TurnEnded)

``server_vad``: the window is ``silence_duration_ms``; ``TurnStarted.audio_start_ms``
includes ``prefix_padding_ms`` (the audio handed to recognition starts there), and
``TurnEnded.audio_end_ms`` is where the window closed, as OpenAI reports them.
``idle_timeout_ms``: after a response has finished playing, that much audio without
speech gives an :class:`IdleTimeout`.

``semantic_vad`` — the window depends on what has been said so far
(:func:`completeness`): words that read as a finished thought ("what time is it")
end the turn after a short pause, words that do not ("I want to go to the") wait
longer, and with no transcript yet a middle value applies. ``eagerness`` scales all
three: ``high`` ends turns sooner, ``low`` lets the speaker take their time (OpenAI's
maximum waits are 2 s, 4 s and 8 s for high, medium and low; ``auto`` is medium).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from voxgate.protocols.realtime.session import TurnDetection


@dataclass(frozen=True, slots=True)
class TurnStarted:
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class TurnEnded:
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    audio_start_ms: int
    audio_end_ms: int


TurnEvent = TurnStarted | TurnEnded | IdleTimeout


class State(enum.Enum):
    SILENT = "silent"
    SPEAKING = "speaking"


_TRANSITIONS: dict[tuple[State, str], State] = {
    (State.SILENT, "speech_confirmed"): State.SPEAKING,
    (State.SPEAKING, "silence_elapsed"): State.SILENT,
    (State.SPEAKING, "reset"): State.SILENT,
    (State.SILENT, "reset"): State.SILENT,
}

#: Silence windows (ms) of semantic_vad: (finished thought, unknown, unfinished).
SEMANTIC_WINDOWS: dict[str, tuple[int, int, int]] = {
    "high": (200, 500, 2000),
    "medium": (500, 800, 4000),
    "auto": (500, 800, 4000),
    "low": (1000, 1500, 8000),
}
#: Speech must last this long before a turn starts: filters clicks and breaths.
MIN_SPEECH_MS = 60

_DANGLING_WORDS = (
    "and or but so because the a an to of with for in on at my your our their his her its"
    " is are was were am be been will would could should can if then that which who when"
    " where um uh er like i we they he she than as from into about"
)
_DANGLING = frozenset(_DANGLING_WORDS.split())
_COMPLETE_WORDS = (
    "yes no yeah yep nope okay ok sure thanks thank hello hi hey bye goodbye stop please"
    " right correct exactly"
)
_COMPLETE_SHORT = frozenset(_COMPLETE_WORDS.split())


def completeness(text: str) -> bool | None:
    """Whether ``text`` reads as a finished thought; ``None`` when there is nothing to read."""
    words = re.findall(r"[\w']+", text.lower())
    if not words:
        return None
    if re.search(r"[.!?]\s*$", text):
        return True
    if words[-1] in _DANGLING:
        return False
    if len(words) == 1:
        return words[0] in _COMPLETE_SHORT
    return True


class TurnDetector:
    def __init__(self, config: TurnDetection, *, frame_ms: float) -> None:
        self.frame_ms = frame_ms
        self.config = config
        self.state = State.SILENT
        self.position_ms = 0.0
        self._speech_run_ms = 0.0
        self._speech_start_ms = 0.0
        self._silence_ms = 0.0
        self._transcript = ""
        self._idle_from: float | None = None

    def reconfigure(self, config: TurnDetection) -> None:
        self.config = config

    def _go(self, action: str) -> None:
        self.state = _TRANSITIONS[(self.state, action)]

    def set_transcript(self, text: str) -> None:
        """The words recognised so far in the current turn (``semantic_vad`` reads them)."""
        self._transcript = text

    def silence_window_ms(self) -> int:
        c = self.config
        if c.type != "semantic_vad":
            return c.silence_duration_ms
        finished, unknown, unfinished = SEMANTIC_WINDOWS[c.eagerness]
        verdict = completeness(self._transcript)
        return unknown if verdict is None else finished if verdict else unfinished

    def arm_idle(self, after_ms: float = 0.0) -> None:
        """Start the idle timer ``after_ms`` of audio from now (when the answer has played)."""
        if self.config.idle_timeout_ms is not None and self.config.type == "server_vad":
            self._idle_from = self.position_ms + after_ms

    def disarm_idle(self) -> None:
        self._idle_from = None

    def reset(self) -> None:
        """Forget any speech in progress (the buffer was cleared or committed by hand)."""
        self._go("reset")
        self._speech_run_ms = self._silence_ms = 0.0
        self._transcript = ""

    def frame(self, score: float) -> list[TurnEvent]:
        """Advance by one frame scored ``score``; what the frame decided."""
        out: list[TurnEvent] = []
        c = self.config
        speech = score >= c.threshold
        start_of_frame = self.position_ms
        self.position_ms += self.frame_ms
        if self.state is State.SILENT:
            if speech:
                if self._speech_run_ms == 0.0:
                    self._speech_start_ms = start_of_frame
                self._speech_run_ms += self.frame_ms
                if self._speech_run_ms >= MIN_SPEECH_MS:
                    self._go("speech_confirmed")
                    self._silence_ms = 0.0
                    self._idle_from = None
                    start = max(0.0, self._speech_start_ms - c.prefix_padding_ms)
                    out.append(TurnStarted(round(start)))
            else:
                self._speech_run_ms = 0.0
                idle = self._idle_from
                limit = c.idle_timeout_ms
                if idle is not None and limit is not None and self.position_ms - idle >= limit:
                    out.append(IdleTimeout(round(idle), round(self.position_ms)))
                    self._idle_from = None
            return out
        self._silence_ms = 0.0 if speech else self._silence_ms + self.frame_ms
        if self._silence_ms >= self.silence_window_ms():
            self._go("silence_elapsed")
            self._speech_run_ms = 0.0
            self._transcript = ""
            out.append(TurnEnded(round(self.position_ms)))
        return out
