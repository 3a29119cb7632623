"""A seeded fuzz of the media server over real sockets, beside the canary (issue 12).

A few thousand requests against a real voxgate on 127.0.0.1: mutated real offers and
answers, malformed, wrong-typed, deeply nested and oversize JSON, unknown ids, calls
out of order, adapters dialling a WebSocket endpoint that sends hostile frames. While it
runs, the canary (a relay session in its own process) must keep its round trips fast.
Afterwards: no 5xx (bar the adapters' documented 503), every error a spec code, no
traceback logged, no session kept that the client was not given, and once collected,
no session and no file descriptor left over.

Reproduce a failure with the printed seed: ``SFU_FUZZ_SEED=<seed> pytest …``.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import psutil
import pytest
from aiohttp import web
from tests.conftest import GatewayFactory, assert_healthy, canary_url, wait_for
from tests.sdp_mutations import CHROMIUM_OFFER, mutate
from tests.test_sfu_hostile import BAD_BUNDLE, aiortc_offer

from voxgate.core.sfu.media import MediaSettings
from voxgate.protocols.adapter import MAX_INGEST_MESSAGE, encode_packet
from voxgate.testing.canary import Canary
from voxgate.testing.clock import FakeClock
from voxgate.testing.webrtc import PcmTrack, SfuPeer, tone

APP = "/v1/apps/default"
SEED = int(os.environ.get("SFU_FUZZ_SEED", "20261112"))
REQUESTS = 4000
CONCURRENCY = 8
#: Request-level error codes of spec/sfu.md, and the per-item ones.
SPEC_CODES = {
    "unauthorized",
    "not_found",
    "invalid_params",
    "decoding_error",
    "session_error",
    "invalid_session_description",
    "payload_too_large",
}
ITEM_CODES = {
    "not_found_track_error",
    "repeated_local_track_error",
    "close_track_error",
    "websocket_handshake_failed",
    "websocket_connection_timeout",
    "adapter_not_found",
}


class HostileEndpoint:
    """A WebSocket server the adapters dial; each connection gets a random script of
    hostile frames (random bytes, truncated protobuf, oversize, text, a few good ones)."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.connections = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def frames(self) -> list[bytes | str]:
        rnd = self.rnd
        good = encode_packet(1, 960, b"\0" * 3840)
        choices: list[Callable[[], bytes | str]] = [
            lambda: rnd.randbytes(rnd.randrange(1, 64)),
            lambda: good[: rnd.randrange(1, len(good))],
            lambda: b"\x2a" + b"\xff" * rnd.randrange(1, 12),
            lambda: encode_packet(1, 1, b"\0" * (MAX_INGEST_MESSAGE + rnd.randrange(1, 99))),
            lambda: "text frame",
            lambda: good,
            lambda: encode_packet(rnd.getrandbits(32), rnd.getrandbits(32), rnd.randbytes(7)),
        ]
        return [rnd.choice(choices)() for _ in range(rnd.randrange(1, 6))]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.connections += 1
        try:
            for frame in self.frames():
                if isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_bytes(frame)
            if self.rnd.random() < 0.5:
                await ws.close()
            else:  # linger, reading what a stream adapter sends, until closed
                async with asyncio.timeout(2):
                    async for _ in ws:
                        pass
        except (ConnectionError, TimeoutError):
            pass
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}/ws?token=t"


@pytest.fixture
async def hostile_endpoint() -> AsyncIterator[HostileEndpoint]:
    ep = HostileEndpoint(random.Random(SEED + 1))
    await ep.start()
    yield ep
    assert ep.runner is not None
    await ep.runner.cleanup()


def fake_answer(offer: str) -> str:
    """An answer-shaped copy of a server offer (no client PeerConnection needed)."""
    lines = [ln for ln in offer.split("\r\n") if ln and not ln.startswith("a=candidate")]
    swap = {
        "a=setup:actpass": "a=setup:active",
        "a=sendonly": "a=recvonly",
        "a=recvonly": "a=sendonly",
    }
    out = [swap.get(ln, ln) for ln in lines]
    out = [re.sub(r"^a=ice-ufrag:.*", "a=ice-ufrag:Fz9x", ln) for ln in out]
    out = [re.sub(r"^a=ice-pwd:.*", "a=ice-pwd:Q2w3e4r5t6y7u8i9o0p1a2s3", ln) for ln in out]
    return "\r\n".join(out) + "\r\n"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@dataclass
class Findings:
    """What every worker saw: statuses by request kind, and what was wrong."""

    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    #: Every session id the server handed out (201, or an ingest adapter's).
    given: set[str] = field(default_factory=set)
    adapters: set[str] = field(default_factory=set)


class Fuzzer:
    """One worker: its own seeded stream of requests, against the sessions it was given
    (so its choices do not depend on how the workers interleave)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        rnd: random.Random,
        offers: list[str],
        found: Findings,
    ) -> None:
        self.http = http
        self.base = base
        self.rnd = rnd
        self.offers = offers
        self.found = found
        self.given: list[str] = []  # sessions this worker was given, in order
        self.adapters: list[str] = []
        #: The real publisher's session: pulled from and streamed, never pushed to.
        self.pub_sid = ""
        self.hostile_url = ""

    # -- one request, and what its answer must look like --------------------------------

    async def call(
        self, what: str, method: str, path: str, *, json: Any = None, data: bytes | None = None
    ) -> tuple[int, Any]:
        kw: dict[str, Any] = {"data": data} if data is not None else {"json": json}
        async with self.http.request(method, self.base + path, **kw) as r:
            raw = await r.read()
        self.found.statuses[(what, r.status)] += 1
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.found.problems.append(
                f"{what}: {r.status} with a body that is not JSON: {raw[:80]!r}"
            )
            return r.status, None
        self.judge(what, r.status, body)
        return r.status, body

    def judge(self, what: str, status: int, body: Any) -> None:
        problems = self.found.problems
        if status == 503 and what == "adapters":  # spec: every item failed
            codes = {t.get("errorCode") for t in body.get("tracks", [])}
            if not codes <= ITEM_CODES:
                problems.append(f"{what}: 503 with item codes {codes}")
        elif status >= 500:
            problems.append(f"{what}: {status} {body}")
        elif status >= 400:
            if not isinstance(body, dict) or body.get("errorCode") not in SPEC_CODES:
                problems.append(f"{what}: {status} without a spec error code: {body}")
            elif not body.get("errorDescription"):
                problems.append(f"{what}: {status} without a description: {body}")
        elif isinstance(body, dict):
            tracks = body.get("tracks")
            for t in tracks if isinstance(tracks, list) else []:
                if "errorCode" in t and t["errorCode"] not in ITEM_CODES:
                    problems.append(f"{what}: item error {t}")
            if status == 201 and isinstance(body.get("sessionId"), str):
                self.given.append(body["sessionId"])
                self.found.given.add(body["sessionId"])

    # -- what a request can be ----------------------------------------------------------

    def offer(self) -> str:
        base = self.rnd.choice(self.offers)
        return base if self.rnd.random() < 0.1 else mutate(base, self.rnd)

    def sid(self) -> str:
        rnd = self.rnd
        if self.given and rnd.random() < 0.7:
            return rnd.choice(self.given)
        return rnd.choice(["nope", "0" * 24, rnd.randbytes(12).hex(), "%00", "a" * 300])

    def odd_body(self) -> tuple[Any, bytes | None]:
        rnd = self.rnd
        sdp = self.offer()
        return rnd.choice(
            [
                (None, rnd.randbytes(rnd.randrange(1, 200))),
                (None, b'{"sessionDescription": {"type": "offer", "sdp": "v=0'),
                (None, nested(rnd.choice([10, 600, 5000]))),
                (None, b"x" * 300_000),
                (None, orjson.dumps({"sessionDescription": {"sdp": "v=0\r\n" * 30_000}})),
                ({"sessionDescription": rnd.choice([5, [], "sdp", None, {"type": 1}])}, None),
                ({"sessionDescription": {"type": "answer", "sdp": sdp}}, None),
                ({"sessionDescription": {"type": "offer", "sdp": ["v=0"]}}, None),
                ({"tracks": rnd.choice([5, {}, [None], [{"location": 5}], "x"])}, None),
                ([1, 2, 3], None),
                ("offer", None),
            ]
        )

    async def one(self) -> None:
        rnd = self.rnd
        kind = rnd.choices(
            ["new", "push", "pull", "renegotiate", "close", "get", "odd", "adapters", "agents"],
            weights=[30, 15, 8, 10, 8, 5, 15, 4, 2],
        )[0]
        await getattr(self, "do_" + kind)()

    async def do_new(self) -> None:
        r = self.rnd.random()
        if r < 0.1:
            await self.call("new", "POST", "/sessions/new", data=b"")
        elif r < 0.15:
            await self.call("new", "POST", "/sessions/new", json=_offer(BAD_BUNDLE))
        else:
            await self.call("new", "POST", "/sessions/new", json=_offer(self.offer()))

    async def do_push(self) -> None:
        body = _offer(self.offer()) | {
            "tracks": [
                {"location": "local", "mid": self.rnd.choice(["0", "1", "9"]), "trackName": "m"}
            ],
            "autoDiscover": self.rnd.random() < 0.3,
        }
        await self.call("push", "POST", f"/sessions/{self.sid()}/tracks/new", json=body)

    async def do_pull(self) -> None:
        rnd = self.rnd
        track = {"location": "remote", "sessionId": self.pub_sid, "trackName": "mic"}
        if rnd.random() < 0.3:
            track = track | {"sessionId": self.sid(), "mid": rnd.choice(["#mic", "#x", "0"])}
        sid = self.sid()
        status, body = await self.call(
            "pull", "POST", f"/sessions/{sid}/tracks/new", json={"tracks": [track]}
        )
        if status == 200 and body and body.get("requiresImmediateRenegotiation"):
            answer = fake_answer(body["sessionDescription"]["sdp"])
            if rnd.random() < 0.7:
                answer = mutate(answer, rnd)
            await self.call(
                "renegotiate",
                "PUT",
                f"/sessions/{sid}/renegotiate",
                json={"sessionDescription": {"type": "answer", "sdp": answer}},
            )

    async def do_renegotiate(self) -> None:  # mostly out of order: no server offer waits
        answer = fake_answer(self.offer())
        await self.call(
            "renegotiate",
            "PUT",
            f"/sessions/{self.sid()}/renegotiate",
            json={"sessionDescription": {"type": "answer", "sdp": answer}},
        )

    async def do_close(self) -> None:
        rnd = self.rnd
        body: dict[str, Any] = {"tracks": [{"mid": rnd.choice(["0", "1", "#mic", "x"])}]}
        if rnd.random() < 0.3:
            body |= _offer(self.offer())
        sid = self.sid()
        for _ in range(rnd.choice([1, 2])):  # closing twice is fine
            await self.call("close", "PUT", f"/sessions/{sid}/tracks/close", json=body)

    async def do_get(self) -> None:
        await self.call("get", "GET", f"/sessions/{self.sid()}")

    async def do_odd(self) -> None:
        json, data = self.odd_body()
        path = self.rnd.choice(
            ["/sessions/new", f"/sessions/{self.sid()}/tracks/new", "/adapters/websocket/new"]
        )
        method = "POST"
        if self.rnd.random() < 0.3:
            method, path = "PUT", f"/sessions/{self.sid()}/renegotiate"
        await self.call("odd", method, path, json=json, data=data)

    async def do_adapters(self) -> None:
        rnd = self.rnd
        if self.adapters and rnd.random() < 0.3:
            aid = rnd.choice(self.adapters)
            body = {"tracks": [{"adapterId": rnd.choice([aid, "nope"])}]}
            await self.call("adapters-close", "POST", "/adapters/websocket/close", json=body)
            return
        endpoint = rnd.choices(
            [self.hostile_url, "ws://127.0.0.1:9/ws", "ws://[::1", "http://x"], [7, 1, 1, 1]
        )[0]
        item: dict[str, Any] = {"trackName": rnd.choice(["a", "b", "mic"]), "endpoint": endpoint}
        if rnd.random() < 0.5:
            item |= {"location": "local", "inputCodec": rnd.choice(["pcm", "pcm", "opus"])}
        else:
            item |= {"location": "remote", "sessionId": rnd.choice([self.pub_sid, self.sid()])}
            item["trackName"] = "mic"
        status, body = await self.call(
            "adapters", "POST", "/adapters/websocket/new", json={"tracks": [item]}
        )
        for t in body.get("tracks", []) if status == 200 and body else []:
            if "adapterId" in t:
                self.adapters.append(t["adapterId"])
                self.found.adapters.add(t["adapterId"])
                if item["location"] == "local":
                    self.given.append(t["sessionId"])
                    self.found.given.add(t["sessionId"])

    async def do_agents(self) -> None:  # never a valid agent: no engine is started
        rnd = self.rnd
        body = rnd.choice(
            [
                {"listen": [{"sessionId": "nope", "trackName": "mic"}]},
                {"listen": []},
                {"listen": [5]},
                {"listen": [{"sessionId": "nope", "trackName": "x"}], "session": {"x": [1]}},
            ]
        )
        await self.call("agents", "POST", "/agents/new", json=body)


def _offer(sdp: str) -> dict[str, Any]:
    return {"sessionDescription": {"type": "offer", "sdp": sdp}}


async def test_seeded_fuzz_of_the_media_server_beside_the_canary(
    gateway: GatewayFactory,
    canary: Canary,
    hostile_endpoint: HostileEndpoint,
    tracebacks: Callable[[], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    print(f"SFU fuzz seed {SEED}")
    # The test harness (pytest, its plugins, the modules it imported) shares this
    # process with the server; keep it out of the garbage collector's full passes, as
    # a server process that froze its startup heap would (see the report of issue 12).
    gc.collect()
    gc.freeze()
    try:
        await fuzz_beside_the_canary(gateway, canary, hostile_endpoint)
    finally:
        gc.unfreeze()
    assert tracebacks() == []
    never_retrieved = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert never_retrieved == [], never_retrieved[:3]


async def fuzz_beside_the_canary(
    gateway: GatewayFactory, canary: Canary, hostile_endpoint: HostileEndpoint
) -> None:
    gw = await gateway(canary.provider_toml())
    media = gw.services.media
    clock = FakeClock(monotonic=time.monotonic())
    media.clock = clock  # sessions age on the fake clock; collected at the end
    offers = [
        await aiortc_offer(1),
        await aiortc_offer(2),
        await aiortc_offer(1, datachannel=True),
        re.sub(r"[0-9a-f-]{36}\.local", "127.0.0.1", CHROMIUM_OFFER),  # no mDNS lookups
    ]
    mic = PcmTrack(tone(440, 60))  # made before the canary starts: numpy takes a while
    me = psutil.Process()
    found = Findings()
    await canary.begin(canary_url(gw))
    async with aiohttp.ClientSession() as http:
        pub = SfuPeer(http, gw.base + APP)  # a real call, going on beside the fuzz
        await pub.open()
        await pub.publish("mic", mic)
        await wait_for(lambda: pub.pc.connectionState == "connected", 10)
        fds_before = me.num_fds()
        started = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as fuzz_http:

            async def worker(n: int) -> None:
                rnd = random.Random(SEED * 100 + n)
                fuzz = Fuzzer(fuzz_http, gw.base + APP, rnd, offers, found)
                fuzz.pub_sid, fuzz.hostile_url = pub.session_id, hostile_endpoint.url
                for _ in range(REQUESTS // CONCURRENCY):
                    await fuzz.one()

            async with asyncio.TaskGroup() as tg:
                for n in range(CONCURRENCY):
                    tg.create_task(worker(n))
        took = time.perf_counter() - started
        result = await canary.finish()
        print(f"{REQUESTS} requests in {took:.1f} s; {sorted(found.statuses.items())}")
        assert_healthy(result)
        assert found.problems == [], found.problems[:10]

        # nothing half-built was kept: every session in the table was handed out
        assert set(media.sessions) <= found.given | {pub.session_id}
        closer = Fuzzer(http, gw.base + APP, random.Random(SEED), offers, found)
        for aid in sorted(found.adapters):
            body = {"tracks": [{"adapterId": aid}]}
            await closer.call("adapters-close", "POST", "/adapters/websocket/close", json=body)
        # collection: 30 s later on the media server's clock, only the real call is left
        clock.advance(MediaSettings().stale_seconds + 1)
        await media.collect()
        await wait_for(lambda: set(media.sessions) == {pub.session_id}, 10)
        assert not media.adapters
        assert media.collector_alive
        # and every socket the fuzz made the server open is closed again
        await wait_for(lambda: me.num_fds() <= fds_before + 2, 10)
        assert found.problems == [], found.problems[:10]
        await pub.close()
