"""Several voxgate processes on 127.0.0.1 sharing the machine's Redis and PostgreSQL.

Every test here starts real nodes (``voxgate serve``) with ``state.url = redis://…`` and
``store.url = postgresql://…``; clients reach them over real sockets. Without Redis or
PostgreSQL the tests skip and say why. The tests that stop Redis or PostgreSQL mid-run
need to be able to start them again (root, and the machine's start commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from voxgate.testing import RecordingUpstream
from voxgate.testing.cluster import (
    POSTGRES_START,
    POSTGRES_STOP,
    REDIS_START,
    Node,
    empty_redis,
    fresh_database,
    postgres_reason,
    redis_reason,
    shell,
)

pytestmark = pytest.mark.timeout(240)

TOKEN = "cluster-test-token"
AUTH = {"voxgate-authorization": TOKEN}
SECRET = "cluster-secret-for-tests"
ENV = {"VOXGATE_TOKEN": TOKEN, "VOXGATE_CLUSTER_SECRET": SECRET}
REDIS_DB = 12
#: Short, so a dead node's leases lapse quickly in the tests.
LEASE = 3.0


@dataclass
class Backends:
    redis_url: str
    store_url: str
    upstream: RecordingUpstream
    tmp: Path

    def config(self, *, max_connections: int = 100, store: str = "", extra: str = "") -> str:
        return (
            f'[state]\nurl = "{self.redis_url}"\nlease_seconds = {LEASE}\n'
            f'[store]\nurl = "{self.store_url}"\n{store}\n'
            '[cluster]\nsecret_env = "VOXGATE_CLUSTER_SECRET"\n'
            f'[providers.echo]\nurl = "{self.upstream.url}"\n'
            "[accounts.local.gateways.default]\n"
            'tokens = [{ name = "ci", env = "VOXGATE_TOKEN" }]\n'
            f"limits = {{ max_connections = {max_connections} }}\n" + extra
        )

    def node(self, name: str, **kw: Any) -> Node:
        server = kw.pop("server", "")
        return Node(name, self.config(**kw), self.tmp / name, env=ENV, server=server)


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Backends]:
    why = redis_reason() or await postgres_reason()
    if why is not None:
        pytest.skip(why)
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    await empty_redis(REDIS_DB)
    async with (
        fresh_database(f"voxgate_cluster_{os.getpid()}") as store_url,
        RecordingUpstream() as upstream,
    ):
        yield Backends(redis_url, store_url, upstream, tmp_path)
    await empty_redis(REDIS_DB)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


RELAY = "/v1/local/default/echo"


async def connect(http: aiohttp.ClientSession, node: Node) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(node.ws(RELAY), headers=AUTH)


async def handshake_status(http: aiohttp.ClientSession, node: Node) -> tuple[int, str]:
    """The HTTP status a relay handshake gets (101 on success, then closed) and the
    error code of a refusal."""
    try:
        ws = await connect(http, node)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, exc.message
    await ws.close()
    return 101, ""


async def echoes(ws: aiohttp.ClientWebSocketResponse, text: str = "ping") -> bool:
    await ws.send_str(text)
    msg = await asyncio.wait_for(ws.receive(), 5)
    return msg.type is aiohttp.WSMsgType.TEXT and msg.data == text


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, headers=AUTH) as r:
        return r.status, await r.json()


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, every: float = 0.1
) -> float:
    """Seconds until ``check()`` holds; fails after ``within``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def test_limits_secrets_sessions_and_logs_are_shared(
    backends: Backends, http: aiohttp.ClientSession
) -> None:
    nodes = [backends.node(n, max_connections=40) for n in ("node-a", "node-b", "node-c")]
    async with contextlib.AsyncExitStack() as stack:
        for n in nodes:
            await stack.enter_async_context(n)
        a, b, _ = nodes
        first = [await connect(http, n) for n in nodes]  # one on each node, then
        # 197 handshakes at once, spread over three nodes: the limit holds across them
        tries = [connect(http, nodes[i % 3]) for i in range(197)]
        got = await asyncio.gather(*tries, return_exceptions=True)
        opened = first + [ws for ws in got if isinstance(ws, aiohttp.ClientWebSocketResponse)]
        refused = [e for e in got if isinstance(e, aiohttp.WSServerHandshakeError)]
        odd = [e for e in got if not isinstance(e, aiohttp.ClientWebSocketResponse)]
        assert (len(opened), len(refused)) == (40, 160), odd[:3]
        assert {e.status for e in refused} == {429}
        # the sessions API on B lists every node's sessions, each with its node
        status, listed = await get_json(http, f"{b.base}/v1/local/default/sessions")
        assert status == 200
        assert listed["count"] == 40
        by_node = {n.name: 0 for n in nodes}
        for row in listed["sessions"]:
            by_node[row["node"]] += 1
        assert sum(by_node.values()) == 40, by_node
        assert all(by_node.values()), by_node
        for ws in opened:
            await ws.close()
        # a secret minted on A opens a realtime session on B
        async with http.post(
            f"{a.base}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"session": {"type": "realtime", "instructions": "be brief"}},
        ) as r:
            assert r.status == 200, await r.text()
            secret = (await r.json())["value"]
        rt = await http.ws_connect(
            b.ws("/v1/realtime?model=voxgate/echo"),
            headers={"Authorization": f"Bearer {secret}"},
        )
        created = await asyncio.wait_for(rt.receive_json(), 10)
        assert created["type"] == "session.created"
        assert created["session"]["instructions"] == "be brief"
        await rt.close()

        # the logs API on B shows the records A wrote, from the shared store
        async def all_records() -> bool:
            _, logs = await get_json(http, f"{b.base}/v1/local/default/logs?limit=100")
            return len(logs["records"]) >= 41

        await eventually(all_records, within=10)
        _, logs = await get_json(http, f"{b.base}/v1/local/default/logs?limit=100")
        nodes_seen = {rec["node"] for rec in logs["records"]}
        assert nodes_seen == {"node-a", "node-b", "node-c"}
        assert len({rec["session_id"] for rec in logs["records"]}) == len(logs["records"])


async def test_a_killed_node_frees_its_slots_and_its_sessions_get_their_records(
    backends: Backends, http: aiohttp.ClientSession
) -> None:
    a, b, c = (backends.node(n, max_connections=5) for n in ("node-a", "node-b", "node-c"))
    async with a, b, c:
        held = [await connect(http, a) for _ in range(5)]
        for ws in held:  # some traffic, for the records to count
            assert await echoes(ws, "x" * 100)
        assert (await handshake_status(http, b))[0] == 429
        await asyncio.sleep(LEASE / 3 + 0.2)  # a renewal carries the counts to the state
        await a.kill()  # kill -9: A gives nothing back and writes no record
        killed = time.monotonic()

        async def b_accepts() -> bool:
            return (await handshake_status(http, b))[0] == 101

        await eventually(b_accepts, within=LEASE + 3, every=0.2)
        assert time.monotonic() - killed <= LEASE + 2
        _, listed = await get_json(http, f"{b.base}/v1/local/default/sessions")
        assert all(row["node"] != "node-a" for row in listed["sessions"])

        # B and C both reap; each of A's sessions gets exactly one record, "node_lost"
        async def a_records() -> list[Any]:
            _, logs = await get_json(http, f"{b.base}/v1/local/default/logs?limit=100")
            return [r for r in logs["records"] if r["node"] == "node-a"]

        async def all_reaped() -> bool:
            return len(await a_records()) >= 5

        await eventually(all_reaped, within=LEASE + 5, every=0.3)
        await asyncio.sleep(LEASE)  # more reaping rounds: still one record each
        lost = await a_records()
        assert len(lost) == len({r["session_id"] for r in lost}) == 5
        for rec in lost:
            assert rec["error"] == "node_lost"
            assert rec["client_close_code"] is None
            assert rec["client_frames"] == 1
            assert rec["client_bytes"] == 100
        for ws in held:
            await ws.close()


def _can_restart(binary: str) -> str | None:
    if os.geteuid() != 0:
        return "stopping and restarting the machine's services needs root"
    if shutil.which(binary) is None:
        return f"{binary} not found: cannot restart the service after stopping it"
    return None


async def test_redis_stopped_and_restarted_mid_run(
    backends: Backends, http: aiohttp.ClientSession
) -> None:
    why = _can_restart("redis-server")
    if why:
        pytest.skip(why)
    async with backends.node("node-a", max_connections=2) as a:
        live = await connect(http, a)
        code, _ = await shell("redis-cli -p 6379 shutdown nosave")
        try:
            await eventually(lambda: _refused_with(http, a, 503), within=5)
            status, ready = await get_json(http, f"{a.base}/readyz")
            assert status == 503, ready
            assert ready["reason"].startswith("state_unavailable"), ready
            # the session that was running goes on
            assert await echoes(live)
        finally:
            code, out = await shell(REDIS_START)
            assert code == 0, out
        await eventually(lambda: _ready(http, a), within=10)
        assert await echoes(live)
        # the node put its lease back: one more fits under the limit of 2, not two
        await asyncio.sleep(LEASE / 3 + 0.5)
        second = await connect(http, a)
        assert (await handshake_status(http, a))[0] == 429
        await second.close()
        await live.close()


async def _refused_with(http: aiohttp.ClientSession, node: Node, status: int) -> bool:
    return (await handshake_status(http, node))[0] == status


async def _ready(http: aiohttp.ClientSession, node: Node) -> bool:
    async with http.get(f"{node.base}/readyz") as r:
        return r.status == 200


async def test_postgres_stopped_mid_run_loses_no_record(
    backends: Backends, http: aiohttp.ClientSession
) -> None:
    why = _can_restart("pg_ctlcluster")
    if why:
        pytest.skip(why)
    spill = backends.tmp / "spill.jsonl"
    store = f'queue_max = 3\nspill_path = "{spill}"'
    async with backends.node("node-a", store=store) as a:
        code, out = await shell(POSTGRES_STOP)
        assert code == 0, out
        try:
            for i in range(8):  # sessions go on; their records wait
                ws = await connect(http, a)
                assert await echoes(ws, f"m{i}")
                await ws.close()
            status, ready = await get_json(http, f"{a.base}/readyz")
            assert status == 200, ready
            assert ready["store"] is False, ready

            async def all_waiting() -> bool:
                _, ready = await get_json(http, f"{a.base}/readyz")
                return bool(ready["records_pending"] == 8)

            await eventually(all_waiting, within=5)
            assert spill.exists()
            assert spill.stat().st_size > 0
        finally:
            code, out = await shell(POSTGRES_START)
            assert code == 0, out

        async def written() -> bool:
            status, logs = await get_json(http, f"{a.base}/v1/local/default/logs?limit=100")
            return status == 200 and len(logs["records"]) == 8

        await eventually(written, within=30, every=0.5)
        _, logs = await get_json(http, f"{a.base}/v1/local/default/logs?limit=100")
        assert len({r["session_id"] for r in logs["records"]}) == 8


@pytest.fixture
async def lone(tmp_path: Path) -> AsyncIterator[Callable[[float], Node]]:
    """A node of its own (memory state, a SQLite file): draining needs no Redis."""
    async with RecordingUpstream() as upstream:

        def make(drain_seconds: float) -> Node:
            config = (
                f'[store]\nurl = "sqlite:///{tmp_path}/usage.db"\n'
                f'[providers.echo]\nurl = "{upstream.url}"\n'
                "[accounts.local.gateways.default]\n"
                'tokens = [{ name = "ci", env = "VOXGATE_TOKEN" }]\n'
            )
            return Node(
                "lone",
                config,
                tmp_path / "lone",
                env=ENV,
                server=f"drain_seconds = {drain_seconds}",
            )

        yield make


async def _records(tmp_path: Path) -> list[Any]:
    from voxgate.store import UsageQuery
    from voxgate.store.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "usage.db"))
    await store.open()
    try:
        return await store.query(UsageQuery("local", "default"))
    finally:
        await store.close()


async def test_sigterm_drains_then_closes_with_1012(
    lone: Callable[[float], Node], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with lone(2.0) as a:
        live = await connect(http, a)
        await a.signal()  # SIGTERM
        await eventually(lambda: _not_ready(http, a), within=2, every=0.05)
        _, ready = await get_json(http, f"{a.base}/readyz")
        assert ready["reason"] == "draining"
        status, _ = await handshake_status(http, a)
        assert status == 503
        assert await echoes(live)  # live sessions have their grace period
        started = time.monotonic()
        msg = await asyncio.wait_for(live.receive(), 10)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1012
        assert time.monotonic() - started > 1.0  # not before the grace period ran out
        assert await a.wait(30) == 0
    [rec] = await _records(tmp_path)
    assert rec.client_close_code == 1012
    assert rec.node == "lone"


async def test_a_second_sigterm_ends_the_drain_at_once(
    lone: Callable[[float], Node], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with lone(60.0) as a:
        live = await connect(http, a)
        await a.signal()
        await eventually(lambda: _not_ready(http, a), within=2, every=0.05)
        started = time.monotonic()
        await a.signal()
        msg = await asyncio.wait_for(live.receive(), 10)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1012
        assert time.monotonic() - started < 5
        assert await a.wait(30) == 0
    [rec] = await _records(tmp_path)
    assert rec.client_close_code == 1012


async def _not_ready(http: aiohttp.ClientSession, node: Node) -> bool:
    try:
        async with http.get(f"{node.base}/readyz") as r:
            return r.status == 503
    except aiohttp.ClientError:
        return False


async def test_a_client_on_b_hears_a_track_published_on_a(
    backends: Backends, http: aiohttp.ClientSession
) -> None:
    from tests.test_sfu import dominant_hz, heard

    from voxgate.testing.webrtc import PcmTrack, Recorder, SfuPeer, tone

    async with backends.node("node-a") as a, backends.node("node-b") as b:
        pub = SfuPeer(http, a.base + "/v1/apps/default")
        await pub.open()
        await pub.publish("mic", PcmTrack(tone(440, 30)))
        sub = SfuPeer(http, b.base + "/v1/apps/default")
        await sub.open()

        async def pulled() -> bool:  # the directory is written off the request's path
            body = await sub.pull((pub.session_id, "mic"))
            track = body["tracks"][0]
            return "errorCode" not in track and track["mid"] in sub.received

        await eventually(pulled, within=5, every=0.2)
        mid = next(iter(sub.received))
        rec = Recorder(sub.received[mid])
        assert abs(dominant_hz(await heard(rec)) - 440) < 10  # decoded on B: the tone
        await rec.stop()
        for peer in (pub, sub):
            await peer.close()
