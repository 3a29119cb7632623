"""A seeded socket-level fuzz of the session endpoints — ``/v1/realtime``, ``/v1/tts``,
``/v1/stt`` — beside a healthy relay session (the canary, in its own process).

Each session gets a few thousand hostile frames: valid messages with fields replaced or
removed, garbage text and bytes, nesting hundreds deep, huge strings. What must hold: no
refusal is an ``internal_error``, every refused realtime event names its field (or is one
of the state errors that have none), no session is closed by the server, each still works
afterwards, each leaves exactly one usage record, nothing logs a traceback, and the
canary's round trips stay under 50 ms at the 99th percentile. A failure prints its seed;
``FUZZ_SEED=<n>`` replays it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import orjson
import pybase64
import pytest

from conftest import GatewayFactory, assert_healthy, canary_url, settled
from hostile import (
    HOSTILE_TEXTS,
    REALTIME_TEMPLATES,
    STT_TEMPLATES,
    STT_WEIGHTS,
    TTS_TEMPLATES,
    TTS_WEIGHTS,
    Mutator,
)
from voxgate.store.base import UsageQuery
from voxgate.testing.canary import Canary

pytestmark = pytest.mark.timeout(240)

SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
#: Refusals that name no field: the frame as a whole, or the session's state.
UNFIELDED = {
    "invalid_json",
    "invalid_message",
    "input_audio_buffer_commit_empty",
    "response_cancel_not_active",
    "conversation_already_has_active_response",
}
LIMITS = """
[accounts.local.gateways.default]
limits.messages_per_minute = 100000
"""


class Client:
    """One fuzzed session: sends frames, keeps every event the server sends."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.binary = 0
        self.closed: aiohttp.WSMessage | None = None
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.binary += 1
                continue
            event = orjson.loads(msg.data)
            async with self._new:
                self.events.append(event)
                self._new.notify_all()
        self.closed = aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, self.ws.close_code, None)
        async with self._new:
            self._new.notify_all()

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def wait_for(self, kind: str, *, after: int, within: float = 60) -> dict[str, Any]:
        """The first event of ``kind`` at or after index ``after``."""
        async with asyncio.timeout(within), self._new:
            while True:
                for event in self.events[after:]:
                    if event.get("type") == kind:
                        return event
                assert self.closed is None, f"the server closed the session: {self.closed}"
                await self._new.wait()

    async def close(self) -> int | None:
        await self.ws.close()
        await self._reader
        return self.ws.close_code


async def fuzz(client: Client, mutator: Mutator, templates: list[dict[str, Any]], n: int) -> None:
    """``n`` hostile frames, one a millisecond or so (the fuzz client shares the server's
    event loop here: sent back to back, its own sending would be what the canary waits
    behind)."""
    for i in range(n):
        await client.send(mutator.frame(templates))
        await asyncio.sleep(0.001)
        assert client.closed is None, f"closed by the server after {i} frames: {client.closed}"


def errors(client: Client) -> list[dict[str, Any]]:
    out = []
    for event in client.events:
        if event.get("type") != "error":
            continue
        out.append(event.get("error", event))
    return out


async def test_realtime_fuzz_beside_the_canary(
    gateway: GatewayFactory, http: aiohttp.ClientSession, canary: Canary, tracebacks: Any
) -> None:
    gw = await gateway(canary.provider_toml() + LIMITS)
    await warm(gw, http)
    await canary.begin(canary_url(gw), interval=0.005)
    sessions = 3
    for k in range(sessions):
        mutator = Mutator(SEED + k, favourites=HOSTILE_TEXTS)
        ws = await http.ws_connect(gw.ws("/v1/realtime?model=voxgate/echo"), max_msg_size=0)
        client = Client(ws)
        await client.wait_for("session.created", after=0)
        await fuzz(client, mutator, REALTIME_TEMPLATES, 1200)
        # it still works: a text turn answered in text
        mark = len(client.events)
        await client.send('{"type":"response.cancel"}')
        await client.send('{"type":"output_audio_buffer.clear"}')
        await client.send('{"type":"input_audio_buffer.clear"}')
        await client.send(
            orjson.dumps(
                {
                    "type": "response.create",
                    "response": {
                        "conversation": "none",
                        "output_modalities": ["text"],
                        "tools": [],
                        "tool_choice": "none",
                        "max_output_tokens": "inf",
                        "input": [
                            {
                                "type": "message",
                                "role": "user",
                                "content": [{"type": "input_text", "text": "still there"}],
                            }
                        ],
                        "metadata": {"probe": "yes"},
                    },
                }
            ).decode()
        )
        done = await _probe_done(client, mark)
        assert done["status"] == "completed", (SEED + k, done)
        assert done["output"][0]["content"][0]["text"] == "You said: still there."
        bad = [
            e
            for e in errors(client)
            if e.get("code") == "internal_error"
            or e.get("type") == "server_error"
            or (e.get("param") is None and e.get("code") not in UNFIELDED)
        ]
        assert bad == [], (SEED + k, bad[:5])
        assert await client.close() == 1000
    result = await canary.finish()
    await settled(gw)
    records = await gw.services.store.query(
        UsageQuery(account="local", gateway="default", limit=100)
    )
    realtime = [r for r in records if r.kind == "realtime"]
    assert len(realtime) == sessions + 1  # and the warm-up's
    assert {(r.client_close_code, r.error) for r in realtime} == {(1000, None)}
    assert tracebacks() == []
    assert_healthy(result)


async def warm(gw: Any, http: aiohttp.ClientSession) -> None:
    """What a first session does once per process: load the engines and the VAD, and
    grow the recognizers' decoder pool to a session's two streams. Building one takes
    the interpreter for a few hundred ms (``[speech] preload`` loads engines at startup);
    the fuzz measures the steady state after it."""
    async with http.ws_connect(gw.ws("/v1/realtime?model=voxgate/echo")) as ws:
        await ws.receive_json()
        audio = pybase64.b64encode(b"\1\0" * 24000).decode()
        await ws.send_json({"type": "input_audio_buffer.append", "audio": audio})
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": audio}],
        }
        await ws.send_json({"type": "conversation.item.create", "item": item})
        while (await ws.receive_json(timeout=60))["type"] != (
            "conversation.item.input_audio_transcription.completed"
        ):
            pass
    await settled(gw)


async def _probe_done(client: Client, mark: int) -> dict[str, Any]:
    """The ``response.done`` of the probe response (the one with metadata probe=yes)."""
    async with asyncio.timeout(60):
        while True:
            event = await client.wait_for("response.done", after=mark)
            mark = client.events.index(event) + 1
            response: dict[str, Any] = event["response"]
            if (response.get("metadata") or {}).get("probe") == "yes":
                return response


async def test_tts_and_stt_fuzz_beside_the_canary(
    gateway: GatewayFactory, http: aiohttp.ClientSession, canary: Canary, tracebacks: Any
) -> None:
    """Two TTS sessions and one STT session at once, a frame every few ms, so that the
    engines work while the hostile frames arrive."""
    gw = await gateway(canary.provider_toml() + LIMITS)
    await warm(gw, http)
    await canary.begin(canary_url(gw), interval=0.005)
    paths = ["/v1/tts/piper", "/v1/tts/piper", "/v1/stt/pocketsphinx"]
    await asyncio.gather(
        *(_speech_session(gw, http, path, SEED + 100 + k) for k, path in enumerate(paths))
    )
    result = await canary.finish()
    await settled(gw)
    records = await gw.services.store.query(
        UsageQuery(account="local", gateway="default", limit=100)
    )
    speech = [r for r in records if r.kind in ("tts", "stt")]
    assert len(speech) == 3
    assert {(r.client_close_code, r.error) for r in speech} == {(1000, None)}
    assert tracebacks() == []
    assert_healthy(result)


async def _speech_session(gw: Any, http: aiohttp.ClientSession, path: str, seed: int) -> None:
    tts = path.startswith("/v1/tts")
    mutator = Mutator(seed, favourites=HOSTILE_TEXTS if tts else ())
    ws = await http.ws_connect(gw.ws(path), max_msg_size=0)
    client = Client(ws)
    templates, weights = (TTS_TEMPLATES, TTS_WEIGHTS) if tts else (STT_TEMPLATES, STT_WEIGHTS)
    if tts:
        # the first frame picks the protocol (plain text or a typeless object is SLNG's
        # native form): this session fuzzes the unified one
        await client.send('{"type":"ping"}')
    for i in range(1000):
        await client.send(mutator.frame(templates, weights))
        await asyncio.sleep(0.004)
        assert client.closed is None, f"closed by the server after {i} frames: {client.closed}"
    mark = len(client.events)
    if tts:
        # every utterance the fuzz flushed ends (an engine failure must not stop the
        # synthesis of what follows it), then the probe is spoken alone
        await client.send('{"type":"init"}')  # refused if the fuzz already did it
        await client.send('{"type":"flush"}')
        await _last_end(client, mark)
        await client.send('{"type":"stop"}')
        await client.send('{"type":"configure","binary":true,"speed":1.0}')
        audio = client.binary
        mark = len(client.events)
        await client.send('{"type":"input_text","text":"Still here."}')
        await client.send('{"type":"flush"}')
        await _last_end(client, mark)
        assert client.binary > audio  # the probe was spoken
        assert audio + _chunks(client) > 0, "the fuzz never got anything synthesized"
    else:
        await client.send('{"type":"start"}')  # refused if the fuzz already did it
        await client.send(b"\0\0" * 8000)
        await client.send('{"type":"finalize"}')
        await client.wait_for("final_transcript", after=mark)
    bad = [e for e in errors(client) if e.get("code") == "internal_error"]
    assert bad == [], (path, seed, bad[:5])
    assert await client.close() == 1000


def _chunks(client: Client) -> int:
    return sum(1 for e in client.events if e.get("type") == "audio_chunk")


async def _last_end(client: Client, mark: int) -> dict[str, Any]:
    """The ``audio_end`` of the probe utterance: the first not interrupted after ``mark``."""
    async with asyncio.timeout(90):
        while True:
            event = await client.wait_for("audio_end", after=mark)
            mark = client.events.index(event) + 1
            if not event["interrupted"]:
                return event
