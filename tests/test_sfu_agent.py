"""An AI voice in a call: a publisher asks a spoken question, a subscriber hears the answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from tests.conftest import GatewayFactory, settled, wait_for
from tests.test_sfu import rms

from voxgate.audio import read_wav, resample
from voxgate.testing.webrtc import PcmTrack, Recorder, SfuPeer

DATA = Path(__file__).parent / "data"
APP = "/v1/apps/default"


async def watch(http: aiohttp.ClientSession, url: str, into: list[dict[str, object]]) -> None:
    """Read an agent's Server-Sent Events until the stream ends."""
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event = "message"
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = orjson.loads(line[6:])
                into.append(data if event == "message" else {"type": event})
                event = "message"


def speech_48k(name: str) -> bytes:
    wav = read_wav(DATA / name)
    return resample(wav.pcm, wav.sample_rate, 48000)


async def caller_with_agent(
    http: aiohttp.ClientSession, base: str, session: dict[str, object]
) -> tuple[SfuPeer, PcmTrack, int, dict[str, Any]]:
    """A caller publishing ``mic``, and the answer to an ``agents/new`` listening to it."""
    caller = SfuPeer(http, base)
    await caller.open()
    mic = PcmTrack()
    await caller.publish("mic", mic)
    listen = [{"sessionId": caller.session_id, "trackName": "mic"}]
    status, body = await caller.call("POST", "/agents/new", {"listen": listen, "session": session})
    return caller, mic, status, body


async def test_agent_in_a_call_answers_a_spoken_question(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    base = gw.base + APP
    td = {"type": "server_vad", "silence_duration_ms": 500}
    session = {"instructions": "Answer briefly.", "audio": {"input": {"turn_detection": td}}}
    caller, mic, status, body = await caller_with_agent(http, base, session)
    assert status == 201, body
    agent_id, agent_session, agent_track = body["agentId"], body["sessionId"], body["trackName"]

    watched: list[dict[str, object]] = []
    watcher = asyncio.create_task(watch(http, f"{base}/agents/{agent_id}/events", watched))

    listener = SfuPeer(http, base)
    await listener.open()
    pulled = await listener.pull((agent_session, agent_track))
    mid = pulled["tracks"][0]["mid"]
    await wait_for(lambda: mid in listener.received)
    ears = Recorder(listener.received[mid])

    mic.play(
        speech_48k("arctic_a0007.wav")
    )  # "And you always want to see it in the superlative degree."

    # the answer is spoken into the agent's track: more than a second of sound arrives
    def loud_ms() -> int:
        pcm = bytes(ears.pcm)
        return sum(20 for i in range(0, len(pcm) - 1920, 1920) if rms(pcm[i : i + 1920]) > 500)

    await wait_for(lambda: loud_ms() > 1000, 30)

    status, state = await caller.call("GET", f"/agents/{agent_id}")
    assert status == 200
    roles = [line["role"] for line in state["transcript"]]
    assert roles[0] == "user"
    assert "superlative" in state["transcript"][0]["text"]
    await wait_for(
        lambda: any(x.role == "assistant" for x in gw.services.media.agents[agent_id].transcript),
        20,
    )

    status, closed = await caller.call("POST", f"/agents/{agent_id}/close")
    assert status == 200
    assert closed["closed"] is True
    # the event stream saw the turn and the answer, then the end
    async with asyncio.timeout(5):
        await watcher
    types = [e["type"] for e in watched]
    assert types[-1] == "close"
    for wanted in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "conversation.item.input_audio_transcription.completed",
        "response.output_audio_transcript.delta",
        "response.done",
    ):
        assert wanted in types, types
    assert not any("audio.delta" in t for t in types)  # no audio in the stream
    status, _gone = await caller.call("GET", f"/agents/{agent_id}/events")
    assert status == 404

    status, _again = await caller.call("POST", f"/agents/{agent_id}/close")
    assert status == 200
    assert agent_id not in gw.services.media.agents
    await ears.stop()
    await listener.close()
    await caller.close()


async def test_barge_in_in_a_call_truncates_the_history_to_what_was_played(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The caller speaks over the agent's answer: the answer stops in the call, and the
    agent's history keeps only what was played into the call."""
    gw = await gateway()
    base = gw.base + APP
    td = {"type": "server_vad", "silence_duration_ms": 500}
    session = {"audio": {"input": {"turn_detection": td}}}
    caller, mic, status, body = await caller_with_agent(http, base, session)
    assert status == 201, body
    agent_id = body["agentId"]
    watched: list[dict[str, object]] = []
    watcher = asyncio.create_task(watch(http, f"{base}/agents/{agent_id}/events", watched))
    question = speech_48k("arctic_a0007.wav")
    mic.play(question)
    await wait_for(
        lambda: any(e["type"] == "response.output_audio_transcript.delta" for e in watched), 30
    )
    agent = gw.services.media.agents[agent_id]
    answer_item = next(
        e["item_id"] for e in watched if e["type"] == "response.output_audio_transcript.delta"
    )
    await wait_for(lambda: agent.playout.played_ms(str(answer_item)) > 800, 20)  # type: ignore[attr-defined]
    mic.play(question)  # over the answer
    await wait_for(lambda: any(e["type"] == "conversation.item.truncated" for e in watched), 20)
    truncated = next(e for e in watched if e["type"] == "conversation.item.truncated")
    assert truncated["item_id"] == answer_item
    played = int(truncated["audio_end_ms"])  # type: ignore[call-overload]
    assert 800 <= played < 4000, truncated
    assert any(e["type"] == "output_audio_buffer.cleared" for e in watched)

    def answer_done() -> list[dict[str, object]]:
        return [
            e["response"]  # type: ignore[misc]
            for e in watched
            if e["type"] == "response.done" and e["response"]["output"][0]["id"] == answer_item  # type: ignore[index]
        ]

    # the truncation may reach the watcher before the cancelled response's end does
    await wait_for(lambda: bool(answer_done()), 10)
    [done] = answer_done()
    assert done["status"] == "cancelled"  # type: ignore[index]
    # the history holds the words of the audio the call heard, not the whole answer
    item = agent._voice.conversation.get(str(answer_item))  # type: ignore[attr-defined, union-attr]
    heard = item.content[0].transcript
    said = "".join(
        str(e["delta"])
        for e in watched
        if e.get("type") == "response.output_audio_transcript.delta"
        and e.get("item_id") == answer_item
    )
    assert heard
    assert said.startswith(heard)
    assert len(heard) < len(said), (heard, said)
    status, _closed = await caller.call("POST", f"/agents/{agent_id}/close")
    assert status == 200
    async with asyncio.timeout(5):
        await watcher
    await caller.close()


async def test_agents_take_connection_slots_and_leave_at_the_session_limit(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """An agent is a session like any other: it takes one of the gateway's connection
    slots (the next one is refused with 429) and leaves the call at max_session_seconds,
    leaving one record (4003) and its slot."""
    limits = "limits = { max_connections = 1, max_session_seconds = 2 }"
    gw = await gateway(f"[accounts.local.gateways.default]\n{limits}\n")
    base = gw.base + APP
    caller, _mic, status, body = await caller_with_agent(http, base, {})
    assert status == 201, body
    agent_id = body["agentId"]
    listen = [{"sessionId": caller.session_id, "trackName": "mic"}]
    status, refused = await caller.call("POST", "/agents/new", {"listen": listen})
    assert status == 429, refused
    assert refused["errorCode"] == "rate_limited", refused
    await wait_for(lambda: agent_id not in gw.services.media.agents, 10)
    status, _gone = await caller.call("GET", f"/agents/{agent_id}")
    assert status == 404
    status, again = await caller.call("POST", "/agents/new", {"listen": listen})
    assert status == 201, again  # the slot came back
    status, _closed = await caller.call("POST", f"/agents/{again['agentId']}/close")
    assert status == 200
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs") as r:
        records = {x["session_id"]: x for x in (await r.json())["records"]}
    record = records[agent_id]
    assert (record["kind"], record["transport"]) == ("agent", "sfu")
    assert (record["client_close_code"], record["error"]) == (4003, "session_too_long")
    await caller.close()
