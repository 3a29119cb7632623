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

One session, then 4 concurrent sessions. Barge-in: while the agent speaks a long answer,
the client starts a sentence; the figure is from the wall time of the first speech sample
sent to the last ``response.output_audio.delta`` received before ``response.done``.
"""

from __future__ import annotations

import argparse
import asyncio
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
import numpy as np
import orjson
import pybase64

from voxgate.audio import resample
from voxgate.bench.relay import _config, pct, voxgate_proc
from voxgate.bench.sentences import HARVARD
from voxgate.speech_client import speak

RATE = 24000
CHUNK_MS = 20
CHUNK = RATE * 2 * CHUNK_MS // 1000
LONG_ANSWER = " ".join(HARVARD[:6])


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
    http: aiohttp.ClientSession, base: str
) -> tuple[Session, asyncio.Task[None]]:
    ws = await http.ws_connect(f"{base}/v1/realtime?model=voxgate/echo", max_msg_size=0)
    s = Session(ws)
    reader = asyncio.create_task(s.read())
    await s.until("session.created")
    td = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}
    await s.send("session.update", session={"audio": {"input": {"turn_detection": td}}})
    await s.until("session.updated")
    return s, reader


async def turns(
    http: aiohttp.ClientSession, base: str, clips: list[bytes]
) -> list[tuple[float, float]]:
    """(silence window, processing) in seconds for each clip, one session."""
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
            first, _ev = await s.until("response.output_audio.delta")
            await s.until("response.done")
            done.set()
            await sender
            audio_end = stopped["audio_end_ms"]
            out.append(((audio_end - speech_end) / 1000, first - s.sent_time(audio_end)))
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


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-realtime-"))
    cfg = tmp / "voxgate.toml"
    cfg.write_text(
        _config(9, tmp / "usage.db") + '\n[speech]\npreload = ["piper", "pocketsphinx"]\n'
    )
    gateway = voxgate_proc(cfg)
    base = f"ws://127.0.0.1:{gateway.port}"
    try:
        print(f"# voxgate bench realtime — {os.cpu_count()} cores, python {sys.version.split()[0]}")
        async with aiohttp.ClientSession() as http:
            clips = []
            for text in HARVARD[: args.turns]:
                spoken = await speak(http, base, text, sample_rate=RATE)
                clips.append(resample(spoken.pcm, spoken.sample_rate, RATE))
            print(f"## {len(clips)} spoken turns (piper), streamed in real time, server_vad 500 ms")
            summary("1 session", await turns(http, base, clips))
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench realtime", description=__doc__)
    p.add_argument("--turns", type=int, default=20, help="spoken turns in the one-session run")
    p.add_argument("--barge-ins", type=int, default=10)
    args = p.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
