"""The audio toolkit: formats, PCM16 ↔ float, G.711, resampling, WAV, chunking.

PCM16 little-endian mono is voxgate's internal format. Every function here is pure
(bytes in, bytes out) except :func:`read_wav`/:func:`write_wav`, which touch files.
Resampling uses ``soxr``; :class:`StreamResampler` keeps filter state across chunks so a
stream resampled piece by piece sounds like one resampled whole.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import soxr

from voxgate.errors import VoxgateError

Float32Array = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]


class AudioFormatError(VoxgateError):
    """Audio that is not in the format it claims (odd length, bad WAV, unknown encoding)."""

    code = "invalid_audio"


class Encoding(StrEnum):
    PCM16 = "pcm16"
    MULAW = "mulaw"
    ALAW = "alaw"


#: Bytes per sample of each encoding.
SAMPLE_BYTES = {Encoding.PCM16: 2, Encoding.MULAW: 1, Encoding.ALAW: 1}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding = Encoding.PCM16
    sample_rate: int = 16000
    channels: int = 1

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample on every channel."""
        return SAMPLE_BYTES[self.encoding] * self.channels

    def duration_ms(self, nbytes: int) -> float:
        return nbytes * 1000.0 / (self.frame_bytes * self.sample_rate)

    def bytes_for(self, ms: float) -> int:
        """Bytes in ``ms`` milliseconds, rounded down to whole frames."""
        return int(self.sample_rate * ms / 1000.0) * self.frame_bytes


def pcm16_to_float(pcm: bytes) -> Float32Array:
    """PCM16 little-endian bytes → float32 samples in [-1, 1)."""
    if len(pcm) % 2:
        raise AudioFormatError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: npt.NDArray[np.floating]) -> bytes:
    """Float samples (clipped to [-1, 1]) → PCM16 little-endian bytes."""
    scaled = np.clip(samples, -1.0, 1.0) * 32767.0
    return bytes(np.rint(scaled).astype("<i2").tobytes())


# --- G.711 -------------------------------------------------------------------------------
# Decoding tables are built once from the ITU-T G.711 definitions; encoding goes through a
# 64 Ki-entry table indexed by the PCM16 sample, so both directions are one numpy gather.


def _mulaw_decode_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


def _mulaw_encode_table() -> npt.NDArray[np.uint8]:
    # The classic 14-bit formulation (Sun's g711.c, as CPython's audioop had it).
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return (uval ^ mask).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(pcm >= 0, 0x80, 0)
    mag = np.minimum(np.where(pcm >= 0, pcm, -pcm - 1), 32767) >> 3
    exponent = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4)
    mantissa = np.where(exponent == 0, mag >> 1, mag >> exponent) & 0x0F
    table: npt.NDArray[np.uint8] = ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)
    return table


_MULAW_DECODE = _mulaw_decode_table()
_ALAW_DECODE = _alaw_decode_table()
_MULAW_ENCODE = _mulaw_encode_table()
_ALAW_ENCODE = _alaw_encode_table()


def to_pcm16(data: bytes, encoding: Encoding) -> bytes:
    """Audio in ``encoding`` → PCM16. Raises :class:`AudioFormatError` on a torn sample."""
    if encoding is Encoding.PCM16:
        if len(data) % 2:
            raise AudioFormatError(
                f"pcm16 audio must have an even number of bytes, got {len(data)}"
            )
        return data
    table = _MULAW_DECODE if encoding is Encoding.MULAW else _ALAW_DECODE
    return table[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def from_pcm16(pcm: bytes, encoding: Encoding) -> bytes:
    """PCM16 → audio in ``encoding``."""
    if encoding is Encoding.PCM16:
        return pcm
    table = _MULAW_ENCODE if encoding is Encoding.MULAW else _ALAW_ENCODE
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + 32768
    return table[samples].tobytes()


# --- resampling --------------------------------------------------------------------------


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Resample a whole PCM16 mono buffer."""
    if from_rate == to_rate or not pcm:
        return pcm
    out = soxr.resample(np.frombuffer(pcm, dtype="<i2"), from_rate, to_rate, quality="HQ")
    return bytes(np.asarray(out, dtype="<i2").tobytes())


class StreamResampler:
    """Resamples a PCM16 mono stream chunk by chunk, keeping filter state between chunks.

    Call :meth:`process` for each chunk and :meth:`flush` once at the end for the
    samples the filter still holds. A resampler with equal rates passes bytes through.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream = (
            None
            if from_rate == to_rate
            else soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16", quality="HQ")
        )

    def process(self, pcm: bytes, *, last: bool = False) -> bytes:
        if self._stream is None:
            return pcm
        out = self._stream.resample_chunk(np.frombuffer(pcm, dtype="<i2"), last=last)
        return bytes(np.asarray(out, dtype="<i2").tobytes())

    def flush(self) -> bytes:
        return self.process(b"", last=True)


def downmix(pcm: bytes, channels: int) -> bytes:
    """Interleaved PCM16 with ``channels`` channels → mono (the mean of the channels)."""
    if channels == 1:
        return pcm
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return bytes(frames.mean(axis=1).round().astype("<i2").tobytes())


# --- chunking and WAV --------------------------------------------------------------------


def chunks(data: bytes, fmt: AudioFormat, ms: float) -> Iterator[bytes]:
    """Split ``data`` into pieces of ``ms`` milliseconds (the last may be shorter)."""
    size = max(fmt.bytes_for(ms), fmt.frame_bytes)
    for i in range(0, len(data), size):
        yield data[i : i + size]


@dataclass(frozen=True)
class Wav:
    pcm: bytes
    sample_rate: int
    channels: int

    @property
    def duration_seconds(self) -> float:
        return len(self.pcm) / (2 * self.channels * self.sample_rate)

    def mono(self) -> bytes:
        return downmix(self.pcm, self.channels)


def read_wav(source: str | Path | bytes | BinaryIO) -> Wav:
    """Read a PCM16 WAV file (a path, the file's bytes or an open binary file)."""
    handle: BinaryIO | str | Path = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with wave.open(handle if not isinstance(handle, Path) else str(handle), "rb") as w:
            if w.getsampwidth() != 2:
                raise AudioFormatError(
                    f"only 16-bit PCM WAV is supported, got {8 * w.getsampwidth()}-bit"
                )
            return Wav(w.readframes(w.getnframes()), w.getframerate(), w.getnchannels())
    except (wave.Error, EOFError) as exc:
        raise AudioFormatError(f"not a PCM WAV file: {exc}") from exc


def wav_bytes(pcm: bytes, sample_rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def write_wav(path: str | Path, pcm: bytes, sample_rate: int, channels: int = 1) -> None:
    Path(path).write_bytes(wav_bytes(pcm, sample_rate, channels))
