"""``voxgate bench realtime``: the voice agent (local engines, ``voxgate/echo``) turn latency.

Starts voxgate as its own process and, from this process, holds realtime sessions over
``/v1/realtime`` that stream audio in real time (20 ms chunks, paced) like a microphone:
for each spoken turn (Harvard sentences synthesized by piper, 24 kHz) followed by silence,
it measures from the end of the speech in the input stream to the first
``response.output_audio.delta``, split into

- the *silence window*: the audio the turn detector waited after the speech ended
  (``speech_stopped.audio_end_ms`` − the position of the last speech sample), and
- the *processing*: from the moment the client sent the audio at ``audio_end_ms`` to the
  first audio delta (recognition final, model, first clause synthesized).

One session; then, in the same run against the same server and clips, the same turns
over WebRTC (48 kHz, Opus, aiortc as the client; the speech stream is the microphone
track, counted in 20 ms frames from its first packet):

- *WebRTC call*: ``POST /v1/realtime/calls`` (OpenAI's WebRTC form: offer with a mic
  track and the ``oai-events`` data channel, ``application/sdp``); ``speech_stopped`` comes
  on the data channel; the first answer audio is the first frame received on the call's
  track (decoded by aiortc) with an RMS above ``LOUD`` after ``speech_stopped``;
- *SFU agent*: ``POST /v1/apps/default/agents/new`` listening to a caller's published
  mic track; ``speech_stopped`` from the agent's SSE ``…/agents/{id}/events``; the first
  answer audio is the first loud frame on the agent's track as a second peer pulls it.

Then 4 concurrent sessions. Barge-in: while the agent speaks a long answer,
the client starts a sentence; the figure is from the wall time of the first speech sample
sent to the last ``response.output_audio.delta`` received before ``response.done``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import fractions
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import orjson
import pybase64
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from voxgate.audio import resample
from voxgate.bench.relay import _config, add_baseline_option, baseline_proc, pct, voxgate_proc
from voxgate.bench.sentences import HARVARD
from voxgate.opus import OpusDecoder
from voxgate.speech_client import speak
from voxgate.testing.webrtc import SfuPeer
from voxgate.webrtc import close_peer, peer_connection, tap_receiver

RATE = 24000
CHUNK_MS = 20
CHUNK = RATE * 2 * CHUNK_MS // 1000
LONG_ANSWER = " ".join(HARVARD[:6])
RTC_RATE = 48000
RTC_FRAME = RTC_RATE * CHUNK_MS // 1000  # samples per 20 ms frame
#: RMS of a received 20 ms frame above which it counts as the answer's voice.
LOUD = 200.0
#: A received frame whose peak is at most this is silence (Opus noise around zero).
SILENT_PEAK = 8


def loud(pcm: bytes, *, channels: int = 1) -> bool:
    """Whether PCM16 audio (its first channel) has an RMS above :data:`LOUD`."""
    x = np.frombuffer(pcm, np.int16)[::channels].astype(np.float64)
    return bool(len(x)) and float(np.sqrt(np.mean(x * x))) > LOUD


TURN_DETECTION = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}


def speech_bounds_ms(pcm: bytes, level: int = 600) -> tuple[float, float]:
    """Where the speech in a clip starts and ends (first/last sample above ``level``)."""
    x = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.flatnonzero(x > level)
    if not len(loud):
        return 0.0, 0.0
    return 1000 * loud[0] / RATE, 1000 * (loud[-1] + 1) / RATE


@dataclass
class Session:
    ws: aiohttp.ClientWebSocketResponse
    #: Wall time at which the audio at each position (ms, per chunk) was sent.
    sent_at: list[float] = field(default_factory=list)
    events: asyncio.Queue[tuple[float, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    #: The session object of the last ``session.updated`` :func:`open_session` awaited.
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def position_ms(self) -> float:
        return len(self.sent_at) * CHUNK_MS

    def sent_time(self, position_ms: float) -> float:
        i = min(len(self.sent_at) - 1, max(0, int(position_ms // CHUNK_MS) - 1))
        return self.sent_at[i]

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_str(orjson.dumps({"type": kind, **fields}).decode())

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.events.put_nowait((time.perf_counter(), orjson.loads(msg.data)))

    async def stream(self, pcm: bytes, stop: asyncio.Event | None = None) -> None:
        """Send ``pcm`` paced in real time (then silence while ``stop`` is not set)."""
        start = time.perf_counter()
        i = 0
        while i < len(pcm) or (stop is not None and not stop.is_set()):
            piece = pcm[i : i + CHUNK] if i < len(pcm) else bytes(CHUNK)
            piece = piece + bytes(CHUNK - len(piece))
            due = start + (i // CHUNK) * CHUNK_MS / 1000
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sent_at.append(time.perf_counter())
            await self.send("input_audio_buffer.append", audio=pybase64.b64encode(piece).decode())
            i += CHUNK

    async def until(self, kind: str) -> tuple[float, dict[str, Any]]:
        while True:
            t, ev = await self.events.get()
            if ev["type"] == kind:
                return t, ev


async def open_session(
    http: aiohttp.ClientSession,
    base: str,
    *,
    model: str = "voxgate/echo",
    session: dict[str, Any] | None = None,
) -> tuple[Session, asyncio.Task[None]]:
    """A session of ``model`` updated with ``session`` (default: server VAD, 500 ms);
    ``Session.config`` is the session object in force. The caller closes the socket and
    awaits the reader task."""
    ws = await http.ws_connect(f"{base}/v1/realtime?model={model}", max_msg_size=0)
    s = Session(ws)
    reader = asyncio.create_task(s.read())
    await s.until("session.created")
    update = session or {"audio": {"input": {"turn_detection": TURN_DETECTION}}}
    await s.send("session.update", session=update)
    _t, updated = await s.until("session.updated")
    s.config = updated["session"]
    return s, reader


async def turns(
    http: aiohttp.ClientSession,
    base: str,
    clips: list[bytes],
    any_delta: list[tuple[float, float]] | None = None,
) -> list[tuple[float, float]]:
    """(silence window, processing to the first audible delta) in seconds for each clip,
    one session; into ``any_delta`` the same to the first delta of any level."""
    s, reader = await open_session(http, base)
    out = []
    try:
        await s.stream(bytes(CHUNK * 25))  # half a second of room tone first
        for clip in clips:
            offset = s.position_ms
            _start, end = speech_bounds_ms(clip)
            speech_end = offset + end
            done = asyncio.Event()
            sender = asyncio.create_task(s.stream(clip, done))
            _t, stopped = await s.until("input_audio_buffer.speech_stopped")
            first, delta = await s.until("response.output_audio.delta")
            audible = first
            while not loud(pybase64.b64decode(delta["delta"])):
                audible, delta = await s.until("response.output_audio.delta")
            await s.until("response.done")
            done.set()
            await sender
            audio_end = stopped["audio_end_ms"]
            sent = s.sent_time(audio_end)
            out.append(((audio_end - speech_end) / 1000, audible - sent))
            if any_delta is not None:
                any_delta.append(((audio_end - speech_end) / 1000, first - sent))
    finally:
        await s.ws.close()
        await reader
    return out


async def barge_in(
    http: aiohttp.ClientSession, base: str, clips: list[bytes]
) -> tuple[list[float], int]:
    """Seconds from speech start to the last audio delta; and answers that ended first."""
    s, reader = await open_session(http, base)
    out, missed = [], 0
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": LONG_ANSWER}],
    }
    try:
        silence = asyncio.Event()
        background = asyncio.create_task(s.stream(b"", silence))
        for clip in clips:
            await s.send("conversation.item.create", item=item)
            await s.send("response.create")
            await s.until("response.output_audio.delta")
            silence.set()
            await background
            start, _end = speech_bounds_ms(clip)
            first_chunk = len(s.sent_at)
            silence = asyncio.Event()
            talker = asyncio.create_task(s.stream(clip, silence))
            last = 0.0
            while True:
                t, ev = await s.events.get()
                if ev["type"] == "response.output_audio.delta":
                    last = t
                elif ev["type"] == "response.done":
                    status = ev["response"]["status"]
                    break
            # the user's turn ends and the agent answers it: let that answer finish
            await s.until("response.done")
            silence.set()
            await talker
            silence = asyncio.Event()
            background = asyncio.create_task(s.stream(b"", silence))
            if status != "cancelled":
                missed += 1
                continue
            spoke_at = s.sent_at[first_chunk + int(start // CHUNK_MS)]
            out.append(last - spoke_at)
        silence.set()
        await background
    finally:
        await s.ws.close()
        await reader
    return out, missed


# --------------------------------------------------------------------------- WebRTC rows


class MicTrack(MediaStreamTrack):
    """A microphone: 48 kHz PCM16 in 20 ms frames at real-time pace, silence when nothing
    is queued. No frame (so no packet) leaves before ``live`` is set, so the server's audio
    position 0 is this track's first frame; ``sent_at`` is the wall time of each frame."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.live = asyncio.Event()
        self.sent_at: list[float] = []
        self._pcm = bytearray()
        self._start: float | None = None

    @property
    def pending(self) -> bool:
        return bool(self._pcm)

    def play(self, pcm: bytes) -> float:
        """Queue ``pcm``; the stream position (ms) at which it starts."""
        frame = RTC_FRAME * 2
        at = (len(self.sent_at) + len(self._pcm) // frame) * CHUNK_MS
        self._pcm += pcm + bytes(-len(pcm) % frame)
        return float(at)

    def sent_time(self, position_ms: float) -> float:
        i = min(len(self.sent_at) - 1, max(0, int(position_ms // CHUNK_MS) - 1))
        return self.sent_at[i]

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self.live.wait()
        if self._start is None:
            self._start = time.perf_counter()
        n = len(self.sent_at)
        await asyncio.sleep(max(0.0, self._start + n * CHUNK_MS / 1000 - time.perf_counter()))
        chunk = bytes(self._pcm[: RTC_FRAME * 2]).ljust(RTC_FRAME * 2, b"\0")
        del self._pcm[: RTC_FRAME * 2]
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(chunk, np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RTC_RATE
        frame.pts = n * RTC_FRAME
        frame.time_base = fractions.Fraction(1, RTC_RATE)
        self.sent_at.append(time.perf_counter())
        return frame


class Ears:
    """Hears a received track at the network edge: each Opus packet of its receiver,
    decoded here as it arrives (aiortc's own receive path holds 4 packets — 80 ms — in
    its jitter buffer first, a delay of this client, not of the server), and the arrival
    time of each loud one (RMS above ``LOUD``) and of each that is not silence (the
    server sends digital silence between answers; an answer's first frames are quiet)."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.loud: list[float] = []
        self.sound: list[float] = []
        self._decoder = OpusDecoder()
        tap_receiver(receiver, self._packet)

    def _packet(self, payload: bytes, timestamp: int) -> None:
        pcm = self._decoder.decode(payload)
        now = time.perf_counter()
        if loud(pcm, channels=2):
            self.loud.append(now)
        if pcm and int(np.abs(np.frombuffer(pcm, np.int16)).max()) > SILENT_PEAK:
            self.sound.append(now)

    async def first_loud(self, after: float, within: float = 30) -> float:
        """The arrival time of the first loud frame after the wall time ``after``."""
        return await self._first(self.loud, after, within)

    async def first_sound(self, after: float, within: float = 30) -> float:
        """The arrival time of the first frame that is not silence after ``after``."""
        return await self._first(self.sound, after, within)

    @staticmethod
    async def _first(times: list[float], after: float, within: float) -> float:
        async with asyncio.timeout(within):
            while True:
                i = bisect.bisect_right(times, after)
                if i < len(times):
                    return times[i]
                await asyncio.sleep(0.005)

    async def quiet(self, seconds: float = 1.0, within: float = 30) -> None:
        """Wait until no loud frame came for ``seconds`` (the answer has played out)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.loud and time.perf_counter() - self.loud[-1] < seconds:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)


Events = asyncio.Queue[tuple[float, dict[str, Any]]]


async def until(events: Events, kind: str, within: float = 60) -> tuple[float, dict[str, Any]]:
    async with asyncio.timeout(within):
        while True:
            t, ev = await events.get()
            if ev["type"] == kind:
                return t, ev


async def rtc_turns(
    mic: MicTrack, ears: Ears, events: Events, clips: list[tuple[bytes, bytes]]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(silence window, processing) for each (24 kHz, 48 kHz) clip spoken into ``mic``:
    to the answer's first frame, and to its first audible one."""
    out, audible = [], []
    mic.live.set()
    mic.play(bytes(2 * RTC_RATE // 2))  # half a second of room tone first
    for clip24, clip48 in clips:
        _start, end = speech_bounds_ms(clip24)
        speech_end = mic.play(clip48) + end
        stopped_at, stopped = await until(events, "input_audio_buffer.speech_stopped")
        first = await ears.first_sound(stopped_at)
        first_loud = await ears.first_loud(stopped_at)
        await until(events, "response.done")
        while mic.pending:  # noqa: ASYNC110 - the clip plays out
            await asyncio.sleep(0.05)
        await ears.quiet()
        audio_end = stopped["audio_end_ms"]
        window, sent = (audio_end - speech_end) / 1000, mic.sent_time(audio_end)
        out.append((window, first - sent))
        audible.append((window, first_loud - sent))
    return out, audible


async def call_turns(
    http: aiohttp.ClientSession, base: str, clips: list[tuple[bytes, bytes]]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The turns over ``POST /v1/realtime/calls`` (the raw ``application/sdp`` form)."""
    pc = peer_connection()
    mic = MicTrack()
    pc.addTrack(mic)
    channel = pc.createDataChannel("oai-events")
    events: Events = asyncio.Queue()

    def on_message(data: str | bytes) -> None:
        events.put_nowait((time.perf_counter(), orjson.loads(data)))

    channel.on("message", on_message)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        sdp = pc.localDescription.sdp
        async with http.post(f"{base}/v1/realtime/calls", data=sdp, headers=headers) as r:
            answer = await r.text()
            if r.status != 201:
                raise RuntimeError(f"POST /v1/realtime/calls: {r.status} {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        [transceiver] = [t for t in pc.getTransceivers() if t.kind == "audio"]
        ears = Ears(transceiver.receiver)
        await until(events, "session.created", 30)
        update = {"audio": {"input": {"turn_detection": TURN_DETECTION}}}
        channel.send(orjson.dumps({"type": "session.update", "session": update}).decode())
        await until(events, "session.updated", 30)
        return await rtc_turns(mic, ears, events, clips)
    finally:
        await close_peer(pc)


async def sse(http: aiohttp.ClientSession, url: str, events: Events) -> None:
    """An agent's Server-Sent Events (``data:`` lines of Realtime events) into ``events``."""
    async with http.get(url) as resp:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data = orjson.loads(line[6:])
                if isinstance(data, dict) and "type" in data:
                    events.put_nowait((time.perf_counter(), data))


async def sfu_turns(
    http: aiohttp.ClientSession, base: str, clips: list[tuple[bytes, bytes]]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The turns to an agent in an SFU call: a caller publishes the mic, the agent
    listens to it, a listener pulls the agent's track."""
    app = f"{base}/v1/apps/default"
    caller, listener = SfuPeer(http, app), SfuPeer(http, app)
    mic = MicTrack()
    watcher: asyncio.Task[None] | None = None
    agent_id = ""
    try:
        await caller.open()
        await caller.publish("mic", mic)
        status, body = await caller.call(
            "POST",
            "/agents/new",
            {
                "listen": [{"sessionId": caller.session_id, "trackName": "mic"}],
                "session": {"audio": {"input": {"turn_detection": TURN_DETECTION}}},
            },
        )
        if status != 201:
            raise RuntimeError(f"POST /agents/new: {status} {body}")
        agent_id = body["agentId"]
        events: Events = asyncio.Queue()
        watcher = asyncio.create_task(sse(http, f"{app}/agents/{agent_id}/events", events))
        await listener.open()
        pulled = await listener.pull((body["sessionId"], body["trackName"]))
        mid = pulled["tracks"][0]["mid"]
        [transceiver] = [t for t in listener.pc.getTransceivers() if t.mid == mid]
        ears = Ears(transceiver.receiver)
        return await rtc_turns(mic, ears, events, clips)
    finally:
        if agent_id:
            await caller.call("POST", f"/agents/{agent_id}/close")
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await listener.close()
        await caller.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:5.0f} ms"


def summary(label: str, rows: list[tuple[float, float]]) -> None:
    windows = [w for w, _ in rows]
    proc = [p for _, p in rows]
    total = [w + p for w, p in rows]
    print(
        f"{label:<11} end of speech → first audio p50 {ms(statistics.median(total))}"
        f" p95 {ms(pct(total, 0.95))} = silence window p50 {ms(statistics.median(windows))}"
        f" + processing p50 {ms(statistics.median(proc))} p95 {ms(pct(proc, 0.95))}"
        f"  (n={len(rows)})"
    )


async def rows(
    http: aiohttp.ClientSession, port: int, clips: list[bytes], *, tag: str = ""
) -> None:
    """The one-session rows of the server on ``port``: WebSocket, WebRTC call, SFU agent."""
    base, http_base = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    any_delta: list[tuple[float, float]] = []
    summary(f"{tag}1 session", await turns(http, base, clips, any_delta))
    summary(f"{tag}  (any)", any_delta)
    pairs = [(c, resample(c, RATE, RTC_RATE)) for c in clips]
    for label, row in (("WebRTC call", call_turns), ("SFU agent", sfu_turns)):
        try:
            first, audible = await row(http, http_base, pairs)
            summary(tag + label, first)
            summary(f"{tag}  (audible)", audible)
        except Exception as e:
            print(f"{tag + label:<11} failed: {type(e).__name__}: {e}")


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-realtime-"))
    cfg = tmp / "voxgate.toml"
    speech = '\n[speech]\npreload = ["piper", "pocketsphinx"]\n'
    cfg.write_text(_config(9, tmp / "usage.db") + speech)
    gateway = voxgate_proc(cfg)
    baseline = None
    if args.baseline is not None:  # the same bench against another source tree's server
        other = tmp / "baseline.toml"
        other.write_text(_config(9, tmp / "baseline.db") + speech)
        baseline = baseline_proc(args.baseline, other)
    base = f"ws://127.0.0.1:{gateway.port}"
    try:
        print(f"# voxgate bench realtime — {os.cpu_count()} cores, python {sys.version.split()[0]}")
        async with aiohttp.ClientSession() as http:
            clips = []
            for text in HARVARD[: args.turns]:
                spoken = await speak(http, base, text, sample_rate=RATE)
                clips.append(resample(spoken.pcm, spoken.sample_rate, RATE))
            print(
                f"## {len(clips)} spoken turns (piper), streamed in real time, server_vad 500 ms."
                " First audio: WebSocket, the first audio delta that is audible (RMS > 200;"
                " (any): of any level); WebRTC, the answer's first frame at the client's"
                " network edge (before its jitter buffer; (audible): its first frame with"
                " RMS > 200, piper's first ~40 ms are near silent)"
            )
            await rows(http, gateway.port, clips)
            if baseline is not None:
                await rows(http, baseline.port, clips, tag="base ")
            per = max(1, args.turns // 2)
            results = await asyncio.gather(
                *(turns(http, base, (clips[k * 3 :] + clips[: k * 3])[:per]) for k in range(4))
            )
            summary("4 sessions", [r for rs in results for r in rs])
            bi, missed = await barge_in(http, base, clips[: args.barge_ins])
            if bi:
                print(
                    f"barge-in    speech start → last output audio delta p50 "
                    f"{ms(statistics.median(bi))} p95 {ms(pct(bi, 0.95))}  (n={len(bi)}, "
                    f"{missed} answers had ended before the speech was detected)"
                )
    finally:
        gateway.stop()
        if baseline is not None:
            baseline.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench realtime", description=__doc__)
    p.add_argument("--turns", type=int, default=20, help="spoken turns in the one-session run")
    p.add_argument("--barge-ins", type=int, default=10)
    add_baseline_option(p, "the one-session rows")
    args = p.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
