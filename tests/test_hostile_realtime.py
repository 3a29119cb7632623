"""Hostile input to ``/v1/realtime``: each reproducer from issue 12, sent as a client
would, and what the client sees (an ``error`` naming the field, nothing applied, the
session goes on, memory bounded)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import psutil
import pybase64
import pytest

from conftest import Gateway, GatewayFactory, echo_deps, settled, wait_for
from test_realtime_ws import RT, connect, text_item
from voxgate.audio import Encoding, from_pcm16
from voxgate.core.realtime.agent import MAX_INPUT_BUFFER_SECONDS, RealtimeAgent
from voxgate.core.realtime.conversation import MAX_ITEMS
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.engines.base import VoiceActivity
from voxgate.engines.registry import EngineRegistry
from voxgate.protocols.realtime.protocol import RealtimeProtocol
from voxgate.protocols.realtime.session import SessionConfig
from voxgate.protocols.relay.usage import UsageMeter
from voxgate.settings import Limits

pytestmark = pytest.mark.timeout(180)

URL = "/v1/realtime?model=voxgate/echo"


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


async def error_for(rt: RT, raw: str) -> dict[str, Any]:
    await rt.ws.send_str(raw)
    event = await rt.recv()
    assert event["type"] == "error", event
    error: dict[str, Any] = event["error"]
    return error


async def session_now(rt: RT) -> dict[str, Any]:
    """The session as it is (an empty update changes nothing and answers with it)."""
    await rt.send("session.update", session={})
    event = await rt.recv()
    assert event["type"] == "session.updated", event
    session: dict[str, Any] = event["session"]
    return session


async def test_deep_json_is_refused_naming_the_field_and_nothing_is_applied(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks: Any
) -> None:
    """Issue 12 defect 4: 300-deep ``truncation`` or tool ``parameters`` closed the session
    with 1011 after applying the config; a 300-deep ``metadata`` was never answered."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws(URL))
    before = await session_now(rt)
    deep_truncation = (
        '{"type":"session.update","event_id":"ev1","session":{"instructions":"changed",'
        f'"truncation":{nested(300)}}}}}'
    )
    error = await error_for(rt, deep_truncation)
    assert error["code"] == "invalid_value"
    assert error["param"].startswith("session.truncation")
    assert error["event_id"] == "ev1"
    assert "32 levels" in error["message"]
    deep_tool = (
        '{"type":"session.update","session":{"tools":[{"type":"function","name":"f",'
        f'"parameters":{{"a":{nested(300)}}}}}]}}}}'
    )
    error = await error_for(rt, deep_tool)
    assert (error["code"], error["param"]) == ("invalid_value", "session.tools[0].parameters")
    deep_metadata = f'{{"type":"response.create","response":{{"metadata":{{"k":{nested(300)}}}}}}}'
    error = await error_for(rt, deep_metadata)
    assert (error["code"], error["param"]) == ("invalid_value", "response.metadata.k[0]")
    assert await session_now(rt) == before  # nothing applied
    # a schema of ordinary depth still works
    ok = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}
    await rt.send("session.update", session={"tools": [{"name": "f", "parameters": ok}]})
    assert (await rt.recv())["type"] == "session.updated"
    await ws.close()
    await settled(gw)
    [record] = await gw.services.store.query(_query())
    assert (record.client_close_code, record.error) == (1000, None)
    assert tracebacks() == []


async def test_wrong_types_get_errors_naming_the_field(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks: Any
) -> None:
    """Issue 12 defect 5: ``response.audio.output: "x"`` raised AttributeError (1011)."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws(URL))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"audio": {"output": "x"}}, "response.audio.output"),
        ({"audio": "x"}, "response.audio"),
        ({"audio": {"output": {"voice": 7}}}, "response.audio.output.voice"),
        ({"voice": ["alloy"]}, "response.voice"),
        ({"metadata": {"k": 1}}, "response.metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "response.metadata"),
    ]
    for response, param in cases:
        await rt.send("response.create", response=response)
        event = await rt.recv()
        assert event["type"] == "error", event
        assert event["error"]["param"] == param, (response, event)
        assert event["error"]["type"] == "invalid_request_error"
    await rt.send("conversation.item.create", item=text_item("still here"))
    assert (await rt.recv())["type"] == "conversation.item.added"
    await ws.close()
    assert tracebacks() == []


async def test_openai_voice_names_mean_the_default_voice_in_a_response_too(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 12 defect 6: ``response.create`` with ``voice: "alloy"`` failed."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws(URL))
    voice = "en_US-joe-medium"  # piper's default voice
    await rt.send("conversation.item.create", item=text_item("hello"))
    for response in ({"voice": "alloy"}, {"audio": {"output": {"voice": "marin"}}}):
        await rt.send("response.create", response=response)
        events = await rt.until("response.done")
        done = events[-1]["response"]
        assert done["status"] == "completed", done
        assert done["audio"]["output"]["voice"] == voice
        assert any(e["type"] == "response.output_audio.delta" for e in events)
    await ws.close()


async def test_a_long_user_item_is_answered_at_bounded_cost(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 12 defect 1, realtime: an 8,000-character item + ``response.create`` took
    the server to 1.77 GB (the echo answer was synthesized as one piece)."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws(URL))
    proc = psutil.Process(os.getpid())
    before = proc.memory_info().rss
    await rt.send("conversation.item.create", item=text_item("y" * 8000))
    await rt.until("conversation.item.done")
    await rt.send("response.create")
    peak = before
    deltas = 0
    async with asyncio.timeout(60):
        while deltas < 5:
            event = await rt.recv()
            deltas += event["type"] == "response.output_audio.delta"
            peak = max(peak, proc.memory_info().rss)
    await rt.send("response.cancel")
    done = (await rt.until("response.done"))[-1]["response"]
    assert done["status"] == "cancelled"
    grown = (peak - before) / 2**20
    print(f"RSS grew {grown:.0f} MiB while an 8,000-character item was answered")
    assert grown < 400
    await ws.close()


def _live_agent(gw: Gateway) -> RealtimeAgent:
    [conn] = list(gw.services.live_speech)
    assert isinstance(conn.session, RealtimeAgent)
    return conn.session


def _mulaw_silence(seconds: float) -> list[str]:
    """Appends of µ-law silence at 8 kHz, the largest the default limit allows."""
    data = from_pcm16(b"\0\0" * int(8000 * seconds), Encoding.MULAW)
    size = 200_000
    return [pybase64.b64encode(data[i : i + size]).decode() for i in range(0, len(data), size)]


async def test_the_input_buffer_is_bounded(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks: Any
) -> None:
    """Issue 12 defect 13: with server VAD and a quiet microphone the buffer grew with the
    audio (2.8 MiB/min), and without turn detection it grew until a commit."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws(URL))
    fmt = {"type": "audio/pcmu"}
    await rt.send("session.update", session={"audio": {"input": {"format": fmt}}})
    await rt.until("session.updated")
    for piece in _mulaw_silence(120):  # two minutes of quiet microphone, server VAD
        await rt.send("input_audio_buffer.append", audio=piece)
    # the audio is taken by the input pipeline in order; once it is, the buffer holds at
    # most prefix padding + 1 s, twice (it was the whole two minutes)
    agent = _live_agent(gw)
    await wait_for(lambda: agent.input_buffer_ms <= 2 * (300 + 1000), within=20)

    td_off = {"audio": {"input": {"turn_detection": None}}}
    await rt.send("session.update", session=td_off)
    await rt.until("session.updated")
    for piece in _mulaw_silence(MAX_INPUT_BUFFER_SECONDS + 10):
        await rt.send("input_audio_buffer.append", audio=piece)
    error = (await rt.until("error"))[-1]["error"]
    assert (error["code"], error["param"]) == ("input_audio_buffer_full", "audio")
    assert f"{MAX_INPUT_BUFFER_SECONDS} s" in error["message"]
    assert _live_agent(gw).input_buffer_ms <= MAX_INPUT_BUFFER_SECONDS * 1000
    await rt.send("input_audio_buffer.clear")
    await rt.until("input_audio_buffer.cleared")
    assert _live_agent(gw).input_buffer_ms == 0
    await ws.close()
    assert tracebacks() == []


async def test_the_conversation_is_bounded_and_the_client_is_told(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 12 defect 13: 3,000 items of 60 KB took +170 MiB; the oldest items now go,
    each with ``conversation.item.deleted``, as a model's context drops old turns."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws(URL))
    for i in range(MAX_ITEMS + 20):
        await rt.send("conversation.item.create", item=text_item(f"item {i}", id=f"it_{i}"))
    deleted: list[str] = []
    async with asyncio.timeout(60):
        while len(deleted) < 20:
            event = await rt.recv()
            if event["type"] == "conversation.item.deleted":
                deleted.append(event["item_id"])
    assert deleted == [f"it_{i}" for i in range(20)]
    await rt.send("conversation.item.retrieve", item_id="it_0")
    assert (await rt.until("error"))[-1]["error"]["code"] == "item_retrieve_invalid_item_id"
    await rt.send("conversation.item.retrieve", item_id="it_20")
    assert (await rt.until("conversation.item.retrieved"))[-1]["item"]["id"] == "it_20"
    # size, too: 60 KB items push out the small ones and each other
    for i in range(12):
        await rt.send("conversation.item.create", item=text_item("w" * 60_000, id=f"big_{i}"))
    await rt.send("conversation.item.retrieve", item_id="big_11")
    events = await rt.until("conversation.item.retrieved")
    gone = {e["item_id"] for e in events if e["type"] == "conversation.item.deleted"}
    assert "big_0" in gone
    assert sum(len(i.text()) for i in _live_agent(gw).conversation.items) <= 512_000
    await ws.close()


def _query() -> Any:
    from voxgate.store.base import UsageQuery

    return UsageQuery(account="local", gateway="default", limit=10)


async def test_a_deep_client_secret_request_is_refused_naming_the_field(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    body = '{"session":{"type":"realtime","truncation":' + nested(300) + "}}"
    async with http.post(f"{gw.base}/v1/realtime/client_secrets", data=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith("session.truncation")
    assert "32 levels" in error["message"]


async def test_items_with_audio_are_transcribed_one_at_a_time_within_a_bound(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Each item with audio opened a recognizer of its own at once: 25 of them meant 25
    native decoders (~90 MB and a third of a second of held interpreter each). They now
    wait their turn, and at most 16 MiB of their audio may wait."""
    gw = await gateway()
    ws, rt = await connect(http, gw.ws(URL))
    audio = pybase64.b64encode(os.urandom(700_000)).decode()  # noise: ~15 s at 24 kHz
    for i in range(26):
        item = {
            "id": f"audio_{i}",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": audio}],
        }
        await rt.send("conversation.item.create", item=item)
    refused: list[dict[str, Any]] = []
    added: list[str] = []
    async with asyncio.timeout(30):
        while len(refused) + len(added) < 26:
            event = await rt.recv()
            if event["type"] == "error":
                refused.append(event["error"])
            elif event["type"] == "conversation.item.added":
                added.append(event["item"]["id"])
    assert 0 < len(refused) < 26 - 16
    assert {(e["code"], e["param"]) for e in refused} == {
        ("input_audio_pending_full", "item.content[0].audio")
    }
    assert added == [f"audio_{i}" for i in range(len(added))]
    await ws.close()


async def test_switching_recognition_engines_does_not_pile_up_streams(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A recognizer replaced by ``session.update`` stayed open until the session ended:
    switching back and forth opened one more stream each time."""
    import gc

    from voxgate.engines.local_stt import LocalRecognitionStream

    gw = await gateway('[speech.engines.sphinx2]\ntype = "pocketsphinx"\n', own_engines=True)
    ws, rt = await connect(http, gw.ws(URL))
    silence = pybase64.b64encode(b"\0" * 9600).decode()
    for i in range(30):
        model = "sphinx2" if i % 2 else "pocketsphinx"
        transcription = {"transcription": {"model": model}}
        await rt.send("session.update", session={"audio": {"input": transcription}})
        await rt.until("session.updated")
        # a committed turn: the recognizer of this engine opens and transcribes it
        await rt.send("input_audio_buffer.append", audio=silence)
        await rt.send("input_audio_buffer.commit")
        await rt.until("conversation.item.input_audio_transcription.completed")

    def open_streams() -> int:
        gc.collect()
        return sum(isinstance(o, LocalRecognitionStream) for o in gc.get_objects())

    await wait_for(lambda: open_streams() <= 2, within=10)
    await ws.close()


class _FailingOnceVad(VoiceActivity):
    """Raises on its first frame (as a VAD's bug would), then hears silence."""

    name = "failing-once"
    sample_rate = 16000
    frame_samples = 512

    def __init__(self) -> None:
        self.failed = False

    def score(self, frame: bytes) -> float:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a VAD bug")
        return 0.0


def _socketless_agent(
    engines: EngineRegistry, make_vad: Callable[[], VoiceActivity], send: Callable[..., Any]
) -> RealtimeAgent:
    """An agent with no socket: the shared engines, ``make_vad``'s VAD, the echo model."""
    deps = echo_deps(engines, make_vad)
    info = SessionInfo("s", "a", "g", "voxgate", None, None, None, kind="realtime")
    ids = itertools.count()
    return RealtimeAgent(
        protocol=RealtimeProtocol(ids=lambda prefix: f"{prefix}_{next(ids)}"),
        config=SessionConfig(),
        deps=deps,
        counters=RelaySession(info, Limits(), now=0.0, wall=0.0, meter=UsageMeter()),
        send=send,
        ids=lambda prefix: f"{prefix}_{next(ids)}",
        session_id="s",
        expires_at=0,
    )


async def test_the_input_pipeline_survives_an_error_in_one_chunk(
    speech_engines: EngineRegistry, tracebacks: Any
) -> None:
    """A failure while taking one chunk of input audio ended the session's input pipeline
    for good (later audio was never heard); now that chunk is lost, with an error."""
    sent: list[dict[str, Any]] = []
    committed = asyncio.Event()

    async def send(frame: str) -> None:
        sent.append(orjson.loads(frame))
        if sent[-1]["type"] == "input_audio_buffer.committed":
            committed.set()

    agent = _socketless_agent(speech_engines, _FailingOnceVad, send)
    audio = pybase64.b64encode(b"\0\0" * 4800).decode()
    append = orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode()
    await agent.handle(append)
    await agent.handle(append)
    await agent.handle('{"type":"input_audio_buffer.commit"}')
    async with asyncio.timeout(30):
        await committed.wait()
    await agent.close()
    errors = [e["error"] for e in sent if e["type"] == "error"]
    assert [(e["code"], e["type"]) for e in errors] == [("internal_error", "server_error")]
    assert "RuntimeError" in errors[0]["message"]
    assert len(tracebacks()) == 1  # the bug is logged, once


class _AlwaysSpeech(VoiceActivity):
    name = "always"
    sample_rate = 16000
    frame_samples = 512

    def score(self, frame: bytes) -> float:
        return 1.0


async def test_a_turn_that_never_ends_is_committed_at_the_buffer_bound(
    speech_engines: EngineRegistry,
) -> None:
    """With server VAD, "speech" that never stops (noise) kept one turn — and the input
    buffer — growing for as long as it lasted; the turn now ends at 300 s."""
    sent: list[dict[str, Any]] = []
    stopped = asyncio.Event()

    async def send(frame: str) -> None:
        sent.append(orjson.loads(frame))
        if sent[-1]["type"] == "input_audio_buffer.speech_stopped":
            stopped.set()

    agent = _socketless_agent(speech_engines, _AlwaysSpeech, send)
    update = {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    await agent.handle(orjson.dumps({"type": "session.update", "session": update}).decode())
    for piece in _mulaw_silence(MAX_INPUT_BUFFER_SECONDS + 20):
        await agent.handle(
            orjson.dumps({"type": "input_audio_buffer.append", "audio": piece}).decode()
        )
    async with asyncio.timeout(30):
        await stopped.wait()
    kinds = [e["type"] for e in sent]
    assert kinds.count("input_audio_buffer.speech_started") == 1
    end_ms = next(e for e in sent if e["type"] == "input_audio_buffer.speech_stopped")[
        "audio_end_ms"
    ]
    assert MAX_INPUT_BUFFER_SECONDS * 1000 <= end_ms <= (MAX_INPUT_BUFFER_SECONDS + 20) * 1000
    assert "input_audio_buffer.committed" in kinds
    assert agent.input_buffer_ms < 25_000
    await agent.close()
