"""A small client of the unified speech protocol, used by ``voxgate say``/``transcribe``
and the speech benchmark. It speaks to a running server by URL, or to one it starts
in-process on a free loopback port (:func:`local_server`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pybase64

from voxgate.audio import AudioFormat, chunks
from voxgate.settings import Settings


class SpeechClientError(Exception):
    """The server answered with an ``error`` event or closed the session."""


@dataclass
class Spoken:
    pcm: bytes
    sample_rate: int
    #: Seconds from ``flush`` to the first audio chunk.
    first_audio_seconds: float
    chunks: int


@dataclass
class Heard:
    text: str
    #: Seconds from ``finalize`` to ``final_transcript``.
    finalize_seconds: float
    partials: list[str] = field(default_factory=list)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _next_event(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive()
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise SpeechClientError(f"session closed ({ws.close_code}): {msg.extra or ''}")
    event: dict[str, Any] = orjson.loads(msg.data)
    if event.get("type") == "error":
        raise SpeechClientError(f"{event.get('code')}: {event.get('message')}")
    return event


async def speak(
    http: aiohttp.ClientSession,
    base: str,
    text: str,
    *,
    engine: str = "piper",
    voice: str | None = None,
    sample_rate: int = 24000,
    token: str | None = None,
) -> Spoken:
    """Synthesize ``text`` through ``ws {base}/v1/tts/{engine}``."""
    init: dict[str, Any] = {"type": "init", "sample_rate": sample_rate}
    if voice:
        init["voice_id"] = voice
    async with http.ws_connect(f"{base}/v1/tts/{engine}", headers=_headers(token)) as ws:
        await ws.send_json(init)
        ready = await _next_event(ws)
        await ws.send_json({"type": "input_text", "text": text})
        started = time.perf_counter()
        await ws.send_json({"type": "flush"})
        audio: list[bytes] = []
        first = 0.0
        while (event := await _next_event(ws))["type"] != "audio_end":
            if event["type"] == "audio_chunk":
                if not audio:
                    first = time.perf_counter() - started
                audio.append(pybase64.b64decode(event["data"]))
    return Spoken(b"".join(audio), int(ready["sample_rate"]), first, len(audio))


async def transcribe(
    http: aiohttp.ClientSession,
    base: str,
    pcm: bytes,
    sample_rate: int,
    *,
    engine: str = "pocketsphinx",
    realtime: bool = False,
    token: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> Heard:
    """Transcribe PCM16 mono through ``ws {base}/v1/stt/{engine}``.

    ``realtime`` paces the audio as a microphone would (for latency measurements).
    """
    fmt = AudioFormat(sample_rate=sample_rate)
    async with http.ws_connect(f"{base}/v1/stt/{engine}", headers=_headers(token)) as ws:
        await ws.send_json({"type": "start", "sample_rate": sample_rate})
        await _next_event(ws)
        partials: list[str] = []
        reader = asyncio.create_task(_collect(ws, partials))
        sent, total = 0, max(1, len(pcm))
        t0 = time.perf_counter()
        for piece in chunks(pcm, fmt, 100):
            await ws.send_bytes(piece)
            sent += len(piece)
            if progress is not None:
                progress(sent / total)
            if realtime:
                delay = t0 + fmt.duration_ms(sent) / 1000 - time.perf_counter()
                await asyncio.sleep(max(0.0, delay))
            if reader.done():
                break
        started = time.perf_counter()
        await ws.send_json({"type": "finalize"})
        final = await reader
    return Heard(final["text"], time.perf_counter() - started, partials)


async def _collect(ws: aiohttp.ClientWebSocketResponse, partials: list[str]) -> dict[str, Any]:
    while (event := await _next_event(ws))["type"] != "final_transcript":
        if event["type"] == "transcript" and not event["is_final"]:
            partials.append(event["text"])
    return event


@contextlib.asynccontextmanager
async def local_server(settings: Settings) -> AsyncIterator[str]:
    """Start voxgate in this process on a free loopback port; yields its ``ws://`` base."""
    from aiohttp import web

    from voxgate.server.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def progress_bar(label: str) -> Callable[[float], None]:
    """A one-line progress bar on stderr (nothing when stderr is not a terminal)."""
    if not sys.stderr.isatty():
        return lambda _fraction: None

    def show(fraction: float) -> None:
        filled = int(30 * fraction)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show
