"""Property tests of the sans-I/O translators that read what peers and upstreams send.

For any input each translator either answers or raises its own error, never anything
else: payload capture (bounded output, no secret survives), the usage meters (counters
within their caps), the chat-completions stream parser (only ``ChatProtocolError``), the
relay's credential and upstream-request translators (only ``BadRequest``) and the cloud
speech providers' translators (failures are their own ``ProviderFailed`` /
``RecognitionFailed`` values). Bounded and deterministic: hypothesis derandomized.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from voxgate.engines.base import Finalized, RecognitionFailed, SpeechStarted, Transcript
from voxgate.errors import BadRequest
from voxgate.protocols.chat import (
    ChatDone,
    ChatProtocolError,
    ChatStreamParser,
    TextDelta,
    ToolCallDelta,
)
from voxgate.protocols.relay.auth import parse_subprotocols, read_credentials, select_subprotocol
from voxgate.protocols.relay.capture import MAX_PARSE_BYTES, Capture, redact_text
from voxgate.protocols.relay.providers import (
    BUILTIN_PROVIDERS,
    Provider,
    build_upstream_request,
    validate_path,
)
from voxgate.protocols.relay.usage import (
    MAX_COUNT,
    MAX_TOKENS_PER_REPORT,
    GeminiUsageMeter,
    OpenAIUsageMeter,
    UsageMeter,
)
from voxgate.protocols.speech.providers import (
    AudioOut,
    CartesiaTTS,
    DeepgramSTT,
    DeepgramTTS,
    ElevenLabsTTS,
    ProviderFailed,
    UtteranceDone,
)
from voxgate.scrub import SecretScrubber
from voxgate.settings import ProviderAuth

PROPS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- values a peer can send --------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


def deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return '{"type":"x","audio":' * depth + '"' + "QUJD" * 40 + '"' + "}" * depth


deep_texts = st.builds(
    deep, st.integers(min_value=0, max_value=3000), st.sampled_from(["list", "object", "audio"])
)
huge_texts = st.builds(
    lambda n, json_: ('{"text":"' + "é" * n + '"}') if json_ else "A" * n,
    st.sampled_from([0, 1, 127, 128, 5000, 70_000, MAX_PARSE_BYTES + 1]),
    st.booleans(),
)
frames = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v)),
    deep_texts,
    huge_texts,
)


# --- capture -----------------------------------------------------------------------------

#: The longest marker a capture appends or stores instead of a payload.
MARKER_BYTES = 100

secrets_plain = st.builds(
    lambda body: "sk-" + body,
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
        min_size=9,
        max_size=40,
    ),
)
secrets_odd = st.builds(
    lambda body: "sk-" + body,
    st.text(
        alphabet=st.characters(blacklist_characters="*", blacklist_categories=("Cs",)),
        min_size=9,
        max_size=30,
    ),
)


@PROPS
@given(frame=frames, max_bytes=st.integers(min_value=64, max_value=4096))
def test_capture_never_fails_and_stays_bounded(frame: str | bytes, max_bytes: int) -> None:
    cap = Capture(max_frames=10, max_bytes=max_bytes, scrub=SecretScrubber(["configured-1"]))
    cap.add("client", 0.0, frame)
    cap.add("upstream", 0.1, frame)
    for f in cap.frames:
        assert len(f.payload.encode()) <= max_bytes + MARKER_BYTES
        if isinstance(frame, bytes):
            assert (f.kind, f.size, f.payload) == ("binary", len(frame), "")


def place(secret: str, text: str, where: int, how: str) -> str:
    """``secret`` put into ``text``: spliced in at ``where``, as a JSON value or a key."""
    if how == "splice":
        at = where % (len(text) + 1)
        return text[:at] + secret + text[at:]
    if how == "value":
        return json.dumps({"type": "error", "error": {"message": f"key {secret} invalid"}})
    if how == "key":
        return json.dumps({secret: [text, {"n": 1}]}, ensure_ascii=False)
    return json.dumps([{"audio": text, "deeper": [[[[secret]]]]}] * 3)


@PROPS
@given(
    secret=secrets_plain,
    text=st.one_of(st.text(max_size=300), deep_texts, json_values.map(json.dumps)),
    where=st.integers(min_value=0),
    how=st.sampled_from(["splice", "value", "key", "nested"]),
    max_bytes=st.integers(min_value=64, max_value=2048),
)
def test_a_configured_secret_never_survives_capture(
    secret: str, text: str, where: int, how: str, max_bytes: int
) -> None:
    scrub = SecretScrubber(["other-secret-value", secret])
    payload = redact_text(place(secret, text, where, how), max_bytes, scrub)
    assert secret not in payload


@PROPS
@given(secret=secrets_odd, max_bytes=st.integers(min_value=64, max_value=2048))
def test_a_secret_with_json_escapes_never_survives_capture(secret: str, max_bytes: int) -> None:
    scrub = SecretScrubber([secret])
    for text in (
        json.dumps({"message": f"Incorrect API key provided: {secret}"}),
        json.dumps({"message": f"Incorrect API key provided: {secret}"}, ensure_ascii=False),
        f"not json: {secret} …",
    ):
        payload = redact_text(text, max_bytes, scrub)
        assert secret not in payload
        assert json.dumps(secret)[1:-1] not in payload
        assert json.dumps(secret, ensure_ascii=False)[1:-1] not in payload


# --- usage meters ------------------------------------------------------------------------

counts = st.one_of(scalars, st.lists(scalars, max_size=2), st.just(2**63), st.just(-1))


def usage_frames(kind: str) -> st.SearchStrategy[str | bytes]:
    openai = st.builds(
        lambda i, o, t: json.dumps(
            {
                "type": "response.done",
                "response": {"usage": {"input_tokens": i, "output_tokens": o, "total_tokens": t}},
            }
        ),
        counts,
        counts,
        counts,
    )
    gemini = st.builds(
        lambda p, r, t, binary: (lambda s: s.encode() if binary else s)(
            json.dumps(
                {
                    "usageMetadata": {
                        "promptTokenCount": p,
                        "responseTokenCount": r,
                        "totalTokenCount": t,
                    }
                }
            )
        ),
        counts,
        counts,
        counts,
        st.booleans(),
    )
    odd = st.one_of(
        json_values.map(lambda v: json.dumps({"type": "response.done", "response": v})),
        json_values.map(lambda v: json.dumps({"usageMetadata": v})),
        st.text().map(lambda t: '"response.done"' + t),
        st.binary().map(lambda b: b'{"usageMetadata"' + b),
    )
    return st.one_of(frames, openai if kind == "openai" else gemini, odd)


@PROPS
@given(
    kind=st.sampled_from(["openai", "gemini", "none"]),
    data=st.data(),
)
def test_usage_meters_stay_within_their_caps(kind: str, data: st.DataObject) -> None:
    meter: UsageMeter = {"openai": OpenAIUsageMeter, "gemini": GeminiUsageMeter}.get(
        kind, UsageMeter
    )()
    sent = data.draw(st.lists(usage_frames(kind), max_size=8))
    for frame in sent:
        if isinstance(frame, str):
            meter.feed_text(frame)
        else:
            meter.feed_binary(frame)
    agent = data.draw(st.lists(st.tuples(st.integers(), st.integers()), max_size=3))
    for inp, out in agent:
        meter.add(inp, out)
    reports = len(sent) + len(agent)
    for value in (meter.input_tokens, meter.output_tokens, meter.total_tokens):
        assert type(value) is int
        assert 0 <= value <= min(MAX_COUNT, reports * 2 * MAX_TOKENS_PER_REPORT)


def test_usage_totals_saturate() -> None:
    meter = OpenAIUsageMeter()
    meter.input_tokens = MAX_COUNT - 1
    meter.add(MAX_TOKENS_PER_REPORT * 5, 3)
    assert meter.input_tokens == MAX_COUNT
    assert meter.output_tokens == 3


# --- the chat-completions stream parser --------------------------------------------------

chunk_shapes = st.builds(
    lambda content, index, id_, name, args, finish, p, c, choice_kind: {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "content": content,
                    "tool_calls": [
                        {"index": index, "id": id_, "function": {"name": name, "arguments": args}}
                    ],
                },
                "finish_reason": finish,
            }
        ]
        if choice_kind == "list"
        else content,
        "usage": {"prompt_tokens": p, "completion_tokens": c},
    },
    *([json_values] * 8),
    st.sampled_from(["list", "other"]),
)
lines = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: b"data: " + json.dumps(v).encode()),
    chunk_shapes.map(lambda v: b"data: " + json.dumps(v).encode()),
    deep_texts.map(lambda t: b"data: " + t.encode()),
    st.sampled_from([b"data: [DONE]", b": keep-alive", b"", b"event: x", b"data:"]),
)


@settings(PROPS, max_examples=200)
@given(sent=st.lists(lines, max_size=8))
def test_chat_stream_parser_raises_only_its_own_error(sent: list[bytes]) -> None:
    parser = ChatStreamParser()
    events: list[Any] = []
    try:
        for line in sent:
            events += parser.feed(line)
        events += parser.end()
    except ChatProtocolError as exc:
        error: ChatProtocolError | None = exc
    else:
        error = None
    if error is not None:
        assert error.public_message
        return
    for ev in events:
        if isinstance(ev, TextDelta):
            assert isinstance(ev.text, str)
            assert ev.text
        elif isinstance(ev, ToolCallDelta):
            assert type(ev.index) is int
            assert ev.index >= 0
            assert isinstance(ev.arguments, str)
            assert ev.id is None or isinstance(ev.id, str)
            assert ev.name is None or isinstance(ev.name, str)
        else:
            assert isinstance(ev, ChatDone)
            assert isinstance(ev.finish_reason, str)
            assert 0 <= ev.input_tokens <= MAX_TOKENS_PER_REPORT
            assert 0 <= ev.output_tokens <= MAX_TOKENS_PER_REPORT


# --- the relay's credential and upstream-request translators -----------------------------

header_names = st.one_of(
    st.sampled_from(
        [
            "Authorization",
            "voxgate-authorization",
            "cf-aig-authorization",
            "xi-api-key",
            "x-goog-api-key",
            "X-API-Key",
            "OpenAI-Beta",
            "Cartesia-Version",
            "Cookie",
        ]
    ),
    st.text(max_size=20),
)
header_values = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda s, v: f"{s} {v}",
        st.sampled_from(["Bearer", "Token", "Key", "bearer"]),
        st.text(max_size=30),
    ),
)
subprotocol_values = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda p, v: p + v,
            st.sampled_from(
                [
                    "voxgate-authorization.",
                    "cf-aig-authorization.",
                    "openai-insecure-api-key.",
                    "xi-api-key.",
                    "fal-api-key.",
                    "token",
                    "realtime, ",
                ]
            ),
            st.text(max_size=20),
        ),
    ),
    max_size=6,
)
custom_provider = st.builds(
    lambda paths, header, fmt, query: Provider(
        name="custom",
        base_url="wss://up.example/ws",
        auth=ProviderAuth(header=header, format=fmt, query=query),
        paths=tuple(paths),
    ),
    st.lists(st.text(max_size=12), max_size=3),
    st.one_of(st.none(), st.text(min_size=1, max_size=12)),
    st.text(max_size=20),
    st.one_of(st.none(), st.text(min_size=1, max_size=10)),
)
providers = st.one_of(st.sampled_from(list(BUILTIN_PROVIDERS.values())), custom_provider)


@PROPS
@given(
    provider=providers,
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
    offered=subprotocol_values,
    query_names=st.lists(st.text(max_size=12), max_size=5),
    path=st.one_of(
        st.text(max_size=60), st.sampled_from(["", "listen", "a/../b", "tts/websocket"])
    ),
    query=st.text(max_size=80),
    stored_key=st.one_of(st.none(), st.text(max_size=30)),
    upstream_selected=st.one_of(st.none(), st.text(max_size=20)),
)
def test_relay_translators_raise_only_bad_request(
    provider: Provider,
    headers: list[tuple[str, str]],
    offered: list[str],
    query_names: list[str],
    path: str,
    query: str,
    stored_key: str | None,
    upstream_selected: str | None,
) -> None:
    entries = parse_subprotocols(offered)
    assert all(e and e == e.strip() and "," not in e for e in entries)
    creds = read_credentials(
        provider, CIMultiDict(headers), entries, dict.fromkeys(query_names, "k")
    )
    assert set(creds.upstream_subprotocols) <= set(entries)
    assert creds.gateway_entry is None or creds.gateway_entry not in creds.upstream_subprotocols
    chosen = select_subprotocol(creds, upstream_selected)
    assert chosen is None if not entries else chosen in entries
    try:
        validate_path(provider, path)
        req = build_upstream_request(
            provider,
            path=path,
            query_string=query,
            client_headers=headers,
            upstream_subprotocols=creds.upstream_subprotocols,
            client_key=creds.client_key,
            client_key_param=creds.client_key_param,
            drop_query=creds.drop_query,
            stored_key=stored_key,
        )
    except BadRequest:
        return  # the one error these translators may raise
    assert req.url.startswith(provider.base_url.rstrip("/"))
    forwarded = {h.lower() for h in provider.forward_headers}
    auth_header = (provider.auth.header or "").lower()
    for name, _ in req.headers:
        assert name.lower() in forwarded or name.lower() == auth_header


# --- the cloud speech providers' translators ---------------------------------------------

alternatives = st.one_of(
    json_values,
    st.lists(
        st.one_of(
            json_values,
            st.fixed_dictionaries({"transcript": json_values, "confidence": json_values}),
        ),
        max_size=2,
    ),
)
deepgram_results = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["Results", "SpeechStarted"]),
        "channel": st.one_of(json_values, st.fixed_dictionaries({"alternatives": alternatives})),
    },
    optional={
        "is_final": json_values,
        "from_finalize": json_values,
        "start": json_values,
        "timestamp": json_values,
    },
)
tts_replies = st.fixed_dictionaries(
    {"type": st.sampled_from(["chunk", "done", "error", "Flushed", "Cleared", "Error"])},
    optional={
        "audio": st.one_of(json_values, st.just("QUJD")),
        "data": st.one_of(json_values, st.just("QUJD")),
        "isFinal": json_values,
        "error": json_values,
        "message": json_values,
        "context_id": st.one_of(json_values, st.just("utt-1")),
        "status_code": json_values,
        "done": json_values,
        "description": json_values,
    },
)
provider_frames = st.one_of(frames, deepgram_results.map(json.dumps), tts_replies.map(json.dumps))


@settings(PROPS, max_examples=200)
@given(sent=st.lists(provider_frames, max_size=6))
def test_speech_provider_translators_answer_with_their_own_values(
    sent: list[str | bytes],
) -> None:
    tts = [
        ElevenLabsTTS("voice", "model", 24000),
        CartesiaTTS("voice", "model", 24000),
        DeepgramTTS("aura", 24000),
    ]
    stt = DeepgramSTT("nova-3", "en", interim=True)
    for frame in sent:
        for t in tts:
            for reply in t.receive(frame, "utt-1"):
                assert isinstance(reply, AudioOut | UtteranceDone | ProviderFailed)
        for event in stt.receive(frame):
            assert isinstance(event, SpeechStarted | Transcript | Finalized | RecognitionFailed)
    assert isinstance(stt.finalized_now(), Finalized)


def test_capture_keeps_a_document_order_prefix_of_wide_frames() -> None:
    wide = json.dumps({"type": "x", "items": [{"n": i, "audio": "QUJD" * 40} for i in range(1000)]})
    payload = redact_text(wide, 4096)
    assert payload.startswith('{"type":"x","items":[{"n":0,"audio":"<redacted 160 bytes>"},')
    assert '{"n":60,' in payload  # everything up to the size limit is kept
    assert payload.endswith(" bytes>")
    assert len(payload.encode()) <= 4096 + MARKER_BYTES
