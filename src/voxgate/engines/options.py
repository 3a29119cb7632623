"""The engine types voxgate knows and the options each takes in ``[speech.engines.NAME]``.

Option kinds: ``str``, ``int`` (>= 1), ``float``, ``dict`` (a table of strings), or a
tuple of allowed strings. Every TTS engine type takes ``voice_aliases`` (voice names of
other catalogues → its own voices; see :mod:`voxgate.engines.voices`). Engines without
an entry run with their defaults under their type's name (``piper``, ``pocketsphinx``,
``whisper``, ``elevenlabs``, ``cartesia``, ``deepgram``).
"""

from __future__ import annotations

from typing import Any

from voxgate.settings import SpeechSettings

_VAD = ("webrtc", "silero")
#: whisper's ``window``: the audio plus a silence tail, or faster-whisper's 30 s.
WHISPER_WINDOWS = ("short", "full")
#: whisper's ``partials``: tiny.en re-decoding the utterance so far, pocketsphinx, none.
WHISPER_PARTIALS = ("whisper-tiny", "pocketsphinx", "none")
_SEGMENTER: dict[str, Any] = {"vad": _VAD, "min_silence_ms": int, "threshold": float}
_CLOUD: dict[str, Any] = {
    "provider": str,
    "model_id": str,
    "voice_id": str,
    "voice_aliases": dict,
}

ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    "piper": {
        "voices": dict,
        "default_voice": str,
        "first_clause_words": int,
        "first_clause_words_busy": int,
        "noise_scale": float,
        "noise_w_scale": float,
        "voice_aliases": dict,
    },
    "pocketsphinx": {**_SEGMENTER, "second_pass": ("off", "on")},
    "whisper": {
        **_SEGMENTER,
        "model": str,
        "compute_type": str,
        "beam_size": int,
        "window": WHISPER_WINDOWS,
        "partials": WHISPER_PARTIALS,
        "pause_ms": int,
    },
    "elevenlabs": dict(_CLOUD),
    "cartesia": {**_CLOUD, "version": str},
    "deepgram": {**_CLOUD, "stt_model_id": str},
}

TTS_TYPES = frozenset({"piper", "elevenlabs", "cartesia", "deepgram"})
STT_TYPES = frozenset({"pocketsphinx", "whisper", "deepgram"})


def engine_types(speech: SpeechSettings) -> dict[str, str]:
    """Every engine name → its type: the built-in names plus the configured engines."""
    names = {t: t for t in ENGINE_OPTIONS}
    names.update({e.name: e.type for e in speech.engines.values()})
    return names


def speech_engine_names(speech: SpeechSettings) -> tuple[set[str], set[str]]:
    """(TTS engine names, STT engine names)."""
    types = engine_types(speech)
    return (
        {n for n, t in types.items() if t in TTS_TYPES},
        {n for n, t in types.items() if t in STT_TYPES},
    )
