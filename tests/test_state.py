"""The :class:`StateBackend` contract, for :class:`MemoryState` and :class:`RedisState`.

The Redis tests use the server at 127.0.0.1:6379, database 13, emptied (FLUSHDB) before
each test, and skip with the reason when it does not answer; the restart tests run a
``redis-server`` of their own on a free port. Two runs of this file at once against the
same database would disturb each other.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from conftest import wait_for
from voxgate.errors import ConfigError, StateUnavailable
from voxgate.state import MemoryState, StateBackend, open_state
from voxgate.state.redis import RedisState

REDIS_URL = "redis://127.0.0.1:6379/13"


async def _empty_redis_or_skip() -> None:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.flushdb()
    except Exception as exc:  # any failure means: no usable Redis here
        pytest.skip(f"redis not reachable at 127.0.0.1:6379: {exc}")
    finally:
        await client.aclose()


class Nodes:
    """Makes the backends of the nodes of one test; one shared instance for memory."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.made: list[StateBackend] = []
        self._memory = MemoryState()

    async def node(
        self, name: str = "a", *, lease_seconds: float = 30.0, start: bool = True
    ) -> StateBackend:
        if self.kind == "memory":
            return self._memory
        state = RedisState(REDIS_URL, node=name, lease_seconds=lease_seconds)
        self.made.append(state)
        if start:
            await state.start()
        return state

    async def close(self) -> None:
        for state in self.made:
            await state.close()


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    if request.param == "redis":
        await _empty_redis_or_skip()
    made = Nodes(request.param)
    yield made
    await made.close()


@pytest.fixture
async def redis_nodes() -> AsyncIterator[Nodes]:
    await _empty_redis_or_skip()
    made = Nodes("redis")
    yield made
    await made.close()


@pytest.fixture
async def raw() -> AsyncIterator[Redis]:
    """A plain client on the test database (for FLUSHDB and looking at keys)."""
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    yield client
    await client.aclose()


async def until(count: Callable[[], Awaitable[int]], within: float) -> None:
    """Wait until ``count()`` is not 0: what a renewal task writes, Redis does not
    announce, so this asks it again every 20 ms."""
    async with asyncio.timeout(within):
        while await count() == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def renewed(*states: StateBackend) -> None:
    """What a renewal tick does, now (nothing to do in memory)."""
    for state in states:
        if isinstance(state, RedisState):
            await state.renew()


# --- the contract, on both backends ----------------------------------------------------


async def test_limit_holds_and_release_frees_a_slot(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    assert await a.acquire_slot("conn:x", "h1", 2)
    assert await b.acquire_slot("conn:x", "h2", 2)
    assert not await a.acquire_slot("conn:x", "h3", 2)
    assert not await b.acquire_slot("conn:x", "h4", 2)
    assert await a.slots_in_use("conn:x") == 2
    assert await a.acquire_slot("conn:y", "h3", 2)  # another key has its own slots
    await b.release_slot("conn:x", "h2")
    assert await a.slots_in_use("conn:x") == 1
    assert await b.acquire_slot("conn:x", "h4", 2)
    assert not await a.acquire_slot("conn:z", "h1", 0)
    assert await b.slots_in_use("conn:z") == 0


async def test_same_holder_takes_its_slot_again(nodes: Nodes) -> None:
    a = await nodes.node()
    assert await a.acquire_slot("k", "h1", 1)
    assert await a.acquire_slot("k", "h1", 1)  # full, but it is h1's
    assert await a.slots_in_use("k") == 1
    assert not await a.acquire_slot("k", "h2", 1)


async def test_releasing_what_is_not_held_does_nothing(nodes: Nodes) -> None:
    a = await nodes.node()
    await a.release_slot("nothing", "nobody")
    assert await a.acquire_slot("k", "h1", 1)
    await a.release_slot("k", "h2")
    await a.release_slot("k", "h1")
    await a.release_slot("k", "h1")
    assert await a.slots_in_use("k") == 0


async def test_secrets_expire(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    now = time.time()
    await a.put_secret("ek_1", b'{"s": 1}', now + 60)
    assert await b.get_secret("ek_1", now=now) == b'{"s": 1}'
    assert await b.get_secret("ek_1", now=now + 59.9) == b'{"s": 1}'
    assert await b.get_secret("ek_1", now=now + 60) is None
    assert await b.get_secret("ek_unknown", now=now) is None
    await a.put_secret("ek_2", b"gone", now - 1)  # already over
    assert await b.get_secret("ek_2", now=now) is None


async def test_sessions_are_listed_on_every_node(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    figures = {"s1": 0, "s2": 0, "s3": 0}

    def describe(sid: str) -> bytes:
        return json.dumps({"id": sid, "n": figures[sid]}).encode()

    await a.put_session("acct/gw", "s1", lambda: describe("s1"))
    await b.put_session("acct/gw", "s2", lambda: describe("s2"))
    await b.put_session("acct/other", "s3", lambda: describe("s3"))
    for state in (a, b):  # listed at once, on both
        listed = sorted(json.loads(e)["id"] for e in await state.list_sessions("acct/gw"))
        assert listed == ["s1", "s2"]
    figures["s1"] = 7
    await renewed(a, b)
    entries = {json.loads(e)["id"]: json.loads(e) for e in await b.list_sessions("acct/gw")}
    assert entries["s1"]["n"] == 7
    await a.remove_session("acct/gw", "s1")
    await a.remove_session("acct/gw", "unknown")
    assert [json.loads(e)["id"] for e in await b.list_sessions("acct/gw")] == ["s2"]
    assert len(await a.list_sessions("acct/other")) == 1
    assert await a.list_sessions("acct/none") == []


async def test_locations(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    assert await b.get_location("sfu:1") is None
    await a.put_location("sfu:1", "node-a")
    assert await b.get_location("sfu:1") == "node-a"
    await a.put_location("sfu:1", "node-a2")
    await renewed(a)
    assert await b.get_location("sfu:1") == "node-a2"
    await a.remove_location("sfu:1")
    assert await b.get_location("sfu:1") is None
    await a.remove_location("sfu:unknown")


# --- Redis: atomicity -------------------------------------------------------------------


async def test_200_acquirers_on_4_nodes_never_exceed_the_limit(redis_nodes: Nodes) -> None:
    states = [await redis_nodes.node(f"n{i}") for i in range(4)]
    results = await asyncio.gather(
        *(states[i % 4].acquire_slot("conn:busy", f"h{i}", 17) for i in range(200))
    )
    assert sum(results) == 17
    assert await states[0].slots_in_use("conn:busy") == 17
    # let go of some while others try: still never over
    held = [i for i, ok in enumerate(results) if ok]
    await asyncio.gather(
        *(states[i % 4].release_slot("conn:busy", f"h{i}") for i in held[:5]),
        *(states[i % 4].acquire_slot("conn:busy", f"h{i}", 17) for i in range(200, 300)),
    )
    assert await states[1].slots_in_use("conn:busy") == 17


_PROCESS = """
import asyncio, sys
from voxgate.state.redis import RedisState

async def main(n: int) -> None:
    state = RedisState(sys.argv[1], node=f"p{n}")
    await state.ping()
    print("ready", flush=True)
    sys.stdin.readline()  # all at once
    got = await asyncio.gather(*(state.acquire_slot("conn:procs", f"p{n}-{i}", 23)
                                 for i in range(50)))
    print(sum(got), flush=True)
    sys.stdin.readline()  # hold them until every process has counted
    await state.close()

asyncio.run(main(int(sys.argv[2])))
"""


async def test_acquirers_in_4_processes_never_exceed_the_limit(redis_nodes: Nodes) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            *("-c", _PROCESS, REDIS_URL, str(n)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for n in range(4)
    ]
    try:
        async with asyncio.timeout(10):
            for p in procs:
                assert p.stdout is not None
                assert await p.stdout.readline() == b"ready\n"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(b"go\n")
            taken = [int(await p.stdout.readline()) for p in procs if p.stdout is not None]
            assert sum(taken) == 23, taken
            state = await redis_nodes.node()
            assert await state.slots_in_use("conn:procs") == 23
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(b"done\n")
            assert [await p.wait() for p in procs] == [0, 0, 0, 0]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


# --- Redis: leases ----------------------------------------------------------------------


async def test_what_a_node_stops_renewing_lapses(redis_nodes: Nodes) -> None:
    living = await redis_nodes.node("living", lease_seconds=0.6)
    dead = await redis_nodes.node("dead", lease_seconds=0.6, start=False)  # never renews
    for state in (living, dead):
        assert await state.acquire_slot("k", state.node, 2)
        await state.put_session("acct/gw", state.node, lambda: b"{}")
        await state.put_location(f"loc:{state.node}", state.node)
    assert await living.slots_in_use("k") == 2
    await asyncio.sleep(1.0)  # over a lease; the living node renewed twice meanwhile
    assert await living.slots_in_use("k") == 1
    assert await living.acquire_slot("k", "newcomer", 2)
    assert await living.list_sessions("acct/gw") == [b"{}"]
    assert await living.get_location("loc:dead") is None
    assert await living.get_location("loc:living") == "living"


async def test_a_dead_nodes_sessions_are_reaped_once(redis_nodes: Nodes) -> None:
    # the entries of a node that stopped renewing: handed out once, to one reaper
    reapers = [await redis_nodes.node(f"living{i}", lease_seconds=0.6) for i in range(3)]
    dead = await redis_nodes.node("dead", lease_seconds=0.6, start=False)  # never renews
    for i in range(5):
        await dead.put_session("acct/gw", f"s{i}", lambda i=i: b'{"id": "s%d"}' % i)
    await reapers[0].put_session("acct/gw", "alive", lambda: b'{"id": "alive"}')
    await reapers[1].remove_session("acct/gw", "nothing")
    assert await reapers[0].reap_sessions("acct/gw") == []  # not lapsed yet
    await asyncio.sleep(1.0)
    got = await asyncio.gather(*(r.reap_sessions("acct/gw") for r in reapers * 3))
    reaped = sorted(entry for found in got for entry in found)
    assert reaped == [b'{"id": "s%d"}' % i for i in range(5)]
    assert await reapers[2].list_sessions("acct/gw") == [b'{"id": "alive"}']
    await reapers[0].remove_session("acct/gw", "alive")  # ended properly: never reaped
    await asyncio.sleep(1.0)
    assert await reapers[1].reap_sessions("acct/gw") == []


async def test_close_gives_back_at_once(redis_nodes: Nodes, raw: Redis) -> None:
    a, b = await redis_nodes.node("a"), await redis_nodes.node("b")
    assert await a.acquire_slot("k", "h", 1)
    await a.put_session("acct/gw", "s", lambda: b"{}")
    await a.put_location("loc", "a")
    await a.close()
    assert await b.slots_in_use("k") == 0
    assert await b.list_sessions("acct/gw") == []
    assert await b.get_location("loc") is None
    assert await raw.dbsize() == 0
    await a.release_slot("k", "h")  # after close: nothing, no error
    with pytest.raises(StateUnavailable):
        await a.acquire_slot("k", "h", 1)


async def test_a_renewal_puts_back_what_redis_lost(redis_nodes: Nodes, raw: Redis) -> None:
    a = await redis_nodes.node("a", lease_seconds=0.6)
    b = await redis_nodes.node("b")
    assert await a.acquire_slot("k", "h", 1)
    await a.put_session("acct/gw", "s", lambda: b'{"id": "s"}')
    await a.put_location("loc", "a")
    await raw.flushdb()  # as a restart with nothing on disk
    assert await b.slots_in_use("k") == 0
    # the renewal task (every 0.2 s) writes it all again
    await until(lambda: b.slots_in_use("k"), within=1)
    assert not await b.acquire_slot("k", "other", 1)
    assert await b.list_sessions("acct/gw") == [b'{"id": "s"}']
    assert await b.get_location("loc") == "a"


async def test_what_is_let_go_during_a_renewal_stays_gone(redis_nodes: Nodes) -> None:
    a = await redis_nodes.node("a", start=False)
    assert await a.acquire_slot("k", "h", 1)
    await a.put_session("acct/gw", "s", lambda: b"{}")
    await a.put_location("loc", "a")
    assert isinstance(a, RedisState)
    renewal = asyncio.create_task(a.renew())
    await asyncio.sleep(0)  # the renewal has taken its snapshot and sent it
    await a.release_slot("k", "h")
    await a.remove_session("acct/gw", "s")
    await a.remove_location("loc")
    await renewal
    assert await a.slots_in_use("k") == 0
    assert await a.list_sessions("acct/gw") == []
    assert await a.get_location("loc") is None


async def test_a_failing_describe_keeps_its_last_entry(redis_nodes: Nodes) -> None:
    a = await redis_nodes.node("a", start=False)
    calls = 0

    def describe() -> bytes:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("bug")
        return b'{"n": 1}'

    await a.put_session("acct/gw", "s", describe)
    await a.put_session("acct/gw", "t", lambda: b'{"n": 2}')
    await renewed(a)
    assert sorted(await a.list_sessions("acct/gw")) == [b'{"n": 1}', b'{"n": 2}']
    assert a.available


# --- Redis: failures --------------------------------------------------------------------


async def test_a_dead_redis_fails_fast_and_says_why() -> None:
    began = time.monotonic()
    state = open_state("redis://:hunter2@127.0.0.1:1/0", node="a")
    await state.start()  # starts anyway, unavailable
    assert not state.available
    assert state.reason is not None
    assert "connect" in state.reason
    with pytest.raises(StateUnavailable) as caught:
        await state.acquire_slot("k", "h", 1)
    assert caught.value.status == 503
    assert caught.value.code == "state_unavailable"
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in caught.value.public_message
    assert "127.0.0.1" not in caught.value.public_message
    for call in (
        state.slots_in_use("k"),
        state.put_secret("ek", b"", time.time() + 60),
        state.get_secret("ek", now=time.time()),
        state.put_session("acct/gw", "s", lambda: b"{}"),
        state.list_sessions("acct/gw"),
        state.put_location("l", "a"),
        state.get_location("l"),
    ):
        with pytest.raises(StateUnavailable):
            await call
    await state.release_slot("k", "h")  # letting go never raises
    await state.remove_session("acct/gw", "s")
    await state.remove_location("l")
    assert not await state.ping()
    await state.close()
    assert time.monotonic() - began < 3


@pytest.mark.parametrize("url", ["redis://:hunter2@[::1/0", "redis://:hunter2@host:port/0"])
def test_a_bad_redis_url_is_a_config_error_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match=r"state\.url") as bad:
        open_state(url, node="a")
    assert "hunter2" not in str(bad.value)


async def test_a_redis_that_never_answers_times_out() -> None:
    with socket.socket() as mute:  # accepts connections, never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        state = RedisState(f"redis://127.0.0.1:{mute.getsockname()[1]}/0", node="a")
        began = time.monotonic()
        with pytest.raises(StateUnavailable) as caught:
            await state.acquire_slot("k", "h", 1)
        assert time.monotonic() - began < 3
        assert "in time" in caught.value.public_message
        await state.close()


class OwnRedis:
    """A ``redis-server`` of this test's own, started and stopped at will."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(self.workdir)),
            stdout=subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.2)
        try:
            async with asyncio.timeout(5):
                while True:
                    try:
                        await client.ping()
                        return
                    except Exception:  # not up yet
                        await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: cannot restart a redis")
    server = OwnRedis(tmp_path)
    yield server
    await server.stop()


async def test_comes_back_by_itself_when_redis_returns(own_redis: OwnRedis) -> None:
    state = RedisState(own_redis.url, node="a", lease_seconds=0.6)
    other = RedisState(own_redis.url, node="b")
    try:
        await state.start()  # Redis is not there yet
        assert not state.available
        with pytest.raises(StateUnavailable):
            await state.acquire_slot("k", "h", 1)
        await own_redis.start()
        assert await state.acquire_slot("k", "h", 1)  # no restart of the node needed
        assert state.available
        assert state.reason is None
        await state.put_session("acct/gw", "s", lambda: b"{}")
        await state.put_location("loc", "a")
        # a restart that loses everything (scripts too); the pooled connections are dead
        await own_redis.stop()
        await wait_for(lambda: not state.available, within=2)  # a renewal failed
        await own_redis.start()
        assert await other.slots_in_use("k") in (0, 1)  # first command on a new server
        await until(lambda: other.slots_in_use("k"), within=2)  # the renewal task lives on
        assert state.available
        assert not await other.acquire_slot("k", "h2", 1)
        assert await other.list_sessions("acct/gw") == [b"{}"]
        assert await other.get_location("loc") == "a"
        assert await state.acquire_slot("k2", "h", 1)  # its script is loaded again
    finally:
        await state.close()
        await other.close()
