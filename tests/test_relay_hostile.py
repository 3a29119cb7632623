"""Hostile input through a real relay on 127.0.0.1: frames that once broke a session or
lost its usage record (issue 12, defects 7, 8 and 9), and a seeded fuzz beside the canary.

Every test here checks what a user sees: the close code, the record in ``/logs``, the
captured frames in ``/logs/{id}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import LineTooLong
from tests.conftest import (
    GatewayFactory,
    assert_healthy,
    canary_url,
    provider_overrides,
    settled,
)

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import StoreError
from voxgate.server.logsetup import MalformedRequests
from voxgate.store import UsageQuery, UsageStore
from voxgate.store.sqlite import SQLiteStore
from voxgate.testing import RecordingUpstream
from voxgate.testing.canary import Canary
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


async def test_a_session_cancelled_while_dialling_leaves_its_record(
    gateway: GatewayFactory, tracebacks: Callable[[], list[str]]
) -> None:
    """Server shutdown cancels a handler still waiting for its upstream: one record."""
    dialled = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.set()
        await reader.read()  # never answers the handshake

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    gw = await gateway(toml(url, capture=False, extra="connect_timeout_seconds = 30\n"), ENV)
    path = gw.services.store.path  # type: ignore[attr-defined]
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(handshake(gw.port, "/v1/local/default/openai?model=m", GW))
    await asyncio.wait_for(dialled.wait(), 5)
    await gw.stop()  # cancels the handler after the runner's grace period
    writer.transport.abort()
    server.close()
    fresh = SQLiteStore(path)
    await fresh.open()
    recs = await fresh.query(UsageQuery("local", "default"))
    await fresh.close()
    assert [(r.error, r.model) for r in recs] == [("server_shutdown", "m")]
    assert tracebacks() == []


class FlakyStore(UsageStore):
    """The real store, whose first ``failures`` writes fail as a locked database would."""

    def __init__(self, store: UsageStore, failures: int) -> None:
        self.store = store
        self.failures = failures

    async def open(self) -> None:
        await self.store.open()

    async def add(self, record: UsageRecord, capture: SessionCapture | None = None) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("sqlite: OperationalError: database is locked")
        await self.store.add(record, capture)

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        return await self.store.query(q)

    async def get(self, account: str, gateway: str, session_id: str) -> UsageRecord | None:
        return await self.store.get(account, gateway, session_id)

    async def get_capture(self, session_id: str) -> SessionCapture | None:
        return await self.store.get_capture(session_id)

    async def ping(self) -> bool:
        return await self.store.ping()

    async def close(self) -> None:
        await self.store.close()


async def test_a_failing_store_write_is_retried_then_reported(
    gateway: GatewayFactory,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await gateway(toml(upstream.url, capture=False), ENV)
    real = gw.services.store
    gw.services.store = FlakyStore(real, failures=2)
    async with http.ws_connect(gw.ws("/v1/local/default/openai?model=kept"), headers=GW) as ws:
        await ws.send_str("x")
        await ws.receive()
    await settled(gw)
    assert [r["model"] for r in await records(http, gw.base)] == ["kept"]  # the third try
    gw.services.store = FlakyStore(real, failures=100)
    async with http.ws_connect(gw.ws("/v1/local/default/openai?model=lost"), headers=GW) as ws:
        await ws.send_str("x")
        await ws.receive()
    await settled(gw)
    [lost] = [r for r in caplog.records if "not saved after" in r.getMessage()]
    assert lost.levelname == "ERROR"
    assert '"model":"lost"' in lost.getMessage()  # the whole record, for the operator
    assert '"client_frames":1' in lost.getMessage()


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


# --- the seeded fuzz, beside the canary --------------------------------------------------

SEED = 20261121
FUZZ_SESSIONS = 560
FUZZ_RAW = 60
FUZZ_VANISHING = 80
FUZZ_BAD = 80
WORKERS = 8
FUZZ_GW = {"voxgate-authorization": f"Bearer {TOKEN}"}
FUZZ_ENV = {"GW_TOKEN": TOKEN, "K_OPENAI": STORED_KEY, "K_OTHER": CLIENT_KEY}
MAX_MESSAGE = 131072
ABSURD = [2**63, 2**64 - 1, 2**70, -1, -(2**63), "lots", 1e300, 0.5, None, True, [1], {"a": 1}]
CLOSE_CODES = [1000, 1001, 1003, 1008, 1011, 3000, 4000, 4001, 4999, 1005, 1006, 2999, 5000]
ALPHABET = 'ab é€😀\x00\x1f{}[]":,\\/+=' + "QUJDRA"


def fuzz_toml(up: str, reject: str, dead: str, canary_toml: str) -> str:
    return (
        "[relay]\nmax_upstream_message_bytes = 262144\ncapture_max_frames = 40\n"
        "capture_max_bytes = 2048\nconnect_timeout_seconds = 2\n"
        f'[providers.openai]\nurl = "{up}/openai"\n'
        f'[providers.google]\nurl = "{up}/google"\n'
        f'[providers.raw]\nurl = "{up}/raw"\n'
        f'[providers.reject]\nurl = "{reject}"\n'
        f'[providers.dead]\nurl = "{dead}"\n'
        + canary_toml
        # the canary's gateway stays open (loopback); the fuzz has its own, with a token
        + "[accounts.fuzz.gateways.g]\n"
        + 'tokens = [{ name = "fuzz", env = "GW_TOKEN" }]\n'
        + 'keys = { openai = { env = "K_OPENAI" }, google = { env = "K_OTHER" }, '
        + 'raw = { env = "K_OPENAI" } }\n'
        + "capture_payloads = true\n"
        + f"limits = {{ max_connections = 1000, max_message_bytes = {MAX_MESSAGE}, "
        + "messages_per_minute = 300 }\n"
    )


async def fuzz_upstream(conn: Connection) -> None:
    """Echo, and obey a few commands: close with a code, drop, flood, oversize, usage."""
    with contextlib.suppress(ConnectionError):  # the gateway may be gone mid-send
        await _obey(conn.ws)


async def _obey(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
            continue
        if msg.type is not WSMsgType.TEXT:
            continue
        data: str = msg.data
        if data.startswith("!close "):
            await ws.close(code=int(data.split()[1]), message=b"fuzz says bye")
            return
        if data == "!drop":
            with contextlib.suppress(OSError):  # no close frame: the TCP stream ends
                ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            return
        if data == "!flood":
            for i in range(30):
                await ws.send_str(f'{{"type":"response.output_text.delta","delta":"{i}"}}')
        elif data == "!huge":
            await ws.send_str("h" * 300_000)  # over relay.max_upstream_message_bytes
        elif data.startswith("!usage "):
            await ws.send_str(data[7:])
        else:
            await ws.send_str(data)


def absurd_usage(rng: random.Random) -> str:
    usage = {k: rng.choice(ABSURD) for k in ("input_tokens", "output_tokens", "total_tokens")}
    if rng.random() < 0.2:
        return json.dumps({"type": "response.done", "response": rng.choice(ABSURD)})
    return json.dumps({"type": "response.done", "response": {"usage": usage}})


def hostile_frame(rng: random.Random) -> str | bytes:
    r = rng.randrange(12)
    if r == 0:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(300)))
    if r == 1:
        return rng.randbytes(rng.randrange(400))
    if r == 2:
        d = rng.choice([100, 254, 255, 300, 1024, 1025, 3000])
        return rng.choice(["[" * d + "]" * d, '{"a":' * d + "1" + "}" * d, "[" * d])
    if r == 3:
        return absurd_usage(rng)
    if r == 4:
        return "!usage " + absurd_usage(rng)
    if r == 5:
        meta = {k: rng.choice(ABSURD) for k in ("promptTokenCount", "totalTokenCount")}
        text = json.dumps({"usageMetadata": meta})
        return text.encode() if rng.random() < 0.5 else text
    if r == 6:
        audio = base64.b64encode(rng.randbytes(rng.randrange(100, 3000))).decode()
        return json.dumps({"type": "input_audio_buffer.append", "audio": audio})
    if r == 7:
        secret = rng.choice([STORED_KEY, TOKEN, CLIENT_KEY])
        message = f"Incorrect API key provided: Bearer {secret}, or {secret}"
        return json.dumps({"type": "error", "error": {"message": message}})
    if r == 8:
        return rng.choice(["!flood", "!huge", "!drop", f"!close {rng.choice(CLOSE_CODES[:9])}"])
    if r == 9 and rng.random() < 0.3:
        return "x" * (MAX_MESSAGE + 1)  # over max_message_bytes: 4002
    return json.dumps({"type": "x", "n": rng.randrange(10**6), "s": "y" * rng.randrange(2000)})


def odd_subprotocols(rng: random.Random) -> list[str]:
    pool = [
        "realtime",
        f"voxgate-authorization.{TOKEN}",
        f"openai-insecure-api-key.{CLIENT_KEY}",
        "openai-beta.realtime-v1",
        "x" * 300,
        "token",
        "",
        "é",
    ]
    return rng.sample(pool, rng.randrange(4))


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def fuzz_session(
    http: aiohttp.ClientSession, base: str, rng: random.Random, stats: Counter[str]
) -> None:
    provider = rng.choice(["openai", "openai", "google", "raw", "raw/a/b", "reject", "dead"])
    query = rng.choice(["", "?model=m", "?model=" + "é" * 10, "?key=leak&model=x", "?a=%zz"])
    headers = dict(FUZZ_GW)
    if rng.random() < 0.3:
        headers["Authorization"] = f"Bearer {CLIENT_KEY}"
    if rng.random() < 0.2:
        headers[f"X-Fuzz-{rng.randrange(100)}"] = "".join(rng.choice("ab;,= ") for _ in range(50))
    try:
        ws = await http.ws_connect(
            f"{base}/v1/fuzz/g/{provider}{query}",
            headers=headers,
            protocols=odd_subprotocols(rng),
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=2),
        )
    except aiohttp.WSServerHandshakeError as exc:
        stats[f"handshake {exc.status}"] += 1
        if provider == "dead" and exc.status == 502:
            stats["dead sessions"] += 1
        return
    stats["upgraded"] += 1
    reader = asyncio.create_task(_drain(ws))
    try:
        if rng.random() < 0.03:  # past messages_per_minute's one-minute burst: 4001
            for _ in range(320):
                await ws.send_str("r")
        for _ in range(rng.randrange(20)):
            frame = hostile_frame(rng)
            stats["frames"] += 1
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        end = rng.randrange(3)
        if end == 0:
            await ws.close(code=rng.choice(CLOSE_CODES), message=b"fuzz")
        elif end == 1:  # vanish
            with contextlib.suppress(OSError):
                ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        else:
            await ws.close()
    except (ConnectionError, aiohttp.ClientError, ValueError):
        stats["send failed"] += 1
    finally:
        try:
            await asyncio.wait_for(reader, 3)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            stats["reader stuck"] += 1
        if not ws.closed:
            await ws.close()
        stats[f"close {ws.close_code}"] += 1


def masked(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


RAW_VIOLATIONS = [
    b"\x81\x05hello",  # an unmasked client frame
    masked(0x1, b"\xff\xfe\xfd"),  # text that is not UTF-8
    masked(0x3, b"reserved"),  # a reserved opcode
    masked(0x9, b"p" * 10, fin=False),  # a fragmented ping
    masked(0x8, struct.pack("!H", 1006)),  # a close code that may not be sent
    masked(0x8, b"\x03"),  # a close frame of one byte
    masked(0x2, b"", length=2**62),  # an absurd length
    masked(0x0, b"continuation without a start"),
    masked(0x1, b"x" * 10, length=MAX_MESSAGE + 10),  # oversize, from its header alone
]


async def raw_session(port: int, rng: random.Random, stats: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        provider = rng.choice(["openai", "google", "raw"])
        writer.write(handshake(port, f"/v1/fuzz/g/{provider}", FUZZ_GW))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        stats[f"raw {head.split()[1].decode()}"] += 1
        writer.write(masked(0x1, b'{"type":"ok"}') + rng.choice(RAW_VIOLATIONS))
        await writer.drain()
        if rng.random() < 0.5:
            await asyncio.wait_for(reader.read(), 5)  # until the gateway closes
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        stats["raw cut"] += 1
    finally:
        writer.transport.abort()


async def vanishing_client(port: int, rng: random.Random, stats: Counter[str]) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    request = handshake(port, "/v1/fuzz/g/openai?model=v", FUZZ_GW)
    cut = rng.choice([len(request), len(request), rng.randrange(len(request))])
    writer.write(request[:cut])
    await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02]))
    writer.transport.abort()
    stats["vanished"] += 1


def bad_request(port: int, rng: random.Random) -> bytes:
    path, headers = rng.choice(
        [
            ("/v1/fuzz/g/openai/extra", FUZZ_GW),  # openai takes no path
            ("/v1/fuzz/g/raw/a/../b", FUZZ_GW),
            ("/v1/fuzz/g/raw/a//b", FUZZ_GW),
            ("/v1/fuzz/g/raw/%00", FUZZ_GW),
            ("/v1/fuzz/nope/openai", FUZZ_GW),
            ("/v1/fuzz/g/nope", FUZZ_GW),
            ("/v1/fuzz/g/openai", {"voxgate-authorization": "Bearer wrong"}),
            ("/v1/fuzz/g/openai", {}),
            ("/v1/fuzz/g/openai", {**FUZZ_GW, "Sec-WebSocket-Version": "99"}),
            ("/v1/fuzz/g/openai", {**FUZZ_GW, "X-Big": "b" * 9000}),
        ]
    )
    if rng.random() < 0.1:
        return b"GET /v1/fuzz/g/openai HTTP/1.1\r\nHost: x\r\n\r\n"  # no upgrade
    if rng.random() < 0.1:
        return handshake(port, "/v1/fuzz/g/openai", FUZZ_GW, key="not base64!")
    return handshake(port, path, headers)


async def bad_handshake(port: int, rng: random.Random, stats: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(bad_request(port, rng))
        status = await asyncio.wait_for(reader.readline(), 5)
        stats[f"bad {status.split()[1].decode() if status else 'closed'}"] += 1
    except (ConnectionError, TimeoutError):
        stats["bad cut"] += 1
    finally:
        writer.transport.abort()


async def test_relay_fuzz_one_record_per_session_beside_a_healthy_canary(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    canary: Canary,
    tracebacks: Callable[[], list[str]],
    caplog: pytest.LogCaptureFixture,
    quiet_malformed_requests: None,
) -> None:
    rng = random.Random(SEED)
    stats: Counter[str] = Counter()
    started = time.perf_counter()
    async with (
        RecordingUpstream(fuzz_upstream) as up,
        RecordingUpstream(reject_status=500) as reject,
    ):
        dead = f"ws://127.0.0.1:{closed_port()}"
        gw = await gateway(fuzz_toml(up.url, reject.url, dead, canary.provider_toml()), FUZZ_ENV)
        await canary.begin(canary_url(gw))
        base = gw.ws("")
        jobs: list[Callable[[], Awaitable[None]]] = []
        for _ in range(FUZZ_SESSIONS):
            jobs.append(
                functools.partial(fuzz_session, http, base, random.Random(rng.random()), stats)
            )
        for _ in range(FUZZ_RAW):
            jobs.append(functools.partial(raw_session, gw.port, random.Random(rng.random()), stats))
        for _ in range(FUZZ_VANISHING):
            jobs.append(
                functools.partial(vanishing_client, gw.port, random.Random(rng.random()), stats)
            )
        for _ in range(FUZZ_BAD):
            jobs.append(
                functools.partial(bad_handshake, gw.port, random.Random(rng.random()), stats)
            )
        rng.shuffle(jobs)

        async def worker() -> None:
            while jobs:
                await jobs.pop()()

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        result = await canary.finish()
        sessions = len(up.handshakes) + len(reject.handshakes) + stats["dead sessions"]
        store = gw.services.store
        await settled(gw)
        # a handler that saw its client vanish may still be writing: give it a moment
        q = UsageQuery("fuzz", "g", limit=100_000)
        recs = await store.query(q)
        deadline = time.monotonic() + 10
        while len(recs) < sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            recs = await store.query(q)
    elapsed = time.perf_counter() - started
    errors = Counter(r.error for r in recs)
    print(f"fuzz: {elapsed:.1f} s, {sessions} sessions, {len(recs)} records, {dict(stats)}")
    print(f"fuzz: record errors {dict(errors)}")
    assert len(recs) == sessions, (len(recs), sessions, dict(stats))
    assert len({r.session_id for r in recs}) == len(recs)
    for r in recs:
        for n in (r.input_tokens, r.output_tokens, r.total_tokens, r.client_bytes):
            assert 0 <= n <= 2**53 - 1
    for r in recs[:: max(1, len(recs) // 60)]:
        cap = await store.get_capture(r.session_id)
        blob = orjson.dumps([f.payload for f in cap.frames]).decode() if cap else ""
        for secret in (STORED_KEY, TOKEN, CLIENT_KEY):
            assert secret not in blob
    assert_healthy(result)
    assert tracebacks() == []
    # nor from aiohttp's server, for requests its parser refused (see MalformedRequests)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


@pytest.fixture
def quiet_malformed_requests() -> Iterator[None]:
    """The filter ``configure_logging`` puts on aiohttp's server logger, for one test."""
    server = logging.getLogger("aiohttp.server")
    quiet = MalformedRequests()
    server.addFilter(quiet)
    yield
    server.removeFilter(quiet)


def test_malformed_requests_are_one_line_without_the_bytes() -> None:
    exc = LineTooLong(b"X-Big: secret-" + b"b" * 100, 8190)
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("127.0.0.1",),
        (type(exc), exc, None),
    )
    logging.getLogger("aiohttp.server").setLevel(logging.INFO)
    try:
        assert MalformedRequests().filter(record)
    finally:
        logging.getLogger("aiohttp.server").setLevel(logging.NOTSET)
    assert (record.levelname, record.exc_info) == ("INFO", None)
    assert record.getMessage() == "malformed HTTP request from 127.0.0.1 (LineTooLong)"
    other = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "boom", (), None)
    assert MalformedRequests().filter(other)
    assert other.levelname == "ERROR"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
