"""Sans-I/O relay pieces, tested without sockets or clocks."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from voxgate.config import load_settings
from voxgate.core.limits import CloseCode, TokenBucket, sendable_close_code
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.errors import BadRequest, ConfigError
from voxgate.protocols.relay.auth import (
    bearer,
    parse_subprotocols,
    read_credentials,
    select_subprotocol,
    token_matches,
)
from voxgate.protocols.relay.capture import Capture, redact_text
from voxgate.protocols.relay.providers import (
    BUILTIN_PROVIDERS,
    build_registry,
    build_upstream_request,
    redact_query,
    validate_path,
)
from voxgate.protocols.relay.usage import meter_for
from voxgate.settings import Limits

P = BUILTIN_PROVIDERS


def creds(
    provider: str,
    headers: dict[str, str] | None = None,
    protos: str = "",
    query: dict[str, str] | None = None,
    gateway_tokens: tuple[str, ...] = (),
):
    return read_credentials(
        P[provider],
        CIMultiDict(headers or {}),
        parse_subprotocols([protos] if protos else []),
        query or {},
        is_gateway_token=lambda v: v in gateway_tokens,
    )


# ---------------------------------------------------------------- credentials


def test_bearer_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer   abc ") == "abc"
    assert bearer("abc") == "abc"
    assert bearer("") is None
    assert bearer(None) is None


def test_gateway_token_from_each_header_and_subprotocol() -> None:
    assert creds("openai", {"voxgate-authorization": "Bearer t1"}).gateway_token == "t1"
    assert creds("openai", {"cf-aig-authorization": "Bearer t2"}).gateway_token == "t2"
    c = creds("openai", protos="realtime, voxgate-authorization.t3")
    assert c.gateway_token == "t3"
    assert c.gateway_entry == "voxgate-authorization.t3"
    assert c.upstream_subprotocols == ("realtime",)
    assert creds("openai", protos="cf-aig-authorization.t4").gateway_token == "t4"


def test_client_keys_are_read_and_removed_from_subprotocols() -> None:
    c = creds("openai", protos="realtime, openai-insecure-api-key.sk-1, openai-beta.realtime-v1")
    assert c.client_key == "sk-1"
    assert c.upstream_subprotocols == ("realtime", "openai-beta.realtime-v1")
    assert creds("elevenlabs", protos="xi-api-key.k2").client_key == "k2"
    assert creds("fal", protos="fal-api-key.k3").client_key == "k3"
    dg = creds("deepgram", protos="token, dg-key")
    assert dg.client_key == "dg-key"
    assert dg.upstream_subprotocols == ()
    assert creds("openai", {"Authorization": "Bearer sk-h"}).client_key == "sk-h"
    assert creds("deepgram", {"Authorization": "Token dgk"}).client_key == "dgk"
    assert creds("elevenlabs", {"xi-api-key": "xik"}).client_key == "xik"
    assert creds("fal", {"Authorization": "Key fk"}).client_key == "fk"
    assert creds("cartesia", {"X-API-Key": "ck"}).client_key == "ck"
    g = creds("google", query={"key": "gk"})
    assert g.client_key == "gk"
    assert g.client_key_in_query


def test_credentials_repr_hides_secrets() -> None:
    c = creds(
        "openai", {"voxgate-authorization": "Bearer topsecret"}, "openai-insecure-api-key.sk-x"
    )
    assert "topsecret" not in repr(c)
    assert "sk-x" not in repr(c)


def test_token_matches() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("", "abd")


@pytest.mark.parametrize(
    ("protos", "upstream", "expected"),
    [
        ("", None, None),
        ("realtime, voxgate-authorization.t", "realtime", "realtime"),
        ("realtime, voxgate-authorization.t", None, "realtime"),
        ("voxgate-authorization.t", None, "voxgate-authorization.t"),
        ("openai-insecure-api-key.k", None, "openai-insecure-api-key.k"),
        ("a, b, voxgate-authorization.t", "b", "b"),
        ("a, voxgate-authorization.t", "zzz", "a"),  # never a protocol the client did not offer
    ],
)
def test_select_subprotocol(protos: str, upstream: str | None, expected: str | None) -> None:
    assert select_subprotocol(creds("openai", protos=protos), upstream) == expected


# ---------------------------------------------------------------- upstream URLs


def build(provider: str, path: str = "", query: str = "", **kw):
    c = creds(
        provider,
        kw.pop("headers", None),
        kw.pop("protos", ""),
        dict(q.split("=", 1) if "=" in q else (q, "") for q in query.split("&") if q),
        kw.pop("gateway_tokens", ()),
    )
    return build_upstream_request(
        P[provider],
        path=path,
        query_string=query,
        client_headers=list((kw.pop("client_headers", None) or {}).items()),
        upstream_subprotocols=c.upstream_subprotocols,
        client_key=c.client_key,
        client_key_param=c.client_key_param,
        drop_query=c.drop_query,
        stored_key=kw.pop("stored", None),
    )


def test_openai_stored_key_header_and_query_passthrough() -> None:
    r = build(
        "openai",
        query="model=gpt-realtime",
        stored="sk-stored",
        client_headers={"OpenAI-Beta": "realtime=v1", "Cookie": "x=1"},
    )
    assert r.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert ("Authorization", "Bearer sk-stored") in r.headers
    assert ("OpenAI-Beta", "realtime=v1") in r.headers
    assert all(k != "Cookie" for k, _ in r.headers)


def test_client_key_wins_over_stored_key_and_is_translated() -> None:
    r = build("openai", protos="realtime, openai-insecure-api-key.sk-client", stored="sk-stored")
    assert r.headers == (("Authorization", "Bearer sk-client"),)
    assert r.subprotocols == ("realtime",)


def test_google_key_as_query_parameter() -> None:
    r = build("google", stored="gk")
    assert r.url == (
        "wss://generativelanguage.googleapis.com/ws/"
        "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key=gk"
    )
    # a client key already in the query passes as it is
    r = build("google", query="key=mine", stored="gk")
    assert r.url.endswith("?key=mine")
    # a client key in the header is moved into the query
    r = build("google", headers={"x-goog-api-key": "hk"})
    assert r.url.endswith("?key=hk")


def test_a_gateway_token_is_never_a_client_key() -> None:
    """Wherever the provider reads a key, the gateway token is the gateway token only."""
    tok = ("gw-t",)
    c = creds("deepgram", {"Authorization": "Bearer gw-t"}, gateway_tokens=tok)
    assert (c.gateway_token, c.client_key) == ("gw-t", None)
    c = creds("deepgram", {"Authorization": "Token gw-t"}, "token, dg-own", gateway_tokens=tok)
    assert (c.gateway_token, c.client_key) == ("gw-t", "dg-own")
    c = creds("elevenlabs", {"xi-api-key": "own"}, "xi-api-key.gw-t", gateway_tokens=tok)
    assert (c.gateway_token, c.client_key, c.upstream_subprotocols) == ("gw-t", "own", ())
    c = creds("cartesia", query={"api_key": "gw-t"}, gateway_tokens=tok)
    assert (c.gateway_token, c.client_key, c.drop_query) == ("gw-t", None, ("api_key",))
    for provider, place in [
        ("openai", {"headers": {"Authorization": "Bearer gw-t"}}),
        ("openai", {"protos": "realtime, openai-insecure-api-key.gw-t"}),
        ("google", {"query": "key=gw-t&alt=x"}),
        ("google", {"query": "api_key=gw-t"}),
        ("cartesia", {"query": "api_key=gw-t"}),
        ("cartesia", {"headers": {"Authorization": "Bearer gw-t"}}),
        ("deepgram", {"protos": "token, gw-t"}),
        ("fal", {"headers": {"Authorization": "Key gw-t"}}),
    ]:
        r = build(provider, stored="stored", gateway_tokens=tok, **place)
        assert "gw-t" not in repr((r.url, r.headers, r.subprotocols)), provider
        assert "stored" in repr((r.url, r.headers)), provider


def test_paths_that_repeat_the_base_are_the_same_path() -> None:
    """SDKs append their own /v1/... to the host: both forms reach the same upstream."""
    assert build("deepgram", path="v1/listen").url == build("deepgram", path="listen").url
    assert build("deepgram", path="v1/speak").url == "wss://api.deepgram.com/v1/speak"
    assert build("deepgram", path="v1").url == "wss://api.deepgram.com/v1/listen"
    assert build("openai", path="realtime", query="model=m").url == (
        "wss://api.openai.com/v1/realtime?model=m"
    )
    assert build("openai", path="v1/realtime").url == "wss://api.openai.com/v1/realtime"
    el = build("elevenlabs", path="v1/text-to-speech/v1/stream-input")
    assert el.url == "wss://api.elevenlabs.io/v1/text-to-speech/v1/stream-input"
    with pytest.raises(BadRequest):
        build("openai", path="v1/other")


def test_google_api_key_moves_to_key() -> None:
    r = build("google", query="api_key=mine&alt=x", stored="gk")
    assert r.url.endswith("BidiGenerateContent?alt=x&key=mine")


def test_elevenlabs_agent_id_alone_dials_the_conversation() -> None:
    r = build("elevenlabs", query="agent_id=a1")
    assert r.url == "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a1"


def test_cartesia_bearer_key_and_version_header() -> None:
    r = build(
        "cartesia",
        path="tts/websocket",
        headers={"Authorization": "Bearer ck"},
        client_headers={"Cartesia-Version": "2025-04-16", "Authorization": "Bearer ck"},
    )
    assert r.url == "wss://api.cartesia.ai/tts/websocket?api_key=ck"
    assert r.headers == (("Cartesia-Version", "2025-04-16"),)


def test_cartesia_key_and_version_defaults() -> None:
    r = build("cartesia", stored="ck")
    assert r.url == "wss://api.cartesia.ai/tts/websocket?cartesia_version=2025-04-16&api_key=ck"
    r = build("cartesia", query="cartesia_version=2024-06-10&api_key=own", stored="ck")
    assert r.url == "wss://api.cartesia.ai/tts/websocket?cartesia_version=2024-06-10&api_key=own"


def test_elevenlabs_any_path_and_header() -> None:
    r = build(
        "elevenlabs",
        "text-to-speech/voice1/stream-input",
        "model_id=eleven_flash_v2_5",
        stored="xk",
    )
    assert r.url == (
        "wss://api.elevenlabs.io/v1/text-to-speech/voice1/stream-input?model_id=eleven_flash_v2_5"
    )
    assert r.headers == (("xi-api-key", "xk"),)
    r = build("elevenlabs", "convai/conversation", "agent_id=a1")
    assert r.url == "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a1"


def test_deepgram_and_fal() -> None:
    r = build("deepgram", "speak", "model=aura-2", stored="dk")
    assert r.url == "wss://api.deepgram.com/v1/speak?model=aura-2"
    assert r.headers == (("Authorization", "Token dk"),)
    assert build("deepgram").url == "wss://api.deepgram.com/v1/listen"
    r = build("fal", "fal-ai/some-app/realtime", stored="fk")
    assert r.url == "wss://fal.run/fal-ai/some-app/realtime"
    assert r.headers == (("Authorization", "Key fk"),)


@pytest.mark.parametrize(
    ("provider", "path"),
    [
        ("openai", "anything"),
        ("deepgram", "agent"),
        ("elevenlabs", "a/../b"),
        ("elevenlabs", "a//b"),
        ("elevenlabs", "a/ b"),
        ("cartesia", "tts/websocket/x"),
    ],
)
def test_bad_paths_are_rejected(provider: str, path: str) -> None:
    with pytest.raises(BadRequest):
        validate_path(P[provider], path)


def test_redact_query() -> None:
    assert (
        redact_query("wss://h/p?model=m&key=abc&api_key=x")
        == "wss://h/p?model=m&key=***&api_key=***"
    )
    assert redact_query("wss://h/p") == "wss://h/p"


def test_registry_custom_provider_and_errors(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[providers.mymodel]\nurl = "wss://models.example.com/ws"\n'
        'auth = { header = "X-Key", format = "K {key}" }\n'
        '[providers.openai]\nurl = "wss://eu.example.com/v1/realtime"\n'
    )
    reg = build_registry(load_settings(cfg, {}))
    assert reg["mymodel"].base_url == "wss://models.example.com/ws"
    assert reg["mymodel"].auth.header == "X-Key"
    assert reg["openai"].base_url == "wss://eu.example.com/v1/realtime"
    assert reg["openai"].key_subprotocols == ("openai-insecure-api-key.",)
    cfg.write_text('[providers.nourl]\nmodel_param = "m"\n')
    with pytest.raises(ConfigError, match=r"providers\.nourl\.url: is required"):
        build_registry(load_settings(cfg, {}))
    cfg.write_text('[accounts.local.gateways.default]\nkeys = { nosuch = { env = "X" } }\n')
    with pytest.raises(ConfigError, match=r"keys\.nosuch: unknown provider"):
        build_registry(load_settings(cfg, {}))
    cfg.write_text('[providers.logs]\nurl = "ws://x"\n')
    with pytest.raises(ConfigError, match="reserved"):
        build_registry(load_settings(cfg, {}))


# ---------------------------------------------------------------- usage and capture


def test_openai_usage_from_response_done_only() -> None:
    m = meter_for("openai")
    m.feed_text('{"type":"response.output_audio.delta","delta":"AAAA"}')
    m.feed_text(
        '{"type":"response.done","response":{"usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}}'
    )
    m.feed_text(
        '{"type": "response.done", "response": {"usage": {"input_tokens": 1, "output_tokens": 2}}}'
    )
    m.feed_text('{"type":"response.done", broken')
    m.feed_binary(b'{"type":"response.done","response":{"usage":{"input_tokens":100}}}')
    assert (m.input_tokens, m.output_tokens, m.total_tokens) == (11, 7, 18)


def test_gemini_usage_in_text_and_binary_frames() -> None:
    m = meter_for("gemini")
    m.feed_binary(
        b'{"usageMetadata":{"promptTokenCount":3,"responseTokenCount":4,"totalTokenCount":7}}'
    )
    m.feed_text('{"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":1}}')
    m.feed_binary(b"\x00\x01usageMetadata")  # not JSON: ignored
    assert (m.input_tokens, m.output_tokens, m.total_tokens) == (4, 5, 9)


def test_capture_redacts_audio_and_keeps_text() -> None:
    audio = "A" * 4000
    red = orjson.loads(
        redact_text(
            orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode(), 65536
        )
    )
    assert red == {"type": "input_audio_buffer.append", "audio": "<redacted 4000 bytes>"}
    red = orjson.loads(redact_text('{"type":"response.output_text.delta","delta":"hello"}', 65536))
    assert red["delta"] == "hello"
    red = orjson.loads(
        redact_text(
            orjson.dumps({"type": "response.output_audio.delta", "delta": "QUJD"}).decode(), 65536
        )
    )
    assert red["delta"] == "<redacted 4 bytes>"
    nested = {"realtimeInput": {"mediaChunks": [{"mimeType": "audio/pcm", "data": audio}]}}
    assert audio not in redact_text(orjson.dumps(nested).decode(), 65536)
    assert redact_text("not json", 65536) == "not json"
    assert redact_text("x" * 100, 10).startswith("xxxxxxxxxx…<cut, 100 bytes>")
    cap = Capture(max_frames=2, max_bytes=1000)
    cap.add("client", 0.0, b"\x00" * 960)
    cap.add("upstream", 0.1, '{"type":"x"}')
    cap.add("upstream", 0.2, '{"type":"y"}')
    assert [(f.kind, f.size, f.payload) for f in cap.frames] == [
        ("binary", 960, ""),
        ("text", 12, '{"type":"x"}'),
    ]
    assert cap.dropped == 1


# ---------------------------------------------------------------- limits


def test_token_bucket_with_explicit_time() -> None:
    b = TokenBucket(60, now=0.0)  # one per second, burst 60
    assert all(b.take(0.0) for _ in range(60))
    assert not b.take(0.0)
    assert not b.take(0.5)
    assert b.take(1.5)
    assert not b.take(1.6)


def test_sendable_close_codes() -> None:
    assert sendable_close_code(4100, fallback=1000) == 4100
    assert sendable_close_code(1005, fallback=1000) == 1000
    assert sendable_close_code(1006, fallback=1011) == 1011
    assert sendable_close_code(None, fallback=1000) == 1000
    assert sendable_close_code(2000, fallback=1000) == 1000


def session(limits: Limits, now: float = 0.0) -> RelaySession:
    info = SessionInfo("s1", "local", "default", "openai", "m", None, "127.0.0.1")
    return RelaySession(info, limits, now=now, wall=1e9, meter=meter_for("openai"))


def test_session_counts_and_limits() -> None:
    s = session(
        Limits(messages_per_minute=3, max_message_bytes=10, idle_seconds=5, max_session_seconds=60)
    )
    assert s.client_frame(1.0, "hello") == 0
    assert s.client_frame(1.0, b"\x00" * 10) == 0
    assert s.client_frame(1.0, "x" * 11) == CloseCode.MESSAGE_TOO_LARGE
    assert s.client_frame(1.0, "a") == 0
    assert s.client_frame(1.0, "b") == CloseCode.RATE_LIMITED
    s.upstream_frame(
        2.0, '{"type":"response.done","response":{"usage":{"input_tokens":2,"output_tokens":3}}}'
    )
    assert s.idle_deadline() == 7.0
    assert s.session_deadline() == 60.0
    rec = s.record(
        now=3.0, wall=1e9 + 3, client_close_code=1000, upstream_close_code=1000, error=None
    )
    assert (rec.client_frames, rec.client_bytes) == (3, 16)
    assert rec.upstream_frames == 1
    assert (rec.input_tokens, rec.output_tokens, rec.total_tokens) == (2, 3, 5)
    assert rec.duration_seconds == 3.0
