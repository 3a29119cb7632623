"""Close codes that decide whether a client reconnects (spec/realtime.md, "Close codes").

The official OpenAI SDKs reconnect by themselves after 1001, 1005, 1006, 1011, 1012, 1013
and 1015. A draining node must close with 1012 (they reconnect, to another node); a
refusal for auth or a limit must be an HTTP answer before the upgrade, or 1008 or 4xxx
after it (or a refused client retries forever).
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from conftest import Gateway, GatewayFactory, provider_overrides
from voxgate.core.limits import CLOSE_REASONS, RECONNECTING_CODES, CloseCode
from voxgate.store import UsageQuery
from voxgate.store.sqlite import SQLiteStore
from voxgate.testing import RecordingUpstream

TOKEN = "close-codes-token-0123456789"
TOKENS = '[accounts.local.gateways.default]\ntokens = [{ name = "app", env = "GW_TOKEN" }]\n'
ENV = {"GW_TOKEN": TOKEN}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REALTIME = "/v1/realtime?model=voxgate/echo"


def test_refusal_codes_are_not_reconnecting_codes() -> None:
    assert set(CLOSE_REASONS).isdisjoint(RECONNECTING_CODES)
    assert CloseCode.POLICY_VIOLATION not in RECONNECTING_CODES
    assert CloseCode.SERVICE_RESTART in RECONNECTING_CODES  # draining: come back elsewhere


async def _close_while_stopping(gw: Gateway, ws: aiohttp.ClientWebSocketResponse) -> list[str]:
    """Stop the server while reading ``ws``: the text frames before its close frame."""
    stopping = asyncio.create_task(gw.stop())
    texts = []
    async with asyncio.timeout(10):
        while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            texts.append(msg.data)
        await stopping
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    return texts


async def _records(gw: Gateway) -> list[tuple[str | None, int | None]]:
    """``(kind, client close code)`` of every record, read after the server stopped."""
    store = SQLiteStore(gw.services.store.path)  # type: ignore[attr-defined]
    await store.open()
    try:
        records = await store.query(UsageQuery("local", "default"))
    finally:
        await store.close()
    return [(r.kind, r.client_close_code) for r in records]


async def test_shutdown_closes_a_realtime_session_1012(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ws = await http.ws_connect(gw.ws(REALTIME))
    first = orjson.loads((await ws.receive(timeout=30)).data)
    assert first["type"] == "session.created"
    assert await _close_while_stopping(gw, ws) == []  # Realtime has no goodbye event
    assert ws.close_code == CloseCode.SERVICE_RESTART == 1012
    assert await _records(gw) == [("realtime", 1012)]


async def test_shutdown_closes_a_speech_session_1012_after_session_ended(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    ws = await http.ws_connect(gw.ws("/v1/stt/pocketsphinx"))
    # the session is live as soon as the gateway lists it
    async with asyncio.timeout(10):
        while not gw.services.live_speech:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    texts = await _close_while_stopping(gw, ws)
    assert [orjson.loads(t)["type"] for t in texts] == ["session_ended"]
    assert orjson.loads(texts[0])["reason"] == "shutdown"
    assert ws.close_code == 1012
    assert await _records(gw) == [("stt", 1012)]


async def test_shutdown_closes_a_speech_client_not_yet_in_a_session_1012(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A TTS address waits for the first message before a session exists: the shutdown
    closes it too (it was dropped, 1006, after the whole shutdown timeout)."""
    gw = await gateway()
    ws = await http.ws_connect(gw.ws("/v1/tts/piper"))
    await asyncio.sleep(0.1)  # upgraded, waiting for the first message
    started = asyncio.get_running_loop().time()
    assert await _close_while_stopping(gw, ws) == []
    assert ws.close_code == 1012
    assert asyncio.get_running_loop().time() - started < 2  # not the shutdown timeout
    assert await _records(gw) == [("tts", 1012)]


async def test_shutdown_closes_a_relayed_realtime_model_1012(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(provider_overrides(upstream.url, "openai") + TOKENS, ENV)
    ws = await http.ws_connect(gw.ws("/v1/realtime?model=openai/gpt-realtime"), headers=AUTH)
    await ws.send_str('{"type": "session.update", "session": {}}')
    assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT
    await _close_while_stopping(gw, ws)
    assert ws.close_code == 1012
    # the gateway is the upstream's client: it goes away
    assert upstream.connections[0].close_code == 1001


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer ek_unknown_or_expired"},
    ],
    ids=["none", "wrong", "unknown-secret"],
)
async def test_realtime_auth_is_refused_before_the_upgrade(
    gateway: GatewayFactory, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    """An HTTP 401, not a WebSocket close: nothing for an SDK to reconnect after."""
    gw = await gateway(TOKENS, ENV)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(gw.ws(REALTIME), headers=headers)
    assert refused.value.status == 401


async def test_realtime_connection_limit_is_refused_before_the_upgrade(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway("[accounts.local.gateways.default]\nlimits = { max_connections = 1 }\n")
    async with http.ws_connect(gw.ws(REALTIME)) as ws:
        assert orjson.loads((await ws.receive(timeout=30)).data)["type"] == "session.created"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(gw.ws(REALTIME))
        assert refused.value.status == 429


@pytest.mark.parametrize(
    ("limits", "code"),
    [("idle_seconds = 1", CloseCode.IDLE), ("max_session_seconds = 1", CloseCode.SESSION_TOO_LONG)],
)
async def test_realtime_limits_close_with_4xxx(
    gateway: GatewayFactory, http: aiohttp.ClientSession, limits: str, code: int
) -> None:
    gw = await gateway(f"[accounts.local.gateways.default]\nlimits = {{ {limits} }}\n")
    async with http.ws_connect(gw.ws(REALTIME)) as ws:
        kinds = []
        async with asyncio.timeout(10):
            while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                kinds.append(orjson.loads(msg.data)["type"])
        assert kinds[-1] == "error"
        assert ws.close_code == code
        assert code not in RECONNECTING_CODES


@pytest.mark.parametrize(("status", "code"), [(401, 1008), (429, 1008), (503, 1011)])
async def test_a_provider_refusing_a_native_relay_closes_1008_not_1011(
    gateway: GatewayFactory, http: aiohttp.ClientSession, status: int, code: int
) -> None:
    """A native-protocol speech relay decides after the upgrade, so a provider's refusal
    is a close: a 4xx one (wrong key, rate limit) would only be repeated, so 1008; a
    provider that is down is worth a retry, so 1011."""
    async with RecordingUpstream(reject_status=status) as up:
        gw = await gateway(provider_overrides(up.url, "deepgram"))
        async with http.ws_connect(gw.ws("/v1/tts/deepgram")) as ws:
            await ws.send_str('{"type": "Speak", "text": "native"}')
            msg = await ws.receive(timeout=30)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == code
            assert f"HTTP {status}" in msg.extra


@pytest.mark.parametrize(("status", "code"), [(401, 1008), (503, 1011)])
async def test_a_provider_refusing_a_unified_session_closes_1008_not_1011(
    gateway: GatewayFactory, http: aiohttp.ClientSession, status: int, code: int
) -> None:
    """The unified protocol on a cloud engine: a provider that refuses the key (4xx) ends
    the session with 1008 (a reconnect would be refused again); one that is down, 1011."""
    async with RecordingUpstream(reject_status=status) as up:
        gw = await gateway(provider_overrides(up.url, "deepgram"))
        async with http.ws_connect(gw.ws("/v1/stt/deepgram")) as ws:
            await ws.send_str('{"type": "start"}')
            texts = []
            while (msg := await ws.receive(timeout=30)).type is aiohttp.WSMsgType.TEXT:
                texts.append(orjson.loads(msg.data))
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert ws.close_code == code, texts
            errors = [t for t in texts if t.get("type") == "error"]
            assert errors, texts
            assert errors[0]["retryable"] is (code == 1011), errors
