"""Upstream faults, for the relay and for an ``[llm.NAME]`` endpoint behind a realtime session.

Each fault is played by a real server on 127.0.0.1: refused connections, a handshake
answered with HTTP 500, a connection dropped mid-stream, a stall, garbage, an oversize
message, a slow reader, a TCP reset. Each test checks what the client sees (the README's
close code, or ``response.done`` failed with ``llm_error``), that a second session beside
it is unaffected, and that each session leaves exactly one usage record.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web
from tests.conftest import UPGRADE_HEADERS, Gateway, GatewayFactory, provider_overrides, settled

from voxgate.testing import RecordingUpstream
from voxgate.testing.upstream import Connection

# --- servers that misbehave --------------------------------------------------------------

RawScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@asynccontextmanager
async def raw_server(script: RawScript) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 running ``script`` per connection; yields ``ws://host:port``."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stopped by the cleanup below (a cancelled callback task logs an error)
        finally:
            writer.transport.abort()
            tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def accept_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a WebSocket handshake and answer 101 (by hand, so what follows can be anything)."""
    request = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", request)
    assert found is not None
    accept = base64.b64encode(hashlib.sha1(found.group(1) + _GUID).digest()).decode()
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    await writer.drain()


def text_frame(data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        return bytes([0x81, n]) + data
    if n < 65536:
        return bytes([0x81, 126]) + struct.pack("!H", n) + data
    return bytes([0x81, 127]) + struct.pack("!Q", n) + data


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- the relay ---------------------------------------------------------------------------

TOKEN = "faults-gw-token-0123456789"
GW = {"voxgate-authorization": f"Bearer {TOKEN}"}
LOGS = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"GW_TOKEN": TOKEN}


def relay_toml(bad_url: str, healthy_url: str, *, relay: str = "", limits: str = "") -> str:
    return (
        f'[providers.bad]\nurl = "{bad_url}"\n'
        + provider_overrides(healthy_url, "openai")
        + f"[relay]\nconnect_timeout_seconds = 0.5\n{relay}"
        + '[accounts.local.gateways.default]\ntokens = [{ name = "ci", env = "GW_TOKEN" }]\n'
        + "capture_payloads = true\n"
        + (f"limits = {{ {limits} }}\n" if limits else "")
    )


async def records(http: aiohttp.ClientSession, gw: Gateway) -> list[dict[str, Any]]:
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs?limit=1000", headers=LOGS) as r:
        assert r.status == 200
        return list((await r.json())["records"])


@asynccontextmanager
async def healthy_session(
    http: aiohttp.ClientSession, gw: Gateway
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A second session beside the fault; ``check()`` asserts it still echoes at once."""
    async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW) as ws:

        async def check() -> None:
            for i in range(3):
                await ws.send_str(f"ping {i}")
                msg = await asyncio.wait_for(ws.receive(), 1.0)
                assert (msg.type, msg.data) == (WSMsgType.TEXT, f"ping {i}")

        await check()
        yield check


async def handshake_refused(http: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    async with http.get(
        gw.ws("/v1/local/default/bad").replace("ws:", "http:"),
        headers={**GW, **UPGRADE_HEADERS},
    ) as r:
        assert r.status == 502
        return dict((await r.json())["error"])


async def relay_until_closed(
    http: aiohttp.ClientSession, gw: Gateway, frames: list[str | bytes]
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(gw.ws("/v1/local/default/bad"), headers=GW)
    for f in frames:
        if isinstance(f, str):
            await ws.send_str(f)
        else:
            await ws.send_bytes(f)
    async with asyncio.timeout(10):
        while (await ws.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            pass
    return ws


async def test_relay_upstream_refuses_the_connection(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    gw = await gateway(relay_toml(f"ws://127.0.0.1:{await closed_port()}", upstream.url), ENV)
    async with healthy_session(http, gw) as check:
        err = await handshake_refused(http, gw)
        assert (err["code"], err["reason"]) == ("upstream_error", "unreachable")
        await check()
    recs = await records(http, gw)
    assert sorted(r["error"] or "" for r in recs) == ["", "upstream_unreachable"]
    assert tracebacks() == []


async def test_relay_upstream_answers_500(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    async with RecordingUpstream(reject_status=500) as bad:
        gw = await gateway(relay_toml(bad.url, upstream.url), ENV)
        async with healthy_session(http, gw) as check:
            err = await handshake_refused(http, gw)
            assert (err["reason"], err["upstream_status"]) == ("handshake_rejected", 500)
            await check()
        recs = await records(http, gw)
    assert sorted(r["error"] or "" for r in recs) == ["", "upstream_handshake_rejected"]
    assert tracebacks() == []


async def test_relay_upstream_stalls_in_the_handshake(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)

    async with raw_server(stall) as url:
        gw = await gateway(relay_toml(url, upstream.url), ENV)
        async with healthy_session(http, gw) as check:
            err = await handshake_refused(http, gw)
            assert err["reason"] == "timeout"
            await check()
        recs = await records(http, gw)
    assert sorted(r["error"] or "" for r in recs) == ["", "upstream_timeout"]
    assert tracebacks() == []


async def test_relay_upstream_answers_garbage_to_the_handshake(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n" * 10)
        await writer.drain()
        await asyncio.sleep(0.2)

    async with raw_server(garbage) as url:
        gw = await gateway(relay_toml(url, upstream.url), ENV)
        async with healthy_session(http, gw) as check:
            err = await handshake_refused(http, gw)
            assert err["reason"] in ("unreachable", "handshake_rejected")
            await check()
        recs = await records(http, gw)
    assert len(recs) == 2
    assert tracebacks() == []


@pytest.mark.parametrize("how", ["drop", "reset", "garbage"])
async def test_relay_upstream_breaks_mid_stream(
    gateway: GatewayFactory,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    tracebacks,
    how: str,
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_websocket(reader, writer)
        writer.write(text_frame(b'{"type":"session.created"}'))
        await writer.drain()
        await reader.read(10)  # the client's first frame arrives
        if how == "drop":
            writer.transport.abort()
        elif how == "reset":
            reset(writer)
        else:
            writer.write(b"\x8f\x7f" + b"\xff" * 64)  # a reserved opcode, a bogus length
            await writer.drain()
            await asyncio.sleep(0.5)

    async with raw_server(script) as url:
        gw = await gateway(relay_toml(url, upstream.url), ENV)
        async with healthy_session(http, gw) as check:
            ws = await relay_until_closed(http, gw, ["hello"])
            assert ws.close_code == 1011
            await check()
        recs = await records(http, gw)
    bad = next(r for r in recs if r["provider"] == "bad")
    assert len(recs) == 2
    assert bad["client_close_code"] == 1011
    assert bad["error"] == "upstream_disconnected"
    assert tracebacks() == []


async def test_relay_upstream_sends_an_oversize_message(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    async def huge(conn: Connection) -> None:
        async for msg in conn.ws:
            if msg.type is WSMsgType.TEXT:
                await conn.ws.send_str("x" * 200_000)

    async with RecordingUpstream(huge) as bad:
        toml = relay_toml(bad.url, upstream.url, relay="max_upstream_message_bytes = 65536\n")
        gw = await gateway(toml, ENV)
        async with healthy_session(http, gw) as check:
            ws = await relay_until_closed(http, gw, ["hello"])
            assert ws.close_code == 1011
            await check()
        recs = await records(http, gw)
    rec = next(r for r in recs if r["provider"] == "bad")
    assert len(recs) == 2
    assert rec["error"] == "upstream_message_too_large"
    assert tracebacks() == []


async def test_relay_upstream_goes_quiet(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    """An upstream that answers pings but sends nothing: the idle limit closes it (4008)."""

    async def quiet(conn: Connection) -> None:
        async for _ in conn.ws:
            pass

    async with RecordingUpstream(quiet) as bad:
        gw = await gateway(relay_toml(bad.url, upstream.url, limits="idle_seconds = 1"), ENV)
        ws = await relay_until_closed(http, gw, ["hello"])
        assert ws.close_code == 4008
        recs = await records(http, gw)
    assert [r["error"] for r in recs] == ["idle_timeout"]
    assert tracebacks() == []


async def test_relay_upstream_stops_answering_pings(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    """An upstream that stalls completely (no pongs): the heartbeat ends it (1011)."""

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_websocket(reader, writer)
        await asyncio.sleep(30)

    async with raw_server(stalled) as url:
        toml = relay_toml(url, upstream.url, limits="heartbeat_seconds = 1")
        gw = await gateway(toml, ENV)
        async with healthy_session(http, gw) as check:
            closing = asyncio.create_task(relay_until_closed(http, gw, []))
            while not closing.done():  # the healthy client keeps talking (and answering pings)
                await check()
                await asyncio.sleep(0.1)
            assert (await closing).close_code == 1011
            await check()
        recs = await records(http, gw)
    rec = next(r for r in recs if r["provider"] == "bad")
    assert len(recs) == 2
    assert rec["error"] == "upstream_disconnected"
    assert tracebacks() == []


async def test_relay_upstream_reads_slowly(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession, tracebacks
) -> None:
    """A slow reader slows the client's sends (backpressure) and nobody else."""

    async def slow(conn: Connection) -> None:
        async for msg in conn.ws:
            if msg.type is WSMsgType.BINARY:
                conn.received.append(len(msg.data))
                await asyncio.sleep(0.01)

    async with RecordingUpstream(slow) as bad:
        toml = relay_toml(bad.url, upstream.url, relay="buffer_bytes = 65536\n")
        gw = await gateway(toml, ENV)
        async with healthy_session(http, gw) as check:
            ws = await http.ws_connect(gw.ws("/v1/local/default/bad"), headers=GW)
            # more than the kernel's loopback buffers on both hops can hold
            chunk = b"\x00" * 262144
            sending = asyncio.create_task(_send_all(ws, chunk, 200))
            await asyncio.sleep(0.3)
            await check()  # answered at once while the slow session is backed up
            assert not sending.done()  # the client is held back, not buffered for
            await asyncio.wait_for(sending, 20)
            await ws.close()
        recs = await records(http, gw)
    rec = next(r for r in recs if r["provider"] == "bad")
    assert rec["client_frames"] == 200
    assert rec["client_bytes"] == 200 * len(chunk)
    assert rec["error"] is None
    assert tracebacks() == []


async def _send_all(ws: aiohttp.ClientWebSocketResponse, chunk: bytes, n: int) -> None:
    for _ in range(n):
        await ws.send_bytes(chunk)


# --- an [llm.NAME] endpoint behind a realtime session -----------------------------------

ChatScript = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def chat_server(script: ChatScript) -> AsyncIterator[str]:
    """An OpenAI-compatible chat-completions server; yields its base URL."""

    async def complete(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await script(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def sse(request: web.Request, *chunks: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for c in chunks:
        await resp.write(c)
    return resp


def data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


HELLO = data({"choices": [{"index": 0, "delta": {"content": "Hello there."}}]})
STOP = data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
DONE = b"data: [DONE]\n\n"


def llm_toml(url: str) -> str:
    return (
        f'[llm.fake]\nbase_url = "{url}"\nconnect_timeout_seconds = 0.5\n'
        "read_timeout_seconds = 0.5\n"
    )


async def realtime(
    http: aiohttp.ClientSession, gw: Gateway, model: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(gw.ws(f"/v1/realtime?model={model}"))
    assert orjson.loads((await ws.receive()).data)["type"] == "session.created"
    update = {
        "type": "session.update",
        "session": {"type": "realtime", "output_modalities": ["text"]},
    }
    await ws.send_str(orjson.dumps(update).decode())
    assert orjson.loads((await ws.receive()).data)["type"] == "session.updated"
    return ws


async def ask(ws: aiohttp.ClientWebSocketResponse, text: str = "hello") -> dict[str, Any]:
    """A text turn; returns the ``response`` of its ``response.done``."""
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    await ws.send_str(orjson.dumps({"type": "conversation.item.create", "item": item}).decode())
    await ws.send_str('{"type":"response.create"}')
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT, msg
            event = orjson.loads(msg.data)
            if event["type"] == "response.done":
                return dict(event["response"])


async def realtime_records(http: aiohttp.ClientSession, gw: Gateway) -> list[dict[str, Any]]:
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs?limit=100") as r:
        return [x for x in (await r.json())["records"] if x["kind"] == "realtime"]


async def fails_with_llm_error(
    gateway: GatewayFactory, http: aiohttp.ClientSession, url: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One faulty answer beside a healthy session; returns its error and the records."""
    gw = await gateway(llm_toml(url))
    other = await realtime(http, gw, "voxgate/echo")
    ws = await realtime(http, gw, "fake/x")
    response = await ask(ws)
    assert response["status"] == "failed", response
    error = response["status_details"]["error"]
    assert error["code"] == "llm_error", error
    assert (await ask(other))["status"] == "completed"  # the other session is unaffected
    # and this one goes on: the next answer, from a healthy model, completes
    switch = {"type": "session.update", "session": {"type": "realtime", "model": "voxgate/echo"}}
    await ws.send_str(orjson.dumps(switch).decode())
    assert (await ask(ws))["status"] == "completed"
    await ws.close()
    await other.close()
    return error, await realtime_records(http, gw)


async def test_llm_refuses_the_connection(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks
) -> None:
    url = f"http://127.0.0.1:{await closed_port()}/v1"
    error, recs = await fails_with_llm_error(gateway, http, url)
    assert "cannot reach" in error["message"]
    assert len(recs) == 2
    assert tracebacks() == []


async def test_llm_answers_500(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks
) -> None:
    async def fail(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "overloaded"}}, status=500)

    async with chat_server(fail) as url:
        error, recs = await fails_with_llm_error(gateway, http, url)
    assert "500" in error["message"]
    assert len(recs) == 2
    assert tracebacks() == []


CHAT_FAULTS = {
    "drop": lambda req: _then(req, lambda r: r.transport.abort()),  # type: ignore[union-attr]
    "reset": lambda req: _then(req, _reset_request),
    "stall": lambda req: _then(req, lambda r: None, sleep=30),
    "stall_before_headers": lambda req: _sleep_then(req, 30),
    "garbage": lambda req: sse(req, b"\x00\xff garbage \xfe\n\ndata: {not json\n\n"),
    "no_finish": lambda req: sse(req, HELLO, DONE),
    "oversize": lambda req: sse(req, HELLO, b"data: " + b"x" * 300_000 + b"\n\n"),
    "error_event": lambda req: sse(req, data({"error": {"message": "model exploded"}})),
}


async def _then(
    request: web.Request, act: Callable[[web.Request], object], *, sleep: float = 0.0
) -> web.StreamResponse:
    resp = await sse(request, HELLO)
    act(request)
    await asyncio.sleep(sleep)
    return resp


async def _sleep_then(request: web.Request, seconds: float) -> web.StreamResponse:
    await asyncio.sleep(seconds)
    return await sse(request, HELLO, STOP, DONE)


def _reset_request(request: web.Request) -> None:
    assert request.transport is not None
    sock = request.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.transport.abort()


@pytest.mark.parametrize("fault", list(CHAT_FAULTS))
async def test_llm_faults_end_the_response_with_llm_error(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks, fault: str
) -> None:
    async with chat_server(CHAT_FAULTS[fault]) as url:
        error, recs = await fails_with_llm_error(gateway, http, url)
    assert len(recs) == 2
    if fault == "error_event":
        assert "model exploded" in error["message"]
    assert tracebacks() == []


async def test_llm_slow_drip_completes(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks
) -> None:
    """Pieces slower than the session but each within the read timeout: a full answer."""

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = await sse(request)
        for word in ("one ", "two ", "three."):
            await asyncio.sleep(0.2)
            await resp.write(data({"choices": [{"index": 0, "delta": {"content": word}}]}))
        await resp.write(STOP + DONE)
        return resp

    async with chat_server(drip) as url:
        gw = await gateway(llm_toml(url))
        ws = await realtime(http, gw, "fake/x")
        response = await ask(ws)
        await ws.close()
        assert response["status"] == "completed"
        assert response["output"][0]["content"][0]["text"] == "one two three."
        assert len(await realtime_records(http, gw)) == 1
    assert tracebacks() == []


# --- defect 15: wrong types in an LLM stream ---------------------------------------------

MALFORMED = {
    "usage_lots": ({"choices": [], "usage": {"prompt_tokens": "lots"}}, "usage.prompt_tokens"),
    "usage_negative": (
        {"choices": [], "usage": {"completion_tokens": -3}},
        "usage.completion_tokens",
    ),
    "usage_list": ({"choices": [], "usage": [1, 2]}, "usage"),
    "choices_string": ({"choices": ["x"]}, "choices[0]"),
    "choices_object": ({"choices": {"a": 1}}, "choices"),
    "delta_string": ({"choices": [{"delta": "hi"}]}, "choices[0].delta"),
    "content_number": ({"choices": [{"delta": {"content": 5}}]}, "choices[0].delta.content"),
    "tool_calls_string": (
        {"choices": [{"delta": {"tool_calls": "x"}}]},
        "choices[0].delta.tool_calls",
    ),
    "tool_call_index": (
        {"choices": [{"delta": {"tool_calls": [{"index": "x"}]}}]},
        "choices[0].delta.tool_calls[0].index",
    ),
    "tool_call_function": (
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        "choices[0].delta.tool_calls[0].function",
    ),
    "tool_call_arguments": (
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": {}}}]}}]},
        "choices[0].delta.tool_calls[0].function.arguments",
    ),
    "finish_reason_number": ({"choices": [{"finish_reason": 3}]}, "choices[0].finish_reason"),
    "chunk_list": ([1, 2, 3], "not an object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_llm_chunks_of_the_wrong_type_are_llm_errors(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks, case: str
) -> None:
    chunk, field = MALFORMED[case]

    async def answer(request: web.Request) -> web.StreamResponse:
        return await sse(request, HELLO, data(chunk), STOP, DONE)

    async with chat_server(answer) as url:
        error, recs = await fails_with_llm_error(gateway, http, url)
    assert field in error["message"]
    assert len(recs) == 2
    assert tracebacks() == []


async def test_llm_absurd_token_counts_are_clamped(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tracebacks
) -> None:
    """``prompt_tokens`` 2**63: the answer still ends with ``response.done``, the record is kept."""
    usage = {"choices": [], "usage": {"prompt_tokens": 2**63, "completion_tokens": 2**63}}

    async def answer(request: web.Request) -> web.StreamResponse:
        return await sse(request, HELLO, STOP, data(usage), DONE)

    async with chat_server(answer) as url:
        gw = await gateway(llm_toml(url))
        ws = await realtime(http, gw, "fake/x")
        response = await ask(ws)
        response_again = await ask(ws)
        await ws.close()
        recs = await realtime_records(http, gw)
    assert response["status"] == response_again["status"] == "completed"
    assert response["usage"]["input_tokens"] == 1_000_000_000
    assert [r["input_tokens"] for r in recs] == [2_000_000_000]
    assert tracebacks() == []
