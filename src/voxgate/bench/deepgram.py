"""The Deepgram protocol's latency figures for ``voxgate bench speech``.

- ``speak``: seconds from ``Flush`` to the first binary audio frame on ``/v1/speak``;
- ``listen``: seconds from ``Finalize`` to its ``from_finalize`` result on ``/v1/listen``,
  the audio streamed in real time (20 ms frames) before it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import orjson

from voxgate.audio import AudioFormat, chunks

FRAME_MS = 20


@dataclass(frozen=True)
class Heard:
    text: str
    #: Seconds from ``Finalize`` to the ``from_finalize`` result.
    finalize_seconds: float


async def speak_first_audio(
    http: aiohttp.ClientSession, base: str, text: str, *, model: str = "aura-2"
) -> tuple[float, bytes]:
    """Seconds from ``Flush`` to the first audio of ``text``, and all its audio (24 kHz)."""
    async with http.ws_connect(f"{base}/v1/speak?model={model}") as ws:
        await ws.receive()  # Metadata
        await ws.send_str(orjson.dumps({"type": "Speak", "text": text}).decode())
        await ws.send_str('{"type": "Flush"}')
        sent = time.perf_counter()
        first: float | None = None
        audio = b""
        async with asyncio.timeout(60):
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    first = first if first is not None else time.perf_counter() - sent
                    audio += message.data
                elif orjson.loads(message.data).get("type") == "Flushed":
                    break
        await ws.send_str('{"type": "Close"}')
    if first is None:
        raise RuntimeError("speak sent no audio")
    return first, audio


async def listen_final(
    http: aiohttp.ClientSession, base: str, pcm16k: bytes, *, model: str = "nova-3"
) -> Heard:
    """Stream ``pcm16k`` in real time, then ``Finalize``: the finals and the wait."""
    url = f"{base}/v1/listen?model={model}&encoding=linear16&sample_rate=16000"
    finals: list[str] = []
    async with http.ws_connect(url) as ws:

        async def results() -> float:
            async for message in ws:
                msg = orjson.loads(message.data)
                if msg.get("type") == "Results" and msg["is_final"]:
                    finals.append(msg["channel"]["alternatives"][0]["transcript"])
                    if msg["from_finalize"]:
                        return time.perf_counter()
            raise RuntimeError("listen closed before its from_finalize result")

        reader = asyncio.create_task(results())
        start = time.perf_counter()
        for i, frame in enumerate(chunks(pcm16k, AudioFormat(sample_rate=16000), FRAME_MS)):
            await ws.send_bytes(frame)
            await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_MS / 1000 - time.perf_counter()))
        await ws.send_str('{"type": "Finalize"}')
        sent = time.perf_counter()
        async with asyncio.timeout(60):
            answered = await reader
        await ws.send_str('{"type": "CloseStream"}')
    return Heard(" ".join(t for t in finals if t), answered - sent)
