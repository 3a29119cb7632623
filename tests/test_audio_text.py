"""The audio toolkit, text cutting and the VAD segmenter, without engines or sockets."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from voxgate.audio import (
    AudioFormat,
    AudioFormatError,
    Encoding,
    StreamResampler,
    chunks,
    downmix,
    float_to_pcm16,
    from_pcm16,
    pcm16_to_float,
    read_wav,
    resample,
    to_pcm16,
    wav_bytes,
)
from voxgate.core.text import SentenceBuffer, split_clauses
from voxgate.engines.base import VoiceActivity
from voxgate.engines.vad import (
    Segmenter,
    SegmenterSettings,
    UtteranceEnd,
    UtterancePause,
    UtteranceStart,
)


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


# Reference values from the ITU-T G.711 tables (as CPython's audioop computed them).
@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),
        (1, 0xFF, 0xD5),
        (-1, 0x7E, 0x55),
        (1000, 0xCE, 0xFA),
        (-1000, 0x4E, 0x7A),
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
    ],
)
def test_g711_encode_matches_reference(sample: int, ulaw: int, alaw: int) -> None:
    assert from_pcm16(pcm(sample), Encoding.MULAW) == bytes([ulaw])
    assert from_pcm16(pcm(sample), Encoding.ALAW) == bytes([alaw])


@pytest.mark.parametrize(
    ("byte", "ulaw", "alaw"),
    [
        (0x00, -32124, -5504),
        (0x7F, 0, -848),
        (0x80, 32124, 5504),
        (0xFF, 0, 848),
        (0x55, -716, -8),
        (0xD5, 716, 8),
    ],
)
def test_g711_decode_matches_reference(byte: int, ulaw: int, alaw: int) -> None:
    assert to_pcm16(bytes([byte]), Encoding.MULAW) == pcm(ulaw)
    assert to_pcm16(bytes([byte]), Encoding.ALAW) == pcm(alaw)


def test_g711_round_trip_error_is_small() -> None:
    tone = float_to_pcm16(0.5 * np.sin(np.linspace(0, 200 * np.pi, 8000)))
    for enc in (Encoding.MULAW, Encoding.ALAW):
        back = np.frombuffer(to_pcm16(from_pcm16(tone, enc), enc), "<i2").astype(float)
        orig = np.frombuffer(tone, "<i2").astype(float)
        assert np.max(np.abs(back - orig)) < 0.04 * 32768


def test_pcm16_float_and_torn_samples() -> None:
    assert pcm16_to_float(pcm(16384, -32768)).tolist() == [0.5, -1.0]
    assert float_to_pcm16(np.array([2.0, -2.0, 0.0])) == pcm(32767, -32767, 0)
    with pytest.raises(AudioFormatError, match="even number of bytes"):
        to_pcm16(b"\x01\x02\x03", Encoding.PCM16)


def test_stream_resampler_matches_whole_buffer_length() -> None:
    audio = float_to_pcm16(0.3 * np.sin(np.linspace(0, 2000 * np.pi, 24000)))
    r = StreamResampler(24000, 16000)
    out = b"".join(r.process(c) for c in chunks(audio, AudioFormat(sample_rate=24000), 20))
    out += r.flush()
    assert len(out) == len(resample(audio, 24000, 16000)) == 32000
    assert StreamResampler(16000, 16000).process(b"ab") == b"ab"


def test_chunks_durations_and_format_arithmetic() -> None:
    fmt = AudioFormat(Encoding.PCM16, 16000)
    pieces = list(chunks(b"\0" * 16000, fmt, 100))
    assert [len(p) for p in pieces] == [3200, 3200, 3200, 3200, 3200]
    assert fmt.duration_ms(3200) == 100.0
    assert AudioFormat(Encoding.MULAW, 8000).duration_ms(160) == 20.0


def test_wav_round_trip_and_errors() -> None:
    data = pcm(1, 2, 3, 4)
    wav = read_wav(wav_bytes(data, 22050, channels=2))
    assert (wav.pcm, wav.sample_rate, wav.channels) == (data, 22050, 2)
    assert wav.mono() == downmix(data, 2) == pcm(2, 4)
    with pytest.raises(AudioFormatError, match="not a PCM WAV"):
        read_wav(b"RIFF nonsense")


def test_first_clause_is_short_and_cut_at_a_natural_place() -> None:
    text = "Glue the sheet to the dark blue background and then set it on the table."
    pieces = split_clauses(text, first_max_words=6)
    assert pieces[0] == "Glue the sheet"
    assert " ".join(pieces) == text
    assert split_clauses("After the long rain, the river rose over the old bridge. It held.") == [
        "After the long rain,",
        "the river rose over the old bridge.",
        "It held.",
    ]
    assert split_clauses("Hello there.") == ["Hello there."]
    assert split_clauses("   ") == []


def test_sentence_buffer_hands_out_whole_sentences() -> None:
    buf = SentenceBuffer()
    buf.add("Hello Mr. Smith. How are")
    assert buf.take_sentences() == "Hello Mr. Smith."
    buf.add(" you? I am")
    assert buf.take_sentences() == "How are you?"
    assert buf.take_all() == "I am"
    assert len(buf) == 0


class ScriptedVad(VoiceActivity):
    """Scores frames by their first sample: non-zero is speech."""

    name = "scripted"
    sample_rate = 16000
    frame_samples = 160

    def score(self, frame: bytes) -> float:
        return 1.0 if frame[:2] != b"\0\0" else 0.0


def frames(pattern: str) -> bytes:
    return b"".join((b"\1\0" if ch == "s" else b"\0\0") * 160 for ch in pattern)


def test_segmenter_start_end_and_preroll() -> None:
    seg = Segmenter(
        ScriptedVad(),
        SegmenterSettings(min_speech_ms=30, min_silence_ms=50, preroll_ms=20),
    )
    out = seg.push(frames("....sss"))
    starts = [o for o in out if isinstance(o, UtteranceStart)]
    assert len(starts) == 1
    # 2 pre-roll frames + 3 speech frames, starting at frame 2 (20 ms)
    assert starts[0].timestamp == 0.02
    assert len(starts[0].audio) == 5 * 320
    out = seg.push(frames("ss....."))
    ends = [o for o in out if isinstance(o, UtteranceEnd)]
    assert ends == [UtteranceEnd(0.14)]
    assert not seg.in_speech
    assert seg.end() is None
    # a torn frame waits for the rest of its bytes
    assert seg.push(b"\1") == []


def test_segmenter_says_when_an_utterance_pauses_and_resumes() -> None:
    seg = Segmenter(
        ScriptedVad(),
        SegmenterSettings(min_speech_ms=20, min_silence_ms=60, pause_ms=30, preroll_ms=0),
    )
    kinds = [type(o).__name__ for o in seg.push(frames("ss...s......ss......"))]
    marks = [k for k in kinds if k != "UtteranceAudio"]
    assert marks == [
        "UtteranceStart",
        "UtterancePause",  # 3 silent frames (30 ms)
        "UtteranceResumed",
        "UtterancePause",
        "UtteranceEnd",  # 6 silent frames
        "UtteranceStart",
        "UtterancePause",
        "UtteranceEnd",
    ]
    # the pause comes after the frame that made it, the resumption before the speech
    assert kinds[kinds.index("UtterancePause") - 1] == "UtteranceAudio"
    i = kinds.index("UtteranceResumed")
    assert kinds[i + 1] == "UtteranceAudio"
    # a pause as long as the end is no pause
    late = Segmenter(
        ScriptedVad(), SegmenterSettings(min_speech_ms=20, min_silence_ms=60, pause_ms=60)
    )
    assert not any(isinstance(o, UtterancePause) for o in late.push(frames("ss......")))


def test_an_answers_first_clause_is_taken_before_its_sentence_ends() -> None:
    buf = SentenceBuffer()
    said = []
    for piece in ["The capital", " of France", " is Paris, a", " city of", " light."]:
        buf.add(piece)
        said.append(buf.take_clause(6))
    assert said == ["", "", "The capital of France is Paris,", "", ""]
    assert buf.take_all() == "a city of light."
    many = SentenceBuffer()
    many.add("One two three four five six seven")  # "seven" may still grow
    assert many.take_clause(6) == "One two three four five six"
    assert many.take_all() == "seven"
    money = SentenceBuffer()
    money.add("It costs 1,000 dollars")  # a comma inside a number ends no clause
    assert money.take_clause(6) == ""
