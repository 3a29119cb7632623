"""Hostile input through a real relay on 127.0.0.1: frames that once broke a session or
lost its usage record (issue 12, defects 7, 8 and 9), and a seeded fuzz beside the canary.

Every test here checks what a user sees: the close code, the record in ``/logs``, the
captured frames in ``/logs/{id}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import orjson
from aiohttp import WSMsgType
from tests.conftest import GatewayFactory, provider_overrides, settled

from voxgate.testing import RecordingUpstream
from voxgate.testing.upstream import Connection

TOKEN = "hostile-gw-token-0123456789"
STORED_KEY = "sk-stored-key-ABCDEFGHIJKLMNOP0123"
CLIENT_KEY = "sk-client-own-key-QRSTUVWXYZ987654"
ENV = {"GW_TOKEN": TOKEN, "K_OPENAI": STORED_KEY}
GW = {"voxgate-authorization": f"Bearer {TOKEN}"}
LOGS = {"Authorization": f"Bearer {TOKEN}"}
MAX_BYTES = 4096


def toml(url: str, *, capture: bool = True, extra: str = "", limits: str = "") -> str:
    return (
        provider_overrides(url, "openai")
        + f"[relay]\ncapture_max_bytes = {MAX_BYTES}\n{extra}"
        + "[accounts.local.gateways.default]\n"
        + 'tokens = [{ name = "ci", env = "GW_TOKEN" }]\n'
        + 'keys = { openai = { env = "K_OPENAI" } }\n'
        + f"capture_payloads = {'true' if capture else 'false'}\n"
        + (f"limits = {{ {limits} }}\n" if limits else "")
    )


async def records(http: aiohttp.ClientSession, base: str) -> list[dict[str, object]]:
    async with http.get(f"{base}/v1/local/default/logs?limit=1000", headers=LOGS) as r:
        assert r.status == 200
        body = await r.json()
    return list(body["records"])


async def one_log(http: aiohttp.ClientSession, base: str, sid: object) -> dict[str, object]:
    async with http.get(f"{base}/v1/local/default/logs/{sid}", headers=LOGS) as r:
        assert r.status == 200
        return dict(await r.json())


# --- defect 7: capture dies on nested frames -------------------------------------------


async def test_deeply_nested_frames_are_captured_as_placeholders(
    gateway: GatewayFactory,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    tracebacks: Callable[[], list[str]],
) -> None:
    gw = await gateway(toml(upstream.url), ENV)
    nested = "[" * 300 + "]" * 300
    deeper = '{"a":' * 2000 + "1" + "}" * 2000  # past orjson's own parse depth
    huge = orjson.dumps({"type": "x", "text": "é" * 200_000}).decode()
    async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW) as ws:
        for frame in (nested, deeper, huge):
            await ws.send_str(frame)
            echo = await ws.receive()  # the echo upstream sends it back: both directions
            assert (echo.type, echo.data) == (WSMsgType.TEXT, frame)
        await ws.close()
        assert ws.close_code == 1000
    await settled(gw)
    [rec] = await records(http, gw.base)
    assert (rec["client_close_code"], rec["upstream_close_code"], rec["error"]) == (
        1000,
        1000,
        None,
    )
    frames = (await one_log(http, gw.base, rec["session_id"]))["capture"]["frames"]  # type: ignore[index]
    assert [f["direction"] for f in frames] == ["client", "upstream"] * 3
    for f in frames:
        assert len(f["payload"].encode()) <= MAX_BYTES + 100
    assert "nested deeper than 32 levels" in frames[0]["payload"]
    # deeper than orjson parses: not JSON to it, so kept as text, cut
    assert frames[2]["payload"].startswith('{"a":{"a":')
    assert frames[2]["payload"].endswith(f"…<cut, {len(deeper)} bytes>")
    assert frames[4]["size"] == len(huge.encode())
    assert tracebacks() == []


# --- defect 8: captures store secrets ---------------------------------------------------


async def quote_the_key(conn: Connection) -> None:
    """An upstream that answers every frame with an error quoting the key it was given."""
    auth = conn.handshake.headers.get("authorization", "")
    async for msg in conn.ws:
        if msg.type is WSMsgType.TEXT:
            error = {"message": f"Incorrect API key provided: {auth}. Key {auth[7:]} is wrong."}
            await conn.ws.send_str(orjson.dumps({"type": "error", "error": error}).decode())


async def test_captured_frames_never_hold_secrets(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with RecordingUpstream(quote_the_key) as up:
        gw = await gateway(toml(up.url), ENV)
        # the stored key, quoted back by the upstream
        async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW) as ws:
            await ws.send_str(f'{{"type":"session.update","note":"my token is {TOKEN}"}}')
            quoted = await ws.receive()
            assert STORED_KEY in quoted.data  # relayed byte for byte; only the capture is scrubbed
        # the client's own key (never configured), quoted back too
        headers = {**GW, "Authorization": f"Bearer {CLIENT_KEY}"}
        async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=headers) as ws:
            await ws.send_str(f"plain text with {CLIENT_KEY} inside")
            assert CLIENT_KEY in (await ws.receive()).data
        await settled(gw)
        recs = await records(http, gw.base)
        assert len(recs) == 2
        for rec in recs:
            body = orjson.dumps(await one_log(http, gw.base, rec["session_id"])).decode()
            for secret in (STORED_KEY, CLIENT_KEY, TOKEN):
                assert secret not in body
            assert "Incorrect API key provided" in body


# --- defect 9: usage records lost or wrong ---------------------------------------------

JSON_SAFE = 2**53 - 1


def done(usage: object) -> str:
    return orjson.dumps({"type": "response.done", "response": {"usage": usage}}).decode()


async def test_absurd_usage_is_clamped_and_the_record_saved(
    gateway: GatewayFactory,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    tracebacks: Callable[[], list[str]],
) -> None:
    gw = await gateway(toml(upstream.url, capture=False), ENV)
    frames = [
        done({"input_tokens": 2**63 - 1, "output_tokens": 2**63 - 1, "total_tokens": 2**64 - 1}),
        done({"input_tokens": 2**63 - 1, "output_tokens": 5, "total_tokens": 2**63 + 4}),
        done({"input_tokens": -1000, "output_tokens": -1, "total_tokens": -1001}),
        done({"input_tokens": "lots", "output_tokens": True, "total_tokens": 1e300}),
        done({"input_tokens": 7, "output_tokens": 9, "total_tokens": 16}),
    ]
    async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW) as ws:
        for f in frames:
            await ws.send_str(f)
            await ws.receive()
    # negative counts alone, in a session of their own
    async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW) as ws:
        await ws.send_str(done({"input_tokens": -5, "output_tokens": -6, "total_tokens": -11}))
        await ws.receive()
    await settled(gw)
    recs = await records(http, gw.base)
    assert len(recs) == 2
    big = next(r for r in recs if r["client_frames"] == len(frames))
    small = next(r for r in recs if r["client_frames"] == 1)
    for rec in (big, small):
        for field in ("input_tokens", "output_tokens", "total_tokens"):
            assert isinstance(rec[field], int)
            assert 0 <= rec[field] <= JSON_SAFE, (field, rec[field])
        assert rec["error"] is None
    assert big["input_tokens"] > 2 * 1_000_000  # the huge reports count, clamped
    assert (small["input_tokens"], small["output_tokens"], small["total_tokens"]) == (0, 0, 0)
    assert tracebacks() == []


async def test_client_vanishing_during_the_upstream_connect_leaves_a_record(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks: Callable[[], list[str]]
) -> None:
    async with RecordingUpstream(accept_delay=0.5) as up:
        gw = await gateway(toml(up.url, capture=False), ENV)
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(handshake(gw.port, "/v1/local/default/openai?model=m", GW))
        await writer.drain()
        async with asyncio.timeout(5):
            while not up.handshakes:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        writer.transport.abort()  # gone while voxgate waits for the upstream
        conn = await up.wait_for_connection()
        await asyncio.wait_for(conn.closed.wait(), 5)
        await settled(gw)
        [rec] = await records(http, gw.base)
        assert rec["error"] == "client_disconnected"
        assert conn.close_code == 1001
    assert tracebacks() == []


async def test_a_broken_client_handshake_is_refused_before_dialling_upstream(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream.url, capture=False), ENV)
    bad = {**GW, "Sec-WebSocket-Version": "99"}
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(handshake(gw.port, "/v1/local/default/openai", bad))
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.split()[1] == b"400"
    await settled(gw)
    assert upstream.handshakes == []  # no session, so no upstream connection and no record
    assert await records(http, gw.base) == []


def handshake(port: int, path: str, headers: dict[str, str], *, key: str | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key or 'dGhlIHNhbXBsZSBub25jZQ=='}",
    ]
    if not any(k.lower() == "sec-websocket-version" for k in headers):
        lines.append("Sec-WebSocket-Version: 13")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
