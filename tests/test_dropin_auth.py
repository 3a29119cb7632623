"""Rule: a credential that matches a gateway token is the gateway token and nothing else.

Only a credential that is not one of the server's own may be a client's provider key.
Every provider and every entry point (relay, unified speech, provider-native speech,
realtime relay, the realtime agent's cloud engines) is tried with the gateway token in
every place that provider reads a key from; the upstream must see the stored key and
never the token, in its handshake or in any frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from tests.conftest import Gateway, GatewayFactory, settled

from voxgate.testing import RecordingUpstream
from voxgate.testing.upstream import Handshake

TOKEN = "gw-token-4a1f9c0d"
OTHER_TOKEN = "gw-token-of-another-gateway"
PROVIDERS = ("openai", "google", "cartesia", "elevenlabs", "deepgram", "fal")
ENV = {"GW_TOKEN": TOKEN, "OTHER_TOKEN": OTHER_TOKEN} | {
    f"KEY_{p.upper()}": f"stored-{p}" for p in PROVIDERS
}


def _config(url: str) -> str:
    providers = "".join(f'[providers.{p}]\nurl = "{url}/{p}/v1"\n' for p in PROVIDERS)
    keys = ", ".join(f'{p} = {{ env = "KEY_{p.upper()}" }}' for p in PROVIDERS)
    return (
        providers
        + '[accounts.local.gateways.default]\ntokens = [{ name = "ci", env = "GW_TOKEN" }]\n'
        + f"keys = {{ {keys} }}\n"
        + '[accounts.other.gateways.default]\ntokens = [{ name = "o", env = "OTHER_TOKEN" }]\n'
        + '[server]\ndefault_gateway = "local/default"\n'
    )


@pytest.fixture
async def up() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as upstream:
        yield upstream


@pytest.fixture
async def gw(gateway: GatewayFactory, up: RecordingUpstream) -> Gateway:
    return await gateway(_config(up.url), ENV)


def assert_clean(hs: Handshake, received: list[str | bytes], provider: str) -> None:
    """The upstream saw the stored key in the provider's place and no gateway token."""
    seen = repr((hs.path, hs.query_string, sorted(hs.headers.items()), hs.subprotocols))
    seen += repr(received)
    assert TOKEN not in seen
    assert OTHER_TOKEN not in seen
    stored = f"stored-{provider}"
    where = {
        "openai": hs.headers.get("authorization") == f"Bearer {stored}",
        "google": f"key={stored}" in hs.query_string,
        "cartesia": f"api_key={stored}" in hs.query_string,
        "elevenlabs": hs.headers.get("xi-api-key") == stored,
        "deepgram": hs.headers.get("authorization") == f"Token {stored}",
        "fal": hs.headers.get("authorization") == f"Key {stored}",
    }
    assert where[provider], seen


#: Every place each provider reads a client key from, filled with a gateway token.
PLACES: list[tuple[str, dict[str, str], list[str], str]] = [
    ("openai", {"Authorization": f"Bearer {TOKEN}"}, [], ""),
    ("openai", {}, ["realtime", f"openai-insecure-api-key.{TOKEN}"], ""),
    ("google", {"x-goog-api-key": TOKEN}, [], ""),
    ("google", {}, [], f"key={TOKEN}"),
    ("google", {}, [], f"api_key={TOKEN}"),
    ("google", {}, [], f"access_token={TOKEN}"),
    ("cartesia", {"X-API-Key": TOKEN}, [], ""),
    ("cartesia", {"Authorization": f"Bearer {TOKEN}"}, [], ""),
    ("cartesia", {}, [], f"api_key={TOKEN}"),
    ("cartesia", {}, [], f"access_token={TOKEN}"),
    ("elevenlabs", {"xi-api-key": TOKEN}, [], ""),
    ("elevenlabs", {}, [f"xi-api-key.{TOKEN}"], ""),
    ("deepgram", {"Authorization": f"Token {TOKEN}"}, [], ""),
    ("deepgram", {"Authorization": f"Bearer {TOKEN}"}, [], ""),
    ("deepgram", {}, ["token", TOKEN], ""),
    ("fal", {"Authorization": f"Key {TOKEN}"}, [], ""),
    ("fal", {}, [f"fal-api-key.{TOKEN}"], ""),
]


@pytest.mark.parametrize(
    "gateway_header",
    [
        # the token alone, where the provider's key goes: it authenticates the client
        {},
        # the documented gateway header too, and the token again in the key's place (what
        # a client configured with one secret for both sends)
        {"cf-aig-authorization": f"Bearer {TOKEN}"},
    ],
    ids=["alone", "beside-the-gateway-header"],
)
@pytest.mark.parametrize(("provider", "headers", "protocols", "query"), PLACES)
async def test_relay_token_in_a_key_place_is_the_gateway_token(
    gw: Gateway,
    up: RecordingUpstream,
    http: aiohttp.ClientSession,
    gateway_header: dict[str, str],
    provider: str,
    headers: dict[str, str],
    protocols: list[str],
    query: str,
) -> None:
    """The upstream gets the stored key, never the token."""
    url = gw.ws(f"/v1/local/default/{provider}" + (f"?{query}" if query else ""))
    sent = {**gateway_header, **headers}
    async with http.ws_connect(url, headers=sent, protocols=protocols) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "hello"
    conn = await up.wait_for_connection()
    assert_clean(conn.handshake, conn.received, provider)


async def test_another_gateways_token_is_not_a_key_either(
    gw: Gateway, up: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """A token of another gateway is refused here, and is not relayed as a key."""
    headers = {"cf-aig-authorization": f"Bearer {TOKEN}", "Authorization": f"Token {OTHER_TOKEN}"}
    async with http.ws_connect(gw.ws("/v1/local/default/deepgram"), headers=headers) as ws:
        await ws.send_str("x")
        await ws.receive(timeout=5)
    conn = await up.wait_for_connection()
    assert_clean(conn.handshake, conn.received, "deepgram")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(
            gw.ws("/v1/local/default/deepgram"), headers={"Authorization": f"Token {OTHER_TOKEN}"}
        )
    assert err.value.status == 401
    assert len(up.connections) == 1


async def test_a_clients_own_key_still_wins(
    gw: Gateway, up: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """A credential that is no gateway token is the client's own key, as before."""
    headers = {"cf-aig-authorization": f"Bearer {TOKEN}", "Authorization": "Token dg-own"}
    async with http.ws_connect(gw.ws("/v1/local/default/deepgram"), headers=headers) as ws:
        await ws.send_str("x")
        await ws.receive(timeout=5)
    conn = await up.wait_for_connection()
    assert conn.handshake.headers["authorization"] == "Token dg-own"
    assert TOKEN not in repr(conn.handshake)


# --- speech: unified and provider-native, every cloud engine ----------------------------------

SPEECH = [
    # (kind, engine, provider, the unified first message, a native first message)
    ("tts", "deepgram", "deepgram", None, '{"type": "Speak", "text": "Hi."}'),
    ("stt", "deepgram", "deepgram", None, None),
    ("tts", "cartesia", "cartesia", None, '{"model_id": "sonic-2", "transcript": "Hi."}'),
    ("tts", "elevenlabs", "elevenlabs", None, '{"text": " "}'),
]


def _auth_variants(provider: str) -> list[dict[str, str]]:
    variants = [
        {"Authorization": f"Bearer {TOKEN}"},  # the form the README documents for speech
        {"voxgate-authorization": f"Bearer {TOKEN}", "Authorization": f"Bearer {TOKEN}"},
    ]
    if provider == "deepgram":  # what Deepgram's SDK sends with the token as its key
        variants.append({"Authorization": f"Token {TOKEN}"})
    return variants


@pytest.mark.parametrize(
    ("kind", "engine", "provider", "headers"),
    [(k, e, p, h) for k, e, p, _, _ in SPEECH for h in _auth_variants(p)],
)
async def test_unified_speech_sends_the_stored_key(
    gw: Gateway,
    up: RecordingUpstream,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    kind: str,
    engine: str,
    provider: str,
) -> None:
    async with http.ws_connect(gw.ws(f"/v1/{kind}/{engine}"), headers=headers) as ws:
        if kind == "tts":
            await ws.send_str('{"type": "init"}')
            await ws.send_str('{"type": "input_text", "text": "Hello there."}')
            await ws.send_str('{"type": "flush"}')
        else:
            await ws.send_str('{"type": "start", "sample_rate": 16000}')
            await ws.send_bytes(b"\0\0" * 1600)
        conn = await up.wait_for_connection()
        await ws.close()
    assert_clean(conn.handshake, conn.received, provider)
    await settled(gw)


@pytest.mark.parametrize(
    ("kind", "engine", "provider", "native", "headers"),
    [(k, e, p, n, h) for k, e, p, _, n in SPEECH if n is not None for h in _auth_variants(p)],
)
async def test_native_speech_relay_sends_the_stored_key(
    gw: Gateway,
    up: RecordingUpstream,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    kind: str,
    engine: str,
    provider: str,
    native: str,
) -> None:
    async with http.ws_connect(gw.ws(f"/v1/{kind}/{engine}"), headers=headers) as ws:
        await ws.send_str(native)
        echoed = await ws.receive(timeout=5)
        assert echoed.data == native  # relayed to the (echoing) upstream, first message first
    conn = await up.wait_for_connection()
    assert_clean(conn.handshake, conn.received, provider)
    await settled(gw)


# --- realtime: the relayed model and the agent's cloud engines --------------------------------


@pytest.mark.parametrize(
    ("headers", "protocols"),
    [
        ({"Authorization": f"Bearer {TOKEN}"}, []),
        ({}, ["realtime", f"openai-insecure-api-key.{TOKEN}"]),
        ({"voxgate-authorization": f"Bearer {TOKEN}"}, []),
    ],
)
async def test_realtime_relay_sends_the_stored_key(
    gw: Gateway,
    up: RecordingUpstream,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    protocols: list[str],
) -> None:
    url = gw.ws("/v1/realtime?model=openai/gpt-realtime")
    async with http.ws_connect(url, headers=headers, protocols=protocols) as ws:
        await ws.send_str('{"type": "session.update", "session": {}}')
        await ws.receive(timeout=5)
    conn = await up.wait_for_connection()
    assert_clean(conn.handshake, conn.received, "openai")
    assert "model=gpt-realtime" in conn.handshake.query_string


async def test_realtime_agent_cloud_voice_uses_the_stored_key(
    gateway: GatewayFactory, up: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """The agent speaks through a cloud TTS engine: the engine dials with the stored key."""
    gw = await gateway(_config(up.url) + '[speech]\ndefault_tts = "deepgram"\n', ENV)
    url = gw.ws("/v1/realtime?model=voxgate/echo")
    async with http.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Say something."}],
        }
        await ws.send_str(orjson.dumps({"type": "conversation.item.create", "item": item}).decode())
        await ws.send_str('{"type": "response.create"}')
        conn = await up.wait_for_connection(within=10)
        await ws.close()
    assert_clean(conn.handshake, conn.received, "deepgram")
    await settled(gw)


@pytest.mark.parametrize(
    ("provider", "query", "expected"),
    [
        # the token beside the client's own key in a repeated parameter, either order
        ("google", f"key=AIza-own&key={TOKEN}", "key=AIza-own"),
        ("google", f"key={TOKEN}&key=AIza-own", "key=AIza-own"),
        ("cartesia", f"api_key=ck-own&api_key={TOKEN}&x=1", "api_key=ck-own"),
        ("google", f"api_key=AIza-own&api_key={TOKEN}", "key=AIza-own"),
    ],
)
async def test_a_repeated_key_parameter_never_carries_the_token_upstream(
    gw: Gateway,
    up: RecordingUpstream,
    http: aiohttp.ClientSession,
    provider: str,
    query: str,
    expected: str,
) -> None:
    """Found by the property test: ``?key=own&key=<token>`` took the first value as the
    client's key and passed the query on whole, the token with it."""
    url = gw.ws(f"/v1/local/default/{provider}?{query}")
    async with http.ws_connect(url) as ws:
        await ws.send_str("x")
        await ws.receive(timeout=5)
    hs = (await up.wait_for_connection()).handshake
    assert TOKEN not in repr(hs)
    assert expected in hs.query_string.split("&")


async def test_the_token_anywhere_else_in_the_query_or_offer_is_dropped(
    gw: Gateway, up: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """Not a key place, but still the server's secret: not passed on."""
    url = gw.ws(f"/v1/local/default/deepgram?model=nova-3&token={TOKEN}&other={TOKEN}")
    headers = {"cf-aig-authorization": f"Bearer {TOKEN}"}
    async with http.ws_connect(url, headers=headers, protocols=["x-proto", TOKEN]) as ws:
        await ws.send_str("x")
        await ws.receive(timeout=5)
    hs = (await up.wait_for_connection()).handshake
    assert TOKEN not in repr(hs)
    assert hs.query_string == "model=nova-3"
    assert hs.subprotocols == ("x-proto",)
