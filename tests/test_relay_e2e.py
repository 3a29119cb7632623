"""The relay over real sockets: a real client, voxgate, and a recording upstream."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import WSMsgType
from tests.conftest import UPGRADE_HEADERS, GatewayFactory, provider_overrides, settled

from voxgate.testing import RecordingUpstream

TOKEN = "gw-token-123456"
AUTH = {"voxgate-authorization": f"Bearer {TOKEN}"}


def gateway_toml(up: RecordingUpstream, extra: str = "") -> str:
    return provider_overrides(
        up.url, "openai", "google", "cartesia", "elevenlabs", "deepgram", "fal"
    ) + (
        "[accounts.local.gateways.default]\n"
        'tokens = [{ name = "ci", env = "GW_TOKEN" }]\n'
        'keys = { openai = { env = "K_OPENAI" }, google = { env = "K_GOOGLE" }, '
        'cartesia = { env = "K_CARTESIA" }, elevenlabs = { env = "K_ELEVEN" }, '
        'deepgram = { env = "K_DEEPGRAM" }, fal = { env = "K_FAL" } }\n' + extra
    )


ENV = {
    "GW_TOKEN": TOKEN,
    "K_OPENAI": "sk-openai-stored",
    "K_GOOGLE": "g-stored",
    "K_CARTESIA": "c-stored",
    "K_ELEVEN": "x-stored",
    "K_DEEPGRAM": "d-stored",
    "K_FAL": "f-stored",
}


def assert_no_gateway_token(hs) -> None:
    blob = repr(hs.headers) + repr(hs.subprotocols) + hs.query_string + hs.path
    assert TOKEN not in blob
    assert "voxgate-authorization" not in blob


@pytest.mark.parametrize(
    ("provider", "path", "query", "want_path", "want_query", "header"),
    [
        (
            "openai",
            "",
            "model=gpt-realtime",
            "/openai",
            "model=gpt-realtime",
            ("authorization", "Bearer sk-openai-stored"),
        ),
        (
            "google",
            "",
            "",
            "/google/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
            "key=g-stored",
            None,
        ),
        (
            "cartesia",
            "",
            "",
            "/cartesia/tts/websocket",
            "cartesia_version=2025-04-16&api_key=c-stored",
            None,
        ),
        (
            "elevenlabs",
            "/text-to-speech/v1d/stream-input",
            "model_id=m1",
            "/elevenlabs/text-to-speech/v1d/stream-input",
            "model_id=m1",
            ("xi-api-key", "x-stored"),
        ),
        (
            "elevenlabs",
            "/convai/conversation",
            "agent_id=ag",
            "/elevenlabs/convai/conversation",
            "agent_id=ag",
            ("xi-api-key", "x-stored"),
        ),
        (
            "deepgram",
            "/speak",
            "model=aura",
            "/deepgram/speak",
            "model=aura",
            ("authorization", "Token d-stored"),
        ),
        (
            "fal",
            "/fal-ai/app/realtime",
            "",
            "/fal/fal-ai/app/realtime",
            "",
            ("authorization", "Key f-stored"),
        ),
    ],
)
async def test_stored_key_injection_per_provider(
    gateway: GatewayFactory,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    provider: str,
    path: str,
    query: str,
    want_path: str,
    want_query: str,
    header: tuple[str, str] | None,
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    url = gw.ws(f"/v1/local/default/{provider}{path}") + (f"?{query}" if query else "")
    async with http.ws_connect(url, headers=AUTH) as ws:
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
    hs = upstream.handshakes[0]
    assert hs.path == want_path
    assert hs.query_string == want_query
    if header is not None:
        assert hs.headers[header[0]] == header[1]
    assert_no_gateway_token(hs)


@pytest.mark.parametrize(
    ("provider", "protocols", "header", "query_has"),
    [
        (
            "openai",
            ["realtime", "openai-insecure-api-key.sk-own"],
            ("authorization", "Bearer sk-own"),
            None,
        ),
        ("elevenlabs", ["xi-api-key.x-own"], ("xi-api-key", "x-own"), None),
        ("fal", ["fal-api-key.f-own"], ("authorization", "Key f-own"), None),
        ("deepgram", ["token", "d-own"], ("authorization", "Token d-own"), None),
    ],
)
async def test_browser_brings_its_own_key_by_subprotocol(
    gateway: GatewayFactory,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    provider: str,
    protocols: list[str],
    header: tuple[str, str],
    query_has: str | None,
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    offered = [*protocols, f"voxgate-authorization.{TOKEN}"]
    async with http.ws_connect(gw.ws(f"/v1/local/default/{provider}"), protocols=offered) as ws:
        assert ws.protocol in offered  # a browser requires an answer from its own offer
        await ws.send_str("x")
        await ws.receive()
    hs = upstream.handshakes[0]
    assert hs.headers[header[0]] == header[1]
    assert not any(
        p.startswith(("openai-insecure", "xi-api-key", "fal-api-key")) for p in hs.subprotocols
    )
    assert "d-own" not in hs.subprotocols
    assert_no_gateway_token(hs)


async def test_realtime_subprotocol_is_selected_and_forwarded(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    offered = ["realtime", f"voxgate-authorization.{TOKEN}", "openai-insecure-api-key.sk-b"]
    async with http.ws_connect(gw.ws("/v1/local/default/openai?model=m"), protocols=offered) as ws:
        assert ws.protocol == "realtime"
    assert upstream.handshakes[0].subprotocols == ("realtime",)
    # only the gateway entry offered: it is the one answered
    async with http.ws_connect(
        gw.ws("/v1/local/default/openai"), protocols=[f"cf-aig-authorization.{TOKEN}"]
    ) as ws:
        assert ws.protocol == f"cf-aig-authorization.{TOKEN}"
    assert upstream.handshakes[1].subprotocols == ()


async def test_query_keys_pass_through_for_google_and_cartesia(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    async with http.ws_connect(gw.ws("/v1/local/default/google?key=g-own&alt=x"), headers=AUTH):
        pass
    async with http.ws_connect(
        gw.ws("/v1/local/default/cartesia/tts/websocket?api_key=c-own"), headers=AUTH
    ):
        pass
    assert upstream.handshakes[0].query_string == "key=g-own&alt=x"
    assert upstream.handshakes[1].query_string == "api_key=c-own&cartesia_version=2025-04-16"


async def test_cloudflare_header_and_only_allowed_headers_forwarded(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    headers = {
        "cf-aig-authorization": f"Bearer {TOKEN}",
        "OpenAI-Beta": "realtime=v1",
        "Cookie": "session=abc",
        "Origin": "https://evil.example",
        "X-Custom": "1",
    }
    async with http.ws_connect(
        gw.ws("/v1/local/default/openai?model=m&flag&sp=%20x"), headers=headers
    ):
        pass
    hs = upstream.handshakes[0]
    assert hs.headers["openai-beta"] == "realtime=v1"
    assert "cookie" not in hs.headers
    assert "x-custom" not in hs.headers
    assert hs.headers.get("origin") != "https://evil.example"
    assert hs.query_string == "model=m&flag&sp=%20x"
    assert "cf-aig-authorization" not in hs.headers


async def test_frames_relay_byte_for_byte_in_order_both_ways(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 300_000]
    binaries = [os.urandom(n) for n in sizes]
    texts = ["", "héllo wörld ✓ 🎙", '{"type":"session.update"}', "x" * 70_000]
    async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=AUTH) as ws:
        for b, t in zip(binaries, texts * 2, strict=False):
            await ws.send_bytes(b)
            await ws.send_str(t)
        for b, t in zip(binaries, texts * 2, strict=False):
            m1, m2 = await ws.receive(), await ws.receive()
            assert (m1.type, m1.data) == (WSMsgType.BINARY, b)
            assert (m2.type, m2.data) == (WSMsgType.TEXT, t)
    conn = upstream.connections[0]
    assert conn.received == [x for pair in zip(binaries, texts * 2, strict=False) for x in pair]


async def test_close_code_and_reason_propagate_client_to_upstream(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    ws = await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=AUTH)
    await ws.close(code=4100, message=b"client done")
    conn = await upstream.wait_for_connection()
    async with asyncio.timeout(5):
        await conn.closed.wait()
    assert conn.close_code == 4100


async def upstream_closes(conn) -> None:
    await conn.ws.send_str("goodbye")
    await conn.ws.close(code=4200, message=b"upstream done")


async def test_close_code_and_reason_propagate_upstream_to_client(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with RecordingUpstream(upstream_closes) as up:
        gw = await gateway(gateway_toml(up), ENV)
        async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=AUTH) as ws:
            assert (await ws.receive()).data == "goodbye"
            msg = await ws.receive()
            assert msg.type is WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (4200, "upstream done")


async def upstream_vanishes(conn) -> None:
    await conn.ws.send_str("about to vanish")
    transport = conn.ws._req.transport  # a crash: no close frame
    transport.abort()


async def test_upstream_drop_closes_client_with_1011(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with RecordingUpstream(upstream_vanishes) as up:
        gw = await gateway(gateway_toml(up), ENV)
        async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=AUTH) as ws:
            assert (await ws.receive()).data == "about to vanish"
            msg = await ws.receive()
            assert msg.type is WSMsgType.CLOSE
            assert msg.data == 1011
            assert msg.extra == "upstream connection lost"
        await settled(gw)
        records = await gw.services.store.query(_q())
        assert records[0].error == "upstream_disconnected"


async def test_client_drop_closes_upstream_going_away(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    ws = await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=AUTH)
    await ws.send_str("x")
    conn = await upstream.wait_for_connection()
    ws._response.connection.transport.abort()  # the client crashes
    async with asyncio.timeout(5):
        await conn.closed.wait()
    assert conn.close_code == 1001


def _q():
    from voxgate.store import UsageQuery

    return UsageQuery(account="local", gateway="default")


# ------------------------------------------------------------------ refused before upgrade


async def _status(http: aiohttp.ClientSession, url: str, **kw) -> tuple[int, dict]:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url, **kw)
    # the handshake error hides the body; fetch it with the same upgrade headers
    headers = {**UPGRADE_HEADERS, **kw.get("headers", {})}
    async with http.get(url.replace("ws://", "http://"), headers=headers) as r:
        body = await r.json()
        assert r.status == info.value.status
        return r.status, body


async def test_unknown_account_gateway_provider_404(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    for path, word in (
        ("/v1/nobody/default/openai", "nobody/default"),
        ("/v1/local/nogw/openai", "local/nogw"),
        ("/v1/local/default/nosuch", "nosuch"),
    ):
        status, body = await _status(http, gw.ws(path), headers=AUTH)
        assert status == 404
        assert body["error"]["code"] == "not_found"
        assert word in body["error"]["message"]
    assert upstream.handshakes == []


async def test_bad_or_missing_token_401(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    status, body = await _status(http, gw.ws("/v1/local/default/openai"))
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert "missing" in body["error"]["message"]
    status, body = await _status(
        http, gw.ws("/v1/local/default/openai"), headers={"voxgate-authorization": "Bearer wrong"}
    )
    assert status == 401
    assert "invalid" in body["error"]["message"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(
            gw.ws("/v1/local/default/openai"), protocols=["realtime", "voxgate-authorization.wrong"]
        )
    assert info.value.status == 401
    assert upstream.handshakes == []


async def test_plain_http_and_bad_path(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(gateway_toml(upstream), ENV)
    async with http.get(f"{gw.base}/v1/local/default/openai", headers=AUTH) as r:
        assert r.status == 426
        assert (await r.json())["error"]["code"] == "upgrade_required"
    status, body = await _status(http, gw.ws("/v1/local/default/deepgram/agent"), headers=AUTH)
    assert status == 400
    assert "not served" in body["error"]["message"]
    status, body = await _status(http, gw.ws("/v1/local/default/openai/extra"), headers=AUTH)
    assert status == 400


async def test_upstream_rejection_is_502_with_its_status(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with RecordingUpstream(reject_status=403) as up:
        gw = await gateway(gateway_toml(up), ENV)
        status, body = await _status(http, gw.ws("/v1/local/default/openai"), headers=AUTH)
        assert status == 502
        assert body["error"]["upstream_status"] == 403
        assert body["error"]["reason"] == "handshake_rejected"
        await settled(gw)
        rec = (await gw.services.store.query(_q()))[0]
        assert rec.error == "upstream_handshake_rejected"


async def test_upstream_unreachable_and_timeout_are_502(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with RecordingUpstream() as dead:
        dead_url = dead.url
    gw = await gateway(provider_overrides(dead_url, "openai"))
    status, body = await _status(http, gw.ws("/v1/local/default/openai"))
    assert (status, body["error"]["reason"], body["error"]["upstream_status"]) == (
        502,
        "unreachable",
        None,
    )
    async with RecordingUpstream(accept_delay=2.0) as slow:
        gw = await gateway(
            provider_overrides(slow.url, "openai") + "[relay]\nconnect_timeout_seconds = 0.3\n"
        )
        status, body = await _status(http, gw.ws("/v1/local/default/openai"))
        assert (status, body["error"]["reason"]) == (502, "timeout")


async def test_custom_provider_from_config(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    toml = (
        "[providers.mymodel]\n"
        f'url = "{upstream.url}/models/ws"\n'
        'auth = { query = "token" }\n'
        'paths = ["v1/*"]\n'
        'forward_headers = ["X-Trace"]\n'
        'model_param = "m"\n'
        "[accounts.acme.gateways.prod]\n"
        'tokens = [{ name = "app", env = "ACME_TOKEN" }]\n'
        'keys = { mymodel = { env = "MYMODEL_KEY" } }\n'
    )
    gw = await gateway(toml, {"ACME_TOKEN": "acme-tok-1", "MYMODEL_KEY": "mm-secret"})
    headers = {"voxgate-authorization": "Bearer acme-tok-1", "X-Trace": "t-1"}
    async with http.ws_connect(
        gw.ws("/v1/acme/prod/mymodel/v1/stream?m=small"), headers=headers
    ) as ws:
        await ws.send_str("hello custom")
        assert (await ws.receive()).data == "hello custom"
    hs = upstream.handshakes[0]
    assert hs.path == "/models/ws/v1/stream"
    assert hs.query_string == "m=small&token=mm-secret"
    assert hs.headers["x-trace"] == "t-1"
    await settled(gw)
    from voxgate.store import UsageQuery

    rec = (await gw.services.store.query(UsageQuery("acme", "prod")))[0]
    assert (rec.provider, rec.model, rec.token_name) == ("mymodel", "small", "app")
    # a path outside the declared ones is refused before dialling
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(gw.ws("/v1/acme/prod/mymodel/admin"), headers=headers)
    assert info.value.status == 400
    assert len(upstream.handshakes) == 1
