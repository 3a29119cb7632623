"""The relay connection driven end to end over in-memory channels (no sockets)."""

from __future__ import annotations

import asyncio

from voxgate.core.limits import CloseCode
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.protocols.relay.usage import meter_for
from voxgate.settings import Limits
from voxgate.testing import memory_pair
from voxgate.transports.relay import RelayConnection
from voxgate.transports.ws import Closed


def make(limits: Limits | None = None):
    client, client_gw = memory_pair()
    upstream_gw, upstream = memory_pair()
    loop = asyncio.get_running_loop()
    info = SessionInfo("s", "local", "default", "openai", None, None, None)
    session = RelaySession(
        info, limits or Limits(), now=loop.time(), wall=0.0, meter=meter_for("openai")
    )
    conn = RelayConnection(session, client_gw, upstream_gw, close_timeout=1)
    return client, upstream, conn


async def test_frames_relay_in_order_both_ways_and_close_propagates() -> None:
    client, upstream, conn = make()
    task = asyncio.create_task(conn.run())
    frames = ["a", b"\x00\x01", "c" * 1000, b""]
    for f in frames:
        await (client.send_text(f) if isinstance(f, str) else client.send_bytes(f))
    got = [await upstream.receive() for _ in frames]
    assert got == frames
    await upstream.send_text('{"type":"response.done","response":{"usage":{"input_tokens":4}}}')
    assert (await client.receive()).startswith('{"type":"response.done"')
    await client.close(4321, "bye")
    ending = await task
    assert ending.client_code == 4321
    assert await upstream.receive() == Closed(4321, "bye", clean=True)
    assert conn.session.client_frames == 4
    assert conn.session.upstream_frames == 1


async def test_upstream_close_code_reaches_client() -> None:
    client, upstream, conn = make()
    task = asyncio.create_task(conn.run())
    await upstream.send_text("last words")
    await upstream.close(4500, "upstream says no")
    assert await client.receive() == "last words"
    assert await client.receive() == Closed(4500, "upstream says no", clean=True)
    assert (await task).upstream_code == 4500


async def test_upstream_drop_closes_client_with_1011() -> None:
    client, upstream, conn = make()
    task = asyncio.create_task(conn.run())
    upstream.drop()
    ending = await task
    assert ending.error == "upstream_disconnected"
    assert await client.receive() == Closed(1011, "upstream connection lost", clean=True)


async def test_rate_limit_closes_with_4001_and_does_not_relay_the_excess() -> None:
    client, upstream, conn = make(Limits(messages_per_minute=2))
    task = asyncio.create_task(conn.run())
    for i in range(3):
        await client.send_text(str(i))
    ending = await task
    assert ending.client_code == CloseCode.RATE_LIMITED
    assert await upstream.receive() == "0"
    assert await upstream.receive() == "1"
    closed = await upstream.receive()
    assert isinstance(closed, Closed)
    assert await client.receive() == Closed(4001, "rate limit exceeded", clean=True)


async def test_idle_and_session_timers() -> None:
    _client, _upstream, conn = make(Limits(idle_seconds=0.05))
    ending = await asyncio.wait_for(conn.run(), 2)
    assert ending.client_code == CloseCode.IDLE
    _client, _upstream, conn = make(Limits(idle_seconds=10, max_session_seconds=0.05))
    ending = await asyncio.wait_for(conn.run(), 2)
    assert ending.client_code == CloseCode.SESSION_TOO_LONG


async def test_activity_keeps_an_idle_session_open() -> None:
    client, upstream, conn = make(Limits(idle_seconds=0.2))
    task = asyncio.create_task(conn.run())
    for _ in range(6):
        await asyncio.sleep(0.08)
        await client.send_text("ping")
        assert await upstream.receive() == "ping"
    assert not task.done()
    ending = await asyncio.wait_for(task, 2)
    assert ending.client_code == CloseCode.IDLE


async def test_stop_closes_the_client_1012_and_the_upstream_going_away() -> None:
    client, upstream, conn = make()
    task = asyncio.create_task(conn.run())
    await asyncio.sleep(0)
    conn.stop()
    ending = await task
    assert ending.client_code == 1012
    assert await client.receive() == Closed(1012, "server shutting down", clean=True)
    assert await upstream.receive() == Closed(1001, "server shutting down", clean=True)
    assert conn.finished.done()


async def test_dropped_client_is_recorded_1006_but_upstream_gets_a_sendable_code() -> None:
    client, upstream, conn = make()
    task = asyncio.create_task(conn.run())
    client.drop()
    ending = await task
    assert (ending.client_code, ending.error) == (1006, "client_disconnected")
    assert await upstream.receive() == Closed(1001, "client went away", clean=True)
    # and the gateway never tries to put 1006 in a close frame
    assert conn.client.closed_with == Closed(1011, "", clean=True)
