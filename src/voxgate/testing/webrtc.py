"""WebRTC client peers for the media server, built on stock aiortc (tests and benchmarks).

:class:`SfuPeer` is what an application's client does: one PeerConnection, tracks pushed
with an offer, remote tracks pulled by answering the server's offer. :class:`PcmTrack`
plays PCM at real-time pace (aiortc encodes it with its own Opus encoder);
:class:`Recorder` collects what a pulled track decodes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from voxgate.webrtc import peer_connection

RATE = 48000
FRAME = 960


def tone(freq: float, seconds: float, amplitude: int = 8000) -> bytes:
    """48 kHz mono PCM16 sine."""
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype(np.int16).tobytes()


class PcmTrack(MediaStreamTrack):
    """Plays 48 kHz mono PCM16 in 20 ms frames at real-time pace, then silence."""

    kind = "audio"

    def __init__(self, pcm: bytes = b"") -> None:
        super().__init__()
        self._pcm = bytearray(pcm)
        self._pts = 0
        self._start: float | None = None

    def play(self, pcm: bytes) -> None:
        self._pcm += pcm

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        chunk = bytes(self._pcm[: FRAME * 2]).ljust(FRAME * 2, b"\0")
        del self._pcm[: FRAME * 2]
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(chunk, np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class Recorder:
    """Reads a remote track until stopped; ``pcm`` is 48 kHz mono PCM16."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.pcm = bytearray()
        self.frames = 0
        self.first_at: float | None = None
        self._track = track
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self._track.recv()
                assert isinstance(frame, av.AudioFrame)
                arr = frame.to_ndarray()
                if self.first_at is None:
                    self.first_at = time.monotonic()
                mono = arr.reshape(-1, 2)[:, 0] if frame.layout.name == "stereo" else arr
                self.pcm += np.ascontiguousarray(mono, dtype=np.int16).tobytes()
                self.frames += 1

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class SfuPeer:
    """A client of the media server's HTTP API with one PeerConnection."""

    def __init__(self, http: aiohttp.ClientSession, base: str, *, secret: str | None = None):
        self.http = http
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.pc = peer_connection()
        self.session_id = ""
        self.received: dict[str, MediaStreamTrack] = {}
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        for t in self.pc.getTransceivers():
            if t.receiver.track is track and t.mid is not None:
                self.received[t.mid] = track

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers
        ) as r:
            return r.status, await r.json()

    async def open(self) -> str:
        status, body = await self.call("POST", "/sessions/new")
        assert status == 201, body
        self.session_id = body["sessionId"]
        return self.session_id

    async def publish(self, name: str, track: MediaStreamTrack) -> dict[str, Any]:
        tr: RTCRtpTransceiver = self.pc.addTransceiver(track, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, body = await self.call(
            "POST",
            f"/sessions/{self.session_id}/tracks/new",
            {
                "sessionDescription": {"type": "offer", "sdp": self.pc.localDescription.sdp},
                "tracks": [{"location": "local", "mid": tr.mid, "trackName": name}],
            },
        )
        assert status == 200, body
        sd = body["sessionDescription"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sd["sdp"], sd["type"]))
        return dict(body)

    async def pull(self, *tracks: tuple[str, str]) -> dict[str, Any]:
        """Pull ``(sessionId, trackName)`` pairs; answers the server's offer."""
        status, body = await self.call(
            "POST",
            f"/sessions/{self.session_id}/tracks/new",
            {
                "tracks": [
                    {"location": "remote", "sessionId": sid, "trackName": name}
                    for sid, name in tracks
                ]
            },
        )
        assert status == 200, body
        if body.get("requiresImmediateRenegotiation"):
            sd = body["sessionDescription"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sd["sdp"], sd["type"]))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            status, reneg = await self.call(
                "PUT",
                f"/sessions/{self.session_id}/renegotiate",
                {"sessionDescription": {"type": "answer", "sdp": self.pc.localDescription.sdp}},
            )
            assert status == 200, reneg
        return dict(body)

    async def close(self) -> None:
        await self.pc.close()
