"""The realtime translator, session object, turn state machine, conversation and chat stream,
without sockets; the turn detector runs on the audio clock, so a test feeds it scores."""

from __future__ import annotations

import itertools
from dataclasses import replace

import orjson
import pytest

from official_types import problems
from voxgate.audio import Encoding
from voxgate.core.realtime.conversation import Conversation, SpokenText, chat_messages
from voxgate.core.realtime.turns import (
    IdleTimeout,
    State,
    TurnDetector,
    TurnEnded,
    TurnStarted,
    completeness,
)
from voxgate.engines.llm import EchoModel, LLMRegistry, UnknownModel
from voxgate.protocols.chat import (
    ChatDone,
    ChatMessage,
    ChatProtocolError,
    ChatRequest,
    ChatStreamParser,
    FunctionSpec,
    TextDelta,
    ToolCallDelta,
    request_body,
)
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.protocol import (
    AudioAppend,
    ItemCreate,
    RealtimeProtocol,
    ResponseCreate,
)
from voxgate.protocols.realtime.session import (
    SessionConfig,
    TurnDetection,
    apply_update,
    render_session,
)


def ids() -> RealtimeProtocol:
    counter = itertools.count()
    return RealtimeProtocol(ids=lambda prefix: f"{prefix}_{next(counter)}", max_audio_bytes=1000)


def test_receive_parses_events_and_names_bad_fields() -> None:
    p = ids()
    ev = p.receive('{"type": "input_audio_buffer.append", "audio": "AAEC", "event_id": "e1"}')
    assert ev == AudioAppend("e1", b"\x00\x01\x02")
    create = p.receive(
        orjson.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
            }
        ).decode()
    )
    assert isinstance(create, ItemCreate)
    assert create.item.id == "item_0"
    assert create.item.text() == "hi"
    rc = p.receive(
        '{"type": "response.create", "response": {"conversation": "none", "modalities": ["text"], "max_response_output_tokens": 5}}'
    )
    assert isinstance(rc, ResponseCreate)
    assert rc.params.output_modalities == ("text",)
    assert rc.params.max_output_tokens == 5
    with pytest.raises(ClientEventError) as exc:
        p.receive(
            '{"type": "input_audio_buffer.append", "audio": "'
            + "A" * 2000
            + '", "event_id": "big"}'
        )
    assert (exc.value.code, exc.value.param, exc.value.event_id) == (
        "audio_too_large",
        "audio",
        "big",
    )
    with pytest.raises(ClientEventError) as exc:
        p.receive(
            '{"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "x"}, "event_id": "e2"}'
        )
    assert (exc.value.param, exc.value.event_id) == ("item.call_id", "e2")
    with pytest.raises(ClientEventError):
        p.receive("[1, 2]")


def test_render_error_and_beta_names() -> None:
    p = ids()
    frame = orjson.loads(
        p.error(ClientEventError("item_not_found", "no such item", param="item_id", event_id="e9"))
    )
    assert frame == {
        "type": "error",
        "event_id": "event_0",
        "error": {
            "type": "invalid_request_error",
            "code": "item_not_found",
            "message": "no such item",
            "param": "item_id",
            "event_id": "e9",
        },
    }
    p.beta = True
    delta = p.audio_delta(response_id="r", item_id="i", output_index=0, audio=b"")
    assert orjson.loads(delta)["type"] == "response.audio.delta"
    item = Item(
        "i", "message", role="assistant", content=[ContentPart("output_audio", transcript="hi")]
    )
    added = p.event("conversation.item.added", previous_item_id=None, item=p.item(item))
    assert orjson.loads(added)["type"] == "conversation.item.created"
    assert p.item(item)["content"] == [{"type": "audio", "transcript": "hi"}]


def test_session_update_is_partial_all_or_nothing_and_beta_flat() -> None:
    c = apply_update(
        SessionConfig(),
        {
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}
            }
        },
    )
    assert c.turn_detection == TurnDetection(silence_duration_ms=300)
    c2 = apply_update(c, {"instructions": "x"})
    assert c2.turn_detection == c.turn_detection  # partial: the rest is kept
    with pytest.raises(ClientEventError) as exc:
        apply_update(c2, {"instructions": "changed", "speed": 9})
    assert exc.value.param == "session.audio.output.speed"
    beta = apply_update(
        SessionConfig(),
        {
            "input_audio_format": "g711_alaw",
            "voice": "alloy",
            "modalities": ["text", "audio"],
            "max_response_output_tokens": "inf",
        },
    )
    assert beta.input_format.encoding is Encoding.ALAW
    assert beta.voice == "alloy"  # kept: the engine maps it (voice_for), the agent echoes that
    assert beta.output_modalities == ("audio",)
    flat = render_session(beta, session_id="s", expires_at=0, beta=True, voice="joe")
    assert flat["input_audio_format"] == "g711_alaw"
    assert flat["voice"] == "alloy"
    unnamed = render_session(
        replace(beta, voice=None), session_id="s", expires_at=0, beta=True, voice="joe"
    )
    assert unnamed["voice"] == "joe"  # the engine's voice when the config names none
    ga = render_session(beta, session_id="s", expires_at=0)
    assert ga["audio"]["input"]["format"] == {"type": "audio/pcma"}
    sem = apply_update(
        SessionConfig(),
        {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}},
    )
    assert render_session(sem, session_id="s", expires_at=0)["audio"]["input"][
        "turn_detection"
    ] == {
        "type": "semantic_vad",
        "create_response": True,
        "interrupt_response": True,
        "eagerness": "low",
    }
    with pytest.raises(ClientEventError) as exc:
        apply_update(
            SessionConfig(),
            {"tools": [{"name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
        )
    assert exc.value.param == "session.tool_choice"


def feed(d: TurnDetector, score: float, ms: float) -> list[object]:
    out: list[object] = []
    for _ in range(round(ms / d.frame_ms)):
        out += d.frame(score)
    return out


def test_server_vad_turns_on_the_audio_clock() -> None:
    d = TurnDetector(TurnDetection(prefix_padding_ms=300, silence_duration_ms=500), frame_ms=32)
    assert feed(d, 0.1, 1024) == []
    started = feed(d, 0.9, 960)
    assert started == [TurnStarted(1024 - 300)]
    assert d.state is State.SPEAKING
    assert feed(d, 0.1, 448) == []  # a pause shorter than the window
    assert feed(d, 0.9, 64) == []
    ended = feed(d, 0.1, 512)
    assert len(ended) == 1
    assert isinstance(ended[0], TurnEnded)
    assert ended[0].audio_end_ms == round(d.position_ms)
    # a click shorter than the minimum speech does not start a turn
    assert feed(d, 0.9, 32) == []
    assert feed(d, 0.1, 64) == []


def test_idle_timeout_after_the_answer_has_played() -> None:
    d = TurnDetector(TurnDetection(idle_timeout_ms=5000), frame_ms=32)
    d.arm_idle(after_ms=1000)  # the answer plays for another second
    assert feed(d, 0.0, 5984) == []
    fired = feed(d, 0.0, 64)
    assert len(fired) == 1
    assert isinstance(fired[0], IdleTimeout)
    assert fired[0].audio_start_ms == 1000
    assert feed(d, 0.0, 10000) == []  # once


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("", None),
        ("what time is it", True),
        ("I want to go to the", False),
        ("so um", False),
        ("yes", True),
        ("because", False),
        ("Is it late?", True),
    ],
)
def test_completeness(text: str, verdict: bool | None) -> None:
    assert completeness(text) is verdict


def test_semantic_vad_waits_longer_for_an_unfinished_thought() -> None:
    d = TurnDetector(TurnDetection(type="semantic_vad", eagerness="high"), frame_ms=32)
    feed(d, 0.9, 320)
    d.set_transcript("I would like to order a")
    assert feed(d, 0.1, 1500) == []  # high eagerness still waits 2 s for "a …"
    d.set_transcript("I would like to order a pizza")
    ended = feed(d, 0.1, 256)
    assert len(ended) == 1
    assert isinstance(ended[0], TurnEnded)
    d = TurnDetector(TurnDetection(type="semantic_vad", eagerness="low"), frame_ms=32)
    feed(d, 0.9, 320)
    d.set_transcript("I would like to order a pizza")
    assert feed(d, 0.1, 900) == []  # low eagerness lets the speaker take their time


def test_conversation_insert_delete_truncate() -> None:
    conv = Conversation()
    assert (
        conv.add(Item("a", "message", role="user", content=[ContentPart("input_text", text="one")]))
        is None
    )
    assert (
        conv.add(Item("b", "message", role="user", content=[ContentPart("input_text", text="two")]))
        == "a"
    )
    assert (
        conv.add(
            Item("c", "message", role="system", content=[ContentPart("input_text", text="sys")]),
            "root",
        )
        is None
    )
    assert [i.id for i in conv.items] == ["c", "a", "b"]
    with pytest.raises(ClientEventError):
        conv.add(Item("d", "message", role="user"), "zzz")
    assert [i.id for i in conv.items] == ["c", "a", "b"]  # nothing changed
    answer = Item(
        "e", "message", role="assistant", content=[ContentPart("output_audio", transcript="")]
    )
    conv.add(answer)
    spoken = SpokenText()
    spoken.add("You said one two.", 1000)
    spoken.add("And then four words more.", 1000)
    conv.spoken["e"] = spoken
    conv.truncate("e", 0, 1500)
    assert answer.content[0].transcript == "You said one two. And then"
    with pytest.raises(ClientEventError) as exc:
        conv.truncate("e", 0, 1600)  # past what is left
    assert exc.value.param == "audio_end_ms"
    conv.delete("a")
    msgs = chat_messages("be brief", conv.items)
    assert [m.role for m in msgs] == ["system", "system", "user", "assistant"]


def test_chat_request_body_and_stream_parser() -> None:
    req = ChatRequest(
        model="m",
        messages=(ChatMessage("user", "hi"),),
        tools=(FunctionSpec("f", "d", {"type": "object"}),),
        tool_choice="f",
        named=True,
        max_tokens=9,
    )
    body = request_body(req)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 9
    p = ChatStreamParser()
    assert p.feed(b": keep-alive\n") == []
    assert p.feed(b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n') == [TextDelta("Hel")]
    assert p.feed(
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{}"}}]}}]}'
    ) == [ToolCallDelta(0, "c", "f", "{}")]
    assert (
        p.feed(
            b'data: {"choices":[{"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
        )
        == []
    )
    assert p.feed(b"data: [DONE]") == [ChatDone("length", 3, 2)]
    with pytest.raises(ChatProtocolError):
        ChatStreamParser().feed(b'data: {"error": {"message": "overloaded"}}')
    with pytest.raises(ChatProtocolError):
        ChatStreamParser().end()  # the stream stopped before a finish reason


async def test_echo_model_and_registry() -> None:
    echo = EchoModel()
    req = ChatRequest(
        model="voxgate/echo",
        messages=(ChatMessage("system", "x"), ChatMessage("user", "hello world")),
    )
    events = [e async for e in echo.stream(req)]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "You said: hello world."
    assert events[-1] == ChatDone("stop", 3, 4)
    tools = ChatRequest(
        model="e",
        messages=(ChatMessage("user", "x"),),
        tools=(FunctionSpec("lookup"),),
        tool_choice="required",
    )
    called = [e async for e in echo.stream(tools)]
    assert called[0] == ToolCallDelta(0, "call_echo_1", "lookup", "{}")
    reg = LLMRegistry({})
    assert isinstance(reg.resolve("voxgate/echo"), EchoModel)
    with pytest.raises(UnknownModel) as exc:
        reg.resolve("nowhere/model")
    assert "nowhere" in exc.value.public_message
    with pytest.raises(UnknownModel):
        reg.resolve("just-a-name")
    await reg.close()


def test_session_renders_what_the_official_types_take() -> None:
    """``transcription`` is null or names its model (Pipecat's types refuse a null model);
    ``truncation`` is one of the three shapes; a beta session's model is one of OpenAI's
    names or null; content-part events type their part text or audio."""
    on = render_session(SessionConfig(), session_id="s", expires_at=0, stt="pocketsphinx")
    assert on["audio"]["input"]["transcription"]["model"] == "pocketsphinx"
    named = apply_update(SessionConfig(), {"input_audio_transcription": {"model": "whisper-1"}})
    beta = render_session(named, session_id="s", expires_at=0, beta=True, stt="pocketsphinx")
    assert beta["input_audio_transcription"]["model"] == "whisper-1"
    assert beta["model"] is None  # voxgate/echo is not a name the beta schema knows
    bare = render_session(replace(named, model="gpt-realtime"), session_id="s", expires_at=0)
    assert bare["model"] == "gpt-realtime"
    off = apply_update(SessionConfig(), {"audio": {"input": {"transcription": None}}})
    assert (
        render_session(off, session_id="s", expires_at=0)["audio"]["input"]["transcription"] is None
    )
    ratio = {
        "type": "retention_ratio",
        "retention_ratio": 0.8,
        "token_limits": {"post_instructions": 5000},
    }
    assert apply_update(SessionConfig(), {"truncation": ratio}).truncation == ratio
    assert apply_update(SessionConfig(), {"truncation": "disabled"}).truncation == "disabled"
    for bad, param in [
        ({"x": 1}, "session.truncation.type"),
        ({"type": "retention_ratio"}, "session.truncation.retention_ratio"),
        ({"type": "retention_ratio", "retention_ratio": 2}, "session.truncation.retention_ratio"),
        (
            {
                "type": "retention_ratio",
                "retention_ratio": 0.5,
                "token_limits": {"post_instructions": "x"},
            },
            "session.truncation.token_limits.post_instructions",
        ),
        ("sometimes", "session.truncation"),
    ]:
        with pytest.raises(ClientEventError) as exc:
            apply_update(SessionConfig(), {"truncation": bad})
        assert exc.value.param == param
    p = ids()
    assert p.part(ContentPart("output_audio", transcript="hi")) == {
        "type": "audio",
        "transcript": "hi",
    }
    assert p.part(ContentPart("output_text", text="hi")) == {"type": "text", "text": "hi"}
    assert p.knows("conversation.item.done")
    p.beta = True
    assert not p.knows("conversation.item.done")


def test_the_official_types_check_finds_refusals() -> None:
    """The autouse check (``official_types``) refuses what the official types refuse."""
    ok = '{"type":"input_audio_buffer.cleared","event_id":"e","voxgate_extra":1}'
    null_id = '{"type":"output_audio_buffer.cleared","event_id":"e","response_id":null}'
    part = (
        '{"type":"response.content_part.added","event_id":"e","response_id":"r","item_id":"i",'
        '"output_index":0,"content_index":0,"part":{"type":"output_text","text":""}}'
    )
    rate = (
        '{"type":"response.created","event_id":"e","response":{"audio":{"output":'
        '{"format":{"type":"audio/pcm","rate":16000}}}}}'
    )
    assert problems([(False, ok), (False, rate), (True, ok)]) == []
    found = problems([(False, null_id), (False, part), (True, '{"type":"nope"}')])
    assert [f.split(" ", 1)[0] for f in found] == [
        "OutputAudioBufferCleared",
        "ResponseContentPartAddedEvent",
        "no",
    ]
