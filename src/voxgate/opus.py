"""Opus at the WebRTC edge: 20 ms frames of 48 kHz stereo PCM16 to packets and back.

Both classes are synchronous and CPU-bound (about 0.1 ms a frame): callers on the event
loop run them in an executor when they handle more than a few frames at once.
"""

from __future__ import annotations

import av
import numpy as np

SAMPLE_RATE = 48000
CHANNELS = 2
FRAME_SAMPLES = 960
#: Bytes in one 20 ms frame of 48 kHz stereo PCM16.
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * 2


class OpusEncoder:
    """Encode whole 20 ms frames; one instance per track (it keeps codec state)."""

    def __init__(self, *, bitrate: int = 64000) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = bitrate
        codec.format = "s16"
        codec.layout = "stereo"
        codec.sample_rate = SAMPLE_RATE
        codec.options = {"application": "voip", "frame_duration": "20"}
        self._codec = codec
        self._pts = 0

    def encode(self, pcm: bytes) -> list[bytes]:
        """Encode ``pcm``, a whole number of 20 ms frames; returns one packet per frame
        (fewer at the very start, while the encoder fills its look-ahead)."""
        if len(pcm) % FRAME_BYTES:
            raise ValueError("encode takes whole 20 ms frames")
        out: list[bytes] = []
        samples = np.frombuffer(pcm, dtype=np.int16)
        for start in range(0, len(samples), FRAME_SAMPLES * CHANNELS):
            chunk = samples[start : start + FRAME_SAMPLES * CHANNELS].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._pts
            self._pts += FRAME_SAMPLES
            out.extend(bytes(p) for p in self._codec.encode(frame))
        return out


class OpusDecoder:
    """Decode packets to 48 kHz stereo PCM16; one instance per incoming stream."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "r")
        codec.format = "s16"
        codec.layout = "stereo"
        codec.sample_rate = SAMPLE_RATE
        self._codec = codec

    def decode(self, payload: bytes) -> bytes:
        """PCM for one packet (usually 20 ms); empty when the packet is unusable."""
        try:
            frames = self._codec.decode(av.Packet(payload))
        except av.error.FFmpegError:
            return b""
        parts = []
        for frame in frames:
            arr = frame.to_ndarray()
            # packed s16 gives one row of interleaved samples; planar gives one per channel
            parts.append(arr.T.tobytes() if arr.shape[0] == CHANNELS else arr.tobytes())
        return b"".join(parts)
