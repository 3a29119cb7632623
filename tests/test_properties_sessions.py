"""Property-based tests of the session translators: the OpenAI Realtime protocol (events,
``session.update``) and the unified speech protocol. For any input, the only exception is
the protocol's own error type, and a refused field is named."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import DELETE, REALTIME_TEMPLATES, paths, replaced
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.protocol import RealtimeProtocol, ResponseCreate, SessionUpdate
from voxgate.protocols.realtime.session import SessionConfig, apply_update, render_session
from voxgate.protocols.speech.unified import (
    Init,
    MessageError,
    Start,
    STTProtocol,
    TTSProtocol,
)

BOUNDED = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

WORDS = [
    *("auto", "none", "required", "audio", "text", "pcm16", "g711_ulaw", "audio/pcm"),
    *("audio/pcmu", "function", "server_vad", "semantic_vad", "message", "user"),
    *("assistant", "system", "input_text", "input_audio", "output_text", "item_reference"),
    *("alloy", "inf", "realtime", "function_call", "function_call_output", "low", "AAAA"),
]
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(WORDS),
)
anything = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with any of these fields, each well-typed (mostly, so that a check deep
    in a valid event is reached) or anything at all."""
    return st.fixed_dictionaries(
        {}, optional={k: st.one_of(v, v, v, anything) for k, v in fields.items()}
    )


fmt = obj(type=st.sampled_from(["audio/pcm", "audio/pcmu", "audio/pcma"]), rate=st.integers())
turns = obj(
    type=st.sampled_from(["server_vad", "semantic_vad"]),
    threshold=st.floats(),
    prefix_padding_ms=st.integers(),
    silence_duration_ms=st.integers(),
    idle_timeout_ms=st.integers(),
    create_response=st.booleans(),
    eagerness=st.text(),
)
tool = obj(type=st.just("function"), name=st.text(), description=st.text(), parameters=anything)
choice = st.one_of(
    st.sampled_from(["auto", "none", "required"]), obj(type=st.just("function"), name=st.text())
)
part = obj(
    type=st.sampled_from(["input_text", "input_audio", "output_text", "output_audio"]),
    text=st.text(),
    audio=st.sampled_from(["AAAA", "***", ""]),
    transcript=st.text(),
)
item = obj(
    type=st.sampled_from(["message", "function_call", "function_call_output"]),
    id=st.text(max_size=40),
    role=st.sampled_from(["user", "assistant", "system"]),
    content=st.lists(part, max_size=3),
    call_id=st.text(),
    name=st.text(),
    arguments=st.text(),
    output=st.text(),
)
session = obj(
    type=st.just("realtime"),
    model=st.text(),
    instructions=st.text(),
    output_modalities=st.lists(st.sampled_from(["audio", "text"])),
    audio=obj(
        input=obj(format=fmt, transcription=obj(model=st.text()), turn_detection=turns),
        output=obj(format=fmt, voice=st.one_of(st.text(), obj(id=st.text())), speed=st.floats()),
    ),
    tools=st.lists(tool, max_size=2),
    tool_choice=choice,
    max_output_tokens=st.one_of(st.integers(), st.just("inf")),
    temperature=st.floats(),
    truncation=anything,
    turn_detection=turns,
    voice=st.text(),
    input_audio_format=st.text(),
    modalities=anything,
)
response = obj(
    conversation=st.sampled_from(["auto", "none"]),
    input=st.lists(st.one_of(item, obj(type=st.just("item_reference"), id=st.text())), max_size=2),
    instructions=st.text(),
    output_modalities=st.lists(st.sampled_from(["audio", "text"])),
    tools=st.lists(tool, max_size=2),
    tool_choice=choice,
    max_output_tokens=st.one_of(st.integers(), st.just("inf")),
    voice=anything,
    audio=obj(output=obj(format=fmt, voice=anything)),
    metadata=anything,
)
other_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "input_audio_buffer.append",
                "input_audio_buffer.commit",
                "conversation.item.truncate",
                "conversation.item.delete",
                "conversation.item.retrieve",
                "response.cancel",
                "output_audio_buffer.clear",
                "nope",
            ]
        )
    },
    optional={
        "audio": anything,
        "item_id": anything,
        "response_id": anything,
        "content_index": anything,
        "audio_end_ms": anything,
        "event_id": anything,
    },
)
REALTIME_EVENTS = {
    "session.update": st.fixed_dictionaries(
        {"type": st.just("session.update"), "session": session}
    ),
    "response.create": st.fixed_dictionaries(
        {"type": st.just("response.create")}, optional={"response": response}
    ),
    "conversation.item.create": st.fixed_dictionaries(
        {"type": st.just("conversation.item.create"), "item": item},
        optional={"previous_item_id": anything},
    ),
    "others": other_events,
    "anything": anything,
}
#: Refusals with no one field to blame: the frame itself, or the session's state.
UNFIELDED = {"invalid_json", "invalid_message"}


def _check_realtime(raw: str) -> None:
    p = RealtimeProtocol(ids=lambda prefix: f"{prefix}_1")
    try:
        event = p.receive(raw)
        if isinstance(event, SessionUpdate):
            config = apply_update(SessionConfig(), event.session)
            orjson.dumps(render_session(config, session_id="s", expires_at=0))
        if isinstance(event, ResponseCreate):
            orjson.dumps(event.params.metadata)
    except ClientEventError as exc:
        p.error(exc)  # renders
        if exc.param is None and exc.code not in UNFIELDED:
            raise AssertionError(f"refused without naming a field: {exc.code} {exc}") from exc


@pytest.mark.parametrize("kind", REALTIME_EVENTS)
def test_realtime_events_only_ever_raise_a_client_event_error(kind: str) -> None:
    @BOUNDED
    @given(REALTIME_EVENTS[kind])
    def check(event: Any) -> None:
        _check_realtime(json.dumps(event))

    check()


@BOUNDED
@given(st.one_of(st.text(), st.binary(), st.integers(0, 400)))
def test_realtime_frames_of_any_text_bytes_or_depth(data: str | bytes | int) -> None:
    if isinstance(data, int):  # nested objects of any depth inside a valid event
        data = '{"type":"session.update","session":{"truncation":' + nest(data) + "}}"
    if isinstance(data, bytes):
        p = RealtimeProtocol(ids=lambda prefix: prefix)
        with pytest.raises(ClientEventError, match="binary frames"):
            p.receive(data)
        return
    _check_realtime(data)


def nest(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


tts_messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["init", "configure"])},
        optional={
            "voice_id": anything,
            "sample_rate": st.one_of(st.integers(), anything),
            "encoding": st.one_of(st.sampled_from(["pcm16", "mulaw", "alaw"]), anything),
            "speed": st.one_of(st.floats(), anything),
            "language": anything,
            "binary": anything,
            "context_id": anything,
            "voice_settings": anything,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["input_text", "flush", "stop", "clear", "ping", "x"])},
        optional={"text": st.one_of(st.text(), anything)},
    ),
    anything,
)
stt_messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["start", "audio", "finalize", "ping", "x"])},
        optional={
            "sample_rate": st.one_of(st.integers(), anything),
            "encoding": anything,
            "data": st.one_of(st.sampled_from(["AAAA", "AAA", "***"]), anything),
            "interim_results": anything,
        },
    ),
    anything,
)


def _drive(p: TTSProtocol | STTProtocol, messages: list[Any]) -> None:
    """Feed ``messages`` to ``p``, accepting a first message as the session would; only
    the protocol's own error may come out, and it renders."""
    for m in messages:
        raw = m if isinstance(m, str | bytes) else json.dumps(m)
        try:
            event = p.receive(raw)
        except MessageError as exc:
            p.error(exc.code, exc.public_message)
            continue
        if isinstance(event, Init | Start):
            p.start("ctx", event.config)  # type: ignore[arg-type]


@BOUNDED
@given(st.lists(st.one_of(tts_messages, st.text(), st.binary()), min_size=1, max_size=4))
def test_tts_messages_only_ever_raise_a_message_error(messages: list[Any]) -> None:
    _drive(TTSProtocol(max_text_chars=100), messages)


@BOUNDED
@given(st.lists(st.one_of(stt_messages, st.text(), st.binary()), min_size=1, max_size=4))
def test_stt_messages_only_ever_raise_a_message_error(messages: list[Any]) -> None:
    _drive(STTProtocol(max_audio_bytes=64), messages)


REALTIME_FIELDS = [(i, p) for i, t in enumerate(REALTIME_TEMPLATES) for p in paths(t)]


@BOUNDED
@given(st.sampled_from(REALTIME_FIELDS), st.one_of(anything, st.just(DELETE)))
def test_any_one_field_of_a_valid_event_may_be_wrong(field: Any, value: Any) -> None:
    """Every field of every event, one at a time, replaced by anything (or removed)."""
    index, path = field
    _check_realtime(json.dumps(replaced(REALTIME_TEMPLATES[index], path, value)))


def test_every_realtime_template_is_valid() -> None:
    for template in REALTIME_TEMPLATES:
        _check_realtime(json.dumps(template))
