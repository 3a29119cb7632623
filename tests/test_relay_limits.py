"""Limits inside the open socket, over real sockets, with their close codes."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest
from aiohttp import WSMsgType
from tests.conftest import GatewayFactory, provider_overrides, settled, wait_for

from voxgate.store import UsageQuery
from voxgate.testing import RecordingUpstream


def toml(up: RecordingUpstream, limits: str, extra: str = "") -> str:
    return provider_overrides(up.url, "openai") + (
        f"[accounts.local.gateways.default]\nlimits = {{ {limits} }}\n{extra}"
    )


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int, reason: str) -> None:
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                break
    assert ws.close_code == code
    if msg.type is WSMsgType.CLOSE:
        assert msg.extra == reason


async def last_record(gw):
    await settled(gw)
    return (await gw.services.store.query(UsageQuery("local", "default")))[0]


async def test_messages_per_minute_4001(gateway: GatewayFactory, upstream, http) -> None:
    gw = await gateway(toml(upstream, "messages_per_minute = 5"))
    async with http.ws_connect(gw.ws("/v1/local/default/openai")) as ws:
        for i in range(6):
            await ws.send_str(str(i))
        await expect_close(ws, 4001, "rate limit exceeded")
    conn = upstream.connections[0]
    await conn.closed.wait()
    assert conn.received == ["0", "1", "2", "3", "4"]  # the sixth was not relayed
    rec = await last_record(gw)
    assert (rec.client_close_code, rec.error) == (4001, "rate_limit_exceeded")
    assert (
        'voxgate_limit_rejections_total{limit="messages_per_minute"} 1'
        in gw.services.metrics.render()
    )


async def test_max_message_bytes_4002_without_buffering_it(
    gateway: GatewayFactory, upstream, http
) -> None:
    gw = await gateway(toml(upstream, "max_message_bytes = 1000"))
    async with http.ws_connect(gw.ws("/v1/local/default/openai")) as ws:
        await ws.send_bytes(b"a" * 1000)  # at the limit: fine
        assert len((await ws.receive()).data) == 1000
        await ws.send_bytes(b"b" * 1001)
        await expect_close(ws, 4002, "message too large")
    rec = await last_record(gw)
    assert rec.client_close_code == 4002
    assert rec.error == "message_too_large"
    assert upstream.connections[0].received == [b"a" * 1000]


async def test_max_session_seconds_4003(gateway: GatewayFactory, upstream, http) -> None:
    gw = await gateway(toml(upstream, "max_session_seconds = 1"))
    t0 = time.monotonic()
    async with http.ws_connect(gw.ws("/v1/local/default/openai")) as ws:
        await expect_close(ws, 4003, "session too long")
    assert 0.9 < time.monotonic() - t0 < 3


async def test_idle_seconds_4008_and_activity_resets_it(
    gateway: GatewayFactory, upstream, http
) -> None:
    gw = await gateway(toml(upstream, "idle_seconds = 1"))
    async with http.ws_connect(gw.ws("/v1/local/default/openai")) as ws:
        for _ in range(3):  # 1.5 s of activity every 0.5 s keeps it open
            await asyncio.sleep(0.5)
            await ws.send_str("still here")
            assert (await ws.receive()).data == "still here"
        t0 = time.monotonic()
        await expect_close(ws, 4008, "idle timeout")
        assert 0.8 < time.monotonic() - t0 < 2.5
    await upstream.connections[0].closed.wait()
    assert upstream.connections[0].close_code == 1000


async def test_max_connections_429_and_release(gateway: GatewayFactory, upstream, http) -> None:
    gw = await gateway(toml(upstream, "max_connections = 2"))
    a = await http.ws_connect(gw.ws("/v1/local/default/openai"))
    b = await http.ws_connect(gw.ws("/v1/local/default/openai"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(gw.ws("/v1/local/default/openai"))
    assert info.value.status == 429
    assert len(upstream.handshakes) == 2  # refused before dialling the upstream
    await a.close()
    await wait_for(lambda: len(gw.services.live) == 1)
    c = await http.ws_connect(gw.ws("/v1/local/default/openai"))
    await b.close()
    await c.close()


async def test_per_token_limits(gateway: GatewayFactory, upstream, http) -> None:
    extra = (
        'tokens = [{ name = "small", env = "T_SMALL", limits = { max_connections = 1, messages_per_minute = 2 } },'
        ' { name = "big", env = "T_BIG" }]\n'
    )
    gw = await gateway(
        toml(upstream, "max_connections = 10", extra), {"T_SMALL": "small-tok", "T_BIG": "big-tok"}
    )
    small = {"voxgate-authorization": "Bearer small-tok"}
    big = {"voxgate-authorization": "Bearer big-tok"}
    s1 = await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=small)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=small)
    assert info.value.status == 429
    b1 = await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=big)
    b2 = await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=big)
    for _ in range(3):
        await s1.send_str("x")
    await expect_close(s1, 4001, "rate limit exceeded")
    for _ in range(3):
        await b1.send_str("y")
        assert (await b1.receive()).data == "y"
    await b1.close()
    await b2.close()
    await settled(gw)
    names = {r.token_name for r in await gw.services.store.query(UsageQuery("local", "default"))}
    assert names == {"small", "big"}


async def test_invalid_utf8_from_client_ends_only_that_session(
    gateway: GatewayFactory, upstream, http
) -> None:
    gw = await gateway(toml(upstream, "max_connections = 10"))
    good = await http.ws_connect(gw.ws("/v1/local/default/openai"))
    bad = await http.ws_connect(gw.ws("/v1/local/default/openai"))
    # a text frame that is not UTF-8, written raw (aiohttp's client would refuse)
    await bad._writer.send_frame(b"\xff\xfe", 0x1)  # opcode TEXT
    await expect_close(bad, 1007, "")
    await good.send_str("fine")
    assert (await good.receive()).data == "fine"
    await good.close()


async def test_flood_from_one_client_leaves_other_session_responsive(
    gateway: GatewayFactory, upstream, http
) -> None:
    """One client floods without reading its echoes; another measures round trips.

    Backpressure bounds what the flooder can push (the gateway stops reading it), and
    the quiet session's latency stays close to its baseline.
    """
    gw = await gateway(toml(upstream, "max_connections = 10, messages_per_minute = 100000000"))
    quiet = await http.ws_connect(gw.ws("/v1/local/default/openai"))

    async def round_trips(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await quiet.send_bytes(b"p" * 64)
            await quiet.receive()
            out.append(time.perf_counter() - t0)
        return out

    baseline = statistics.median(await round_trips(300))
    flooder = await http.ws_connect(gw.ws("/v1/local/default/openai"))
    chunk = b"f" * 16384
    stop = asyncio.Event()

    async def flood() -> int:
        sent = 0
        while not stop.is_set():
            await flooder.send_bytes(chunk)  # never reads: echoes pile up
            sent += 1
        return sent

    flood_task = asyncio.create_task(flood())
    await asyncio.sleep(0.5)
    during = await round_trips(300)
    stop.set()
    flood_task.cancel()
    flood_conn = upstream.connections[1]
    relayed = sum(len(x) for x in flood_conn.received)
    p50 = statistics.median(during)
    print(
        f"quiet session p50 round trip: {baseline * 1e6:.0f} µs alone, {p50 * 1e6:.0f} µs "
        f"during the flood; flood bytes that got through: {relayed}"
    )
    # the quiet session still gets answers promptly
    assert p50 < max(10 * baseline, 0.005), (baseline, p50)
    # backpressure: only a bounded amount of the flood made it through (buffers on the
    # way, not everything the flooder wanted to send)
    assert relayed < 64 * 1024 * 1024
    flooder._response.connection.transport.abort()
    await quiet.close()


async def test_keepalive_pings_on_each_side(gateway: GatewayFactory, http) -> None:
    async with RecordingUpstream(autoping=False) as up:
        gw = await gateway(toml(up, "heartbeat_seconds = 1"))
        # a client that answers pings (aiohttp does, while it is inside receive()) stays
        async with http.ws_connect(gw.ws("/v1/local/default/openai")) as ws:
            reader = asyncio.create_task(ws.receive())
            await asyncio.sleep(2.3)
            assert not reader.done()
            await ws.send_str("alive")
            async with asyncio.timeout(5):
                assert (await reader).data == "alive"
        assert up.connections[0].pings >= 2  # the gateway pinged the upstream by itself
        # a client that never answers pings is dropped; the upstream is told it went away
        silent = await http.ws_connect(gw.ws("/v1/local/default/openai"), autoping=False)
        conn = await up.wait_for_connection(2)
        async with asyncio.timeout(6):
            await conn.closed.wait()
        assert conn.close_code == 1001
        await silent.close()
