"""Hostile input to the unified speech endpoints: each reproducer from issue 12, sent as a
client would, and what the client sees (the session goes on, the cost stays bounded)."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from conftest import GatewayFactory, settled
from test_speech_e2e import receive_until
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.core.speech import TTSSession
from voxgate.core.text import MAX_PIECE_CHARS, speakable, split_clauses
from voxgate.engines.base import SynthesisOptions, SynthesisStream, TextToSpeech, TTSCapabilities
from voxgate.engines.piper import MAX_PHONEMES, phoneme_windows
from voxgate.engines.vad import Segmenter, SegmenterSettings, UtteranceEnd, UtteranceStart
from voxgate.engines.workers import EngineWorkers
from voxgate.protocols.relay.usage import UsageMeter
from voxgate.protocols.speech.unified import TTSProtocol
from voxgate.settings import Limits

pytestmark = pytest.mark.timeout(180)


# --- 1. a word with no break: bounded pieces, bounded memory ---------------------------


def test_text_for_synthesis_is_cut_into_bounded_pieces() -> None:
    pieces = split_clauses("y" * 19_999)
    assert "".join(pieces) == "y" * 19_999
    assert max(len(p) for p in pieces) == MAX_PIECE_CHARS
    words = split_clauses("hello " * 3000)
    assert all(len(p) <= MAX_PIECE_CHARS and p.count(" ") < 30 for p in words)
    assert " ".join(words) == " ".join(["hello"] * 3000)
    # a word longer than a piece between two short ones: cut inside, nothing lost
    mixed = split_clauses("one " + "z" * 450 + " two")
    assert mixed == ["one", "z" * 200, "z" * 200, "z" * 50 + " two"]
    assert speakable("a\x00b\x1b[31mc\ud800d") == "a b [31mc d"


def test_phonemes_go_to_the_model_in_bounded_windows() -> None:
    word = ["h", "ə", "l", "o", " "] * 200  # 1,000 phonemes, a space after every word
    windows = phoneme_windows(word, MAX_PHONEMES)
    assert [p for w in windows for p in w] == word
    assert all(len(w) <= MAX_PHONEMES and w[-1] == " " for w in windows[:-1])
    solid = ["y"] * 1000  # no space: cut where it must be
    assert [len(w) for w in phoneme_windows(solid, MAX_PHONEMES)] == [256, 256, 256, 232]
    assert phoneme_windows([" ", " "], MAX_PHONEMES) == []


async def _rss_peak(pid: int, stop: asyncio.Event, out: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        out.append(proc.memory_info().rss)
        await asyncio.sleep(0.05)


async def test_a_word_with_no_break_costs_bounded_memory(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 12 defect 1: ``"y"×19999`` then ``flush`` took piper from 289 MiB to 5.6 GiB."""
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_json({"type": "init", "binary": True})
        await receive_until(ws, "ready")
        before = psutil.Process(os.getpid()).memory_info().rss
        samples: list[int] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_rss_peak(os.getpid(), stop, samples))
        await ws.send_json({"type": "input_text", "text": "y" * 19_999})
        await ws.send_json({"type": "flush"})
        got = 0
        async with asyncio.timeout(60):
            while got < 3:  # three pieces spoken: the first audio came early
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.BINARY, msg
                got += 1
        await ws.send_json({"type": "stop"})
        end = await receive_until(ws, "audio_end")
        stop.set()
        await sampler
    assert end[-1]["interrupted"] is True
    grown = (max(samples) - before) / 2**20
    print(f"RSS grew {grown:.0f} MiB while 'y'×19,999 was spoken")
    assert grown < 400


# --- 10 and 11: a NUL, a failing engine, refused text ---------------------------------


async def test_a_nul_character_is_spoken_around_and_the_session_goes_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 12 defect 10: ``"a\\u0000b."`` + ``flush`` ended synthesis for the session."""
    gw = await gateway()
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_json({"type": "init", "binary": True})
        await receive_until(ws, "ready")
        for text in ("a\u0000b.", "Hello there."):
            await ws.send_json({"type": "input_text", "text": text})
            await ws.send_json({"type": "flush"})
            audio = 0
            async with asyncio.timeout(30):
                while True:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.BINARY:
                        audio += len(msg.data)
                        continue
                    event = orjson.loads(msg.data)
                    assert event["type"] == "audio_end", event
                    break
            assert event["interrupted"] is False
            assert audio > 0


class _TestStream(SynthesisStream):
    """Raises what an engine's own bug would raise for a text with "boom"; waits for
    ``gate`` before speaking one with "wait"; counts its closes."""

    sample_rate = 16000
    voice = "v"

    def __init__(self, engine: _TestEngine) -> None:
        self.engine = engine

    async def synthesize(self, text: str, *, first: bool = True) -> AsyncIterator[bytes]:
        if "boom" in text:
            raise ValueError("an engine bug")
        if "wait" in text:
            await self.engine.gate.wait()
        yield b"\x01\x00" * 1600

    async def aclose(self) -> None:
        self.engine.closed += 1


class _TestEngine(TextToSpeech):
    name = "test"

    def __init__(self) -> None:
        self.opened = self.closed = 0
        self.gate = asyncio.Event()

    @property
    def capabilities(self) -> TTSCapabilities:
        return TTSCapabilities(voices=(), streaming_text=False, speed=False, sample_rates=())

    async def open(self, options: SynthesisOptions) -> SynthesisStream:
        self.opened += 1
        return _TestStream(self)


def _tts_session(engine: _TestEngine, sent: list[dict[str, Any]], event: asyncio.Event) -> Any:
    """A TTS session on ``engine`` with no socket; ``event`` is set at the 2nd audio_end."""

    async def send(frame: str | bytes) -> None:
        sent.append(orjson.loads(frame))
        if [e["type"] for e in sent].count("audio_end") == 2:
            event.set()

    async def get_engine() -> TextToSpeech:
        return engine

    info = SessionInfo("s", "a", "g", "test", None, None, None, kind="tts")
    return TTSSession(
        protocol=TTSProtocol(max_text_chars=100),
        engine_name="test",
        get_engine=get_engine,
        counters=RelaySession(info, Limits(), now=0.0, wall=0.0, meter=UsageMeter()),
        send=send,
        workers=EngineWorkers(threads=1),
        ids=lambda prefix: f"{prefix}_1",
    )


async def test_an_engine_failure_ends_that_utterance_only() -> None:
    sent: list[dict[str, Any]] = []
    two_ends = asyncio.Event()
    session = _tts_session(_TestEngine(), sent, two_ends)
    await session.handle('{"type":"init","sample_rate":16000}')
    for text in ("boom.", "fine."):
        await session.handle(orjson.dumps({"type": "input_text", "text": text}).decode())
        await session.handle('{"type":"flush"}')
    async with asyncio.timeout(5):
        await two_ends.wait()
    await session.close()
    kinds = [e["type"] for e in sent]
    assert kinds == ["ready", "error", "audio_end", "audio_chunk", "audio_end"], kinds
    assert sent[1]["code"] == "internal_error"
    assert "ValueError" in sent[1]["message"]


async def test_streams_replaced_by_configure_are_closed_once_unused() -> None:
    """Each ``configure`` opens a stream (a cloud engine's holds a connection); the ones
    it replaced stayed open until the session ended."""
    engine = _TestEngine()
    sent: list[dict[str, Any]] = []
    two_ends = asyncio.Event()
    session = _tts_session(engine, sent, two_ends)
    await session.handle('{"type":"init","sample_rate":16000}')
    for speed in (1.1, 1.2, 1.3):  # nothing queued: each old stream closes at once
        await session.handle(orjson.dumps({"type": "configure", "speed": speed}).decode())
    assert (engine.opened, engine.closed) == (4, 3)
    await session.handle('{"type":"input_text","text":"wait. "}')  # queued on stream 4
    await session.handle('{"type":"configure","speed":1.4}')
    assert (engine.opened, engine.closed) == (5, 3)  # stream 4 still speaks
    engine.gate.set()
    await session.handle('{"type":"flush"}')
    await session.handle('{"type":"input_text","text":"done."}')
    await session.handle('{"type":"flush"}')
    async with asyncio.timeout(5):
        await two_ends.wait()
    assert (engine.opened, engine.closed) == (5, 4)  # closed after its last job
    await session.close()
    assert engine.closed == 5


async def test_refused_text_is_not_buffered_nor_counted(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 12 defect 11: text answered ``text_too_long`` was buffered anyway."""
    gw = await gateway("[accounts.local.gateways.default]\nlimits.max_text_chars = 50\n")
    async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
        await ws.send_json({"type": "init", "binary": True})
        await receive_until(ws, "ready")
        for _ in range(4):  # 200 characters without a sentence end: the buffer is full
            await ws.send_json({"type": "input_text", "text": "x" * 49 + " "})
        for _ in range(20):
            await ws.send_json({"type": "input_text", "text": "refused " * 6})
            error = (await receive_until(ws, "error"))[-1]
            assert error["code"] == "text_too_long"
            assert "200 characters" in error["message"]
        await ws.send_json({"type": "clear"})
        await receive_until(ws, "cleared")
        await ws.close()
    await settled(gw)
    [record] = await gw.services.store.query(_query())
    assert record.characters == 200


def _query() -> Any:
    from voxgate.store.base import UsageQuery

    return UsageQuery(account="local", gateway="default", limit=10)


# --- 14: an abrupt disconnect ----------------------------------------------------------


def _raw_upgrade(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + body


@pytest.mark.parametrize("path", ["/v1/tts/piper", "/v1/stt/pocketsphinx", "/v1/realtime"])
async def test_an_abrupt_disconnect_is_a_quiet_client_disconnected(
    gateway: GatewayFactory, tracebacks: Any, path: str
) -> None:
    """Issue 12 defect 14: a ping then a TCP reset logged a traceback (the pong could not
    be written) and recorded ``internal_error``."""
    gw = await gateway()
    for _ in range(5):
        sock = await asyncio.to_thread(_raw_upgrade, gw.port, path)
        await asyncio.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(_masked(0x9, b"are you there") * 20)  # pings, then a reset
        sock.close()
    await settled(gw)
    records = await gw.services.store.query(_query())
    assert len(records) == 5
    assert {r.error for r in records} == {"client_disconnected"}, [r.error for r in records]
    assert tracebacks() == []


# --- 12: a closed session is freed at once ---------------------------------------------


async def test_closed_sessions_are_freed_without_a_garbage_collection(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 12 defect 12: agents and connections referred to each other, so 8 closed
    sessions held 280 MiB until ``gc.collect()``."""
    from voxgate.core.realtime.agent import RealtimeAgent
    from voxgate.core.speech import STTSession
    from voxgate.transports.speech import SpeechConnection

    gw = await gateway()
    kinds = (RealtimeAgent, TTSSession, STTSession, SpeechConnection)
    gc.collect()
    gc.disable()
    try:
        async with http.ws_connect(gw.ws("/v1/realtime?model=voxgate/echo")) as ws:
            await ws.receive_json()
            await ws.send_json(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hello"}],
                    },
                }
            )
            silence = base64.b64encode(b"\0" * 48000).decode()
            await ws.send_json({"type": "input_audio_buffer.append", "audio": silence})
            await ws.send_json({"type": "response.create"})
            while (await ws.receive_json(timeout=30))["type"] != "response.done":
                pass
        async with http.ws_connect(gw.ws("/v1/tts/piper")) as ws:
            await ws.send_json({"type": "init"})
            await ws.send_json({"type": "input_text", "text": "Hi."})
            await ws.send_json({"type": "flush"})
            await receive_until(ws, "audio_end")
        async with http.ws_connect(gw.ws("/v1/stt/pocketsphinx")) as ws:
            await ws.send_json({"type": "start"})
            await ws.send_bytes(b"\0" * 32000)
            await ws.send_json({"type": "finalize"})
            await receive_until(ws, "final_transcript")
        await settled(gw)
        await asyncio.sleep(0.1)
        alive = [type(o).__name__ for o in gc.get_objects() if isinstance(o, kinds)]
    finally:
        gc.enable()
    assert alive == []


# --- STT: an utterance that never ends -------------------------------------------------


class _AlwaysSpeech:
    name = "always"
    sample_rate = 16000
    frame_samples = 480
    frame_bytes = 960

    def score(self, frame: bytes) -> float:
        return 1.0

    def reset(self) -> None:
        pass


def test_unbroken_speech_is_cut_into_bounded_utterances() -> None:
    """Noise that a VAD takes for speech must not grow one utterance without bound (the
    decoder keeps an utterance's audio)."""
    seg = Segmenter(_AlwaysSpeech(), SegmenterSettings(max_utterance_ms=30_000))  # type: ignore[arg-type]
    out = seg.push(b"\1\0" * 16000 * 95)  # 95 s
    starts = [o for o in out if isinstance(o, UtteranceStart)]
    ends = [o for o in out if isinstance(o, UtteranceEnd)]
    assert len(ends) == 3
    assert len(starts) == 4
    assert [e.timestamp for e in ends] == pytest.approx([30.0, 60.0, 90.0], abs=0.05)


def test_decoders_built_are_the_peak_of_utterances_at_once_not_per_process() -> None:
    """pocketsphinx decoders (~90 MB each) live in worker processes; an utterance goes to
    a process with an idle one. Handing them out in turn grew a decoder in each process
    for the same peak (the soak bench's RSS stepped up by 90 MB minutes after warm-up)."""
    import random

    from voxgate.engines.sphinx import SphinxProcesses

    procs = SphinxProcesses(2, nice=4)  # no process starts: only the lending is exercised
    rng = random.Random(7)
    lent: list[int] = []
    peak = 0
    for _ in range(2000):
        if lent and (len(lent) >= 4 or rng.random() < 0.5):
            procs.returned(lent.pop(rng.randrange(len(lent))), False)
        else:
            lent.append(procs.lend(False))
        peak = max(peak, len(lent))
    assert peak == 4
    assert procs.built(False) == 4
