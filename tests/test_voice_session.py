"""The voice session with no socket at all: commands in, canonical events out, the voice
into an in-memory play-out that a test plays at its own pace (real engines, echo model)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import pytest
from tests.conftest import echo_deps

from voxgate.core.realtime.playout import Playout
from voxgate.core.realtime.voice import VoiceSession
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.engines.base import VoiceActivity
from voxgate.engines.llm import EchoModel, LanguageModel
from voxgate.engines.registry import EngineRegistry
from voxgate.protocols.chat import ChatRequest
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.protocol import RealtimeProtocol
from voxgate.protocols.realtime.session import SessionConfig
from voxgate.protocols.relay.usage import UsageMeter
from voxgate.settings import Limits

LONG = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish."
)


class _Speech(VoiceActivity):
    """Everything is speech while ``on``: a barge-in on demand."""

    name = "switch"
    sample_rate = 16000
    frame_samples = 512
    on = False

    def score(self, frame: bytes) -> float:
        return 1.0 if _Speech.on else 0.0


class Harness:
    def __init__(
        self,
        engines: EngineRegistry,
        *,
        sink: Playout | None = None,
        limits: Limits | None = None,
        model: LanguageModel | None = None,
    ) -> None:
        self.events: list[ev.Event] = []
        self.arrived = asyncio.Event()
        ids = itertools.count()
        deps = echo_deps(engines, _Speech)
        if model is not None:
            deps = replace(deps, resolve_model=lambda _name: model)
        info = SessionInfo("s", "a", "g", "voxgate", None, None, None, kind="realtime")
        self.sink = sink or Playout()
        self.counters = RelaySession(
            info, limits or Limits(), now=0.0, wall=0.0, meter=UsageMeter()
        )
        self.session = VoiceSession(
            config=SessionConfig(),
            deps=deps,
            counters=self.counters,
            emit=self.emit,
            sink=self.sink,
            ids=lambda prefix: f"{prefix}_{next(ids)}",
            session_id="s",
            expires_at=0,
            input_rate=48000,
        )

    async def emit(self, event: ev.Event) -> None:
        self.events.append(event)
        self.arrived.set()

    async def until(self, kind: type, within: float = 30.0) -> ev.Event:
        async with asyncio.timeout(within):
            while True:
                for e in self.events:
                    if isinstance(e, kind):
                        return e
                self.arrived.clear()
                await self.arrived.wait()

    def of(self, kind: type) -> list[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]


def _user(text: str) -> Item:
    return Item("item_user", "message", role="user", content=[ContentPart("input_text", text=text)])


async def _play(sink: Playout, ms: int) -> None:
    """Play ``ms`` of the sink's audio as a transport's paced loop would (faster)."""
    for _ in range(ms // 20):
        sink.take()
        await asyncio.sleep(0.001)


async def _play_out(sink: Playout, over: asyncio.Event) -> None:
    """Play (faster than real time) until the answer is over and all of it was played."""
    while not (over.is_set() and sink.playing is None):
        sink.take()
        await asyncio.sleep(0.001)


async def test_a_text_turn_speaks_into_the_sink_and_emits_no_wire_names(
    speech_engines: EngineRegistry,
) -> None:
    h = Harness(speech_engines)
    await h.session.start(as_call=True)  # OpenAI's WebRTC behaviour, as a call has it
    created = await h.until(ev.SessionCreated)
    assert isinstance(created, ev.SessionCreated)
    assert created.session.session_id == "s"
    assert isinstance(h.events[1], ev.ConversationCreated)
    await h.session.create_item(_user("Hello there."), None)
    await h.session.respond()
    # the voice goes to the sink, which a paced loop plays (here faster than real time)
    over = asyncio.Event()
    player = asyncio.create_task(_play_out(h.sink, over))
    done = await h.until(ev.ResponseDone, within=60)
    over.set()
    assert isinstance(done, ev.ResponseDone)
    assert done.response.status == "completed"
    async with asyncio.timeout(10):
        await player  # plays until nothing is left
    assert h.sink.playing is None
    [item] = done.response.output
    assert h.sink.played_ms(item.id) > 300
    # then, as OpenAI does after each response, the rate limits that apply (Limits()'s
    # messages per minute; this session received no message through a transport)
    limits = await h.until(ev.RateLimitsUpdated)
    assert isinstance(limits, ev.RateLimitsUpdated)
    [requests] = limits.rate_limits
    assert (requests.name, requests.limit, requests.remaining) == ("requests", 6000, 6000)
    assert h.events.index(limits) > h.events.index(done)
    # every event renders for a GA client, and none carries audio
    protocol = RealtimeProtocol(ids=lambda prefix: prefix)
    frames = [protocol.render(e) for e in h.events]
    assert all(f is not None for f in frames)
    assert not any('"response.output_audio.delta"' in (f or "") for f in frames)
    await h.session.close()


async def test_barge_in_truncates_the_answer_to_what_was_played(
    speech_engines: EngineRegistry,
) -> None:
    """The caller speaks over the answer: the unplayed audio is dropped and the history
    keeps only the words of the audio that was played."""
    h = Harness(speech_engines)
    await h.session.start()
    await h.session.update({"audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
    await h.session.create_item(_user(LONG), None)
    await h.session.respond()
    added = await h.until(ev.AudioTranscriptDelta)
    assert isinstance(added, ev.AudioTranscriptDelta)
    async with asyncio.timeout(30):  # 1.2 s of the answer heard
        while h.sink.played_ms(added.item_id) < 1200:
            await _play(h.sink, 20)
    _Speech.on = True
    try:
        for _ in range(20):  # 20 × 20 ms of "speech" at 48 kHz
            await h.session.feed_audio(bytes(1920))
        truncated = await h.until(ev.ItemTruncated)
    finally:
        _Speech.on = False
    assert isinstance(truncated, ev.ItemTruncated)
    assert truncated.item_id == added.item_id
    assert 1100 <= truncated.audio_end_ms <= 1300
    assert h.of(ev.OutputAudioCleared)
    assert h.sink.playing is None  # nothing unplayed is left
    done = await h.until(ev.ResponseDone)
    assert isinstance(done, ev.ResponseDone)
    item = h.session.conversation.get(added.item_id)
    heard = item.content[0].transcript or ""
    assert heard
    assert len(heard.split()) < len(LONG.split()) // 2, heard
    said = "".join(d.delta for d in h.of(ev.AudioTranscriptDelta))  # type: ignore[attr-defined]
    assert said.startswith(heard), (said, heard)
    await h.session.close()


async def test_commands_refused_change_nothing(speech_engines: EngineRegistry) -> None:
    h = Harness(speech_engines)
    await h.session.start()
    await h.session.create_item(_user("keep me"), None)
    with pytest.raises(ClientEventError, match="assistant"):
        await h.session.truncate("item_user", 0, 10)  # not an assistant item
    with pytest.raises(ClientEventError, match="nope"):
        await h.session.delete("nope")
    with pytest.raises(ClientEventError):
        await h.session.update({"voice": 7})
    assert [i.id for i in h.session.conversation.items] == ["item_user"]
    await h.session.close()


async def test_a_websocket_session_hears_of_its_rate_limit_only_when_it_runs_low(
    speech_engines: EngineRegistry,
) -> None:
    """Sessions other than calls get ``rate_limits.updated`` once under a quarter of the
    minute's messages is left (OpenAI's WebSocket clients never relied on it)."""
    h = Harness(speech_engines, limits=Limits(messages_per_minute=8))
    await h.session.start()
    player = asyncio.create_task(_play(h.sink, 600_000))
    await h.session.create_item(_user("One."), None)
    await h.session.respond()
    await h.until(ev.ResponseDone)
    assert not h.of(ev.RateLimitsUpdated)  # 8 of 8 left
    now = asyncio.get_running_loop().time()
    for _ in range(7):
        assert h.counters.client_frame(now, "{}") == 0
    h.events.clear()
    await h.session.respond()
    await h.until(ev.ResponseDone)
    limits = await h.until(ev.RateLimitsUpdated)
    assert isinstance(limits, ev.RateLimitsUpdated)
    [requests] = limits.rate_limits
    assert (requests.name, requests.limit) == ("requests", 8)
    assert requests.remaining <= 1
    assert 0 < requests.reset_seconds <= 60
    player.cancel()
    await h.session.close()


class _Preparing(EchoModel):
    """The echo model, noting what the session asks it to prepare; a preparation lasts
    until ``done`` is set (or it is cancelled)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []
        self.cancelled: list[str] = []
        self.done = asyncio.Event()
        self.changed = asyncio.Event()

    async def warm(self, request: ChatRequest, *, whole: bool = False) -> None:
        last = request.messages[-1] if request.messages else None
        said = f"{last.role}: {last.content}" if last is not None else ""
        self.asked.append((said, whole))
        self.changed.set()
        try:
            await self.done.wait()
        except asyncio.CancelledError:
            self.cancelled.append(said)
            raise

    async def until(self, said: str) -> None:
        async with asyncio.timeout(10):
            while not any(a == said for a, _ in self.asked):
                self.changed.clear()
                await self.changed.wait()


async def test_words_that_read_whole_replace_the_preparation_of_earlier_words(
    speech_engines: EngineRegistry,
) -> None:
    """The model prepares one partial transcript at a time; words that read as a whole
    sentence are likely the turn's, which may come before the preparation under way
    ends: that one is stopped for them, and they are prepared to where the answer
    starts (``whole``)."""
    model = _Preparing()
    h = Harness(speech_engines, model=model)
    heard = h.session.transcriber.on_partial
    heard("What is the")
    await model.until("user: What is the")
    heard("What is the capital")  # not a sentence yet: it waits its turn
    await asyncio.sleep(0.05)
    assert model.cancelled == []
    heard("What is the capital of France?")
    await model.until("user: What is the capital of France?")
    assert model.cancelled == ["user: What is the"]
    assert ("user: What is the capital of France?", True) in model.asked
    assert ("user: What is the", False) in model.asked
    assert not any(said == "user: What is the capital" for said, _ in model.asked)
    model.done.set()
    await h.session.close()


async def test_after_an_answer_the_conversation_is_prepared_for_the_next_turn(
    speech_engines: EngineRegistry,
) -> None:
    """While an answer's audio plays, the model evaluates the conversation with it, so
    the next turn's first words do not wait behind the last answer."""
    model = _Preparing()
    model.done.set()
    h = Harness(speech_engines, model=model)
    await h.session.create_item(_user("Hello there."), None)
    await h.session.respond()
    over = asyncio.Event()
    player = asyncio.create_task(_play_out(h.sink, over))
    await h.until(ev.ResponseDone, within=60)
    over.set()
    await model.until("assistant: You said: Hello there.")
    await player
    await h.session.close()
