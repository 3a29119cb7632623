"""``voxgate bench cluster``: what running several nodes costs, in one run.

1. **Handshake latency added by the Redis state.** Two nodes as processes, alike but for
   ``state.url``: one on ``memory://``, one on ``redis://``. Relay handshakes (upgrade to
   101 through a dialled echo upstream, then a close) alternate between them, so machine
   noise falls on both alike; the figure is the p50 of the Redis node minus the p50 of the
   memory node (target ≤ 1 ms). The state operations of one session (slot, listing,
   unlisting, release) are also timed alone against the same Redis.
2. **Usage records written per second to PostgreSQL**, batched: records added by many
   concurrent sessions through the store voxgate runs (group commit into batches of
   ``store.batch_size``), against SQLite in the same run (target ≥ 5,000/s).
3. **What a cross-node SFU pull adds** over a local pull: a track published on node A,
   pulled by a subscriber on A and one on B at once; the same packets' arrival times are
   compared (target ≤ 2 ms p50).

Needs the machine's Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432); a part whose
service is missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from voxgate.bench.relay import pct
from voxgate.core.records import UsageRecord
from voxgate.runner import run_main
from voxgate.settings import StoreSettings
from voxgate.store import UsageStore, open_store
from voxgate.testing.cluster import (
    Node,
    empty_redis,
    fresh_database,
    postgres_reason,
    redis_reason,
)
from voxgate.testing.upstream import RecordingUpstream

REDIS_DB = 14


def _node_config(state: str, upstream: str, tmp: Path, name: str) -> str:
    return (
        f'[state]\nurl = "{state}"\n'
        f'[store]\nurl = "sqlite:///{tmp}/{name}.db"\n'
        f'[providers.echo]\nurl = "{upstream}"\n'
        "[accounts.local.gateways.default]\n"
        "limits = { max_connections = 1000 }\n"
    )


async def _handshake(http: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    ws = await http.ws_connect(url)
    took = time.perf_counter() - started
    await ws.close()
    return took


async def handshakes(n: int, tmp: Path) -> None:
    why = redis_reason()
    if why is not None:
        print(f"handshake latency: skipped ({why})")
        return
    await empty_redis(REDIS_DB)
    async with RecordingUpstream() as up:
        mem = Node("bench-memory", _node_config("memory://", up.url, tmp, "m"), tmp / "m")
        red = Node(
            "bench-redis",
            _node_config(f"redis://127.0.0.1:6379/{REDIS_DB}", up.url, tmp, "r"),
            tmp / "r",
        )
        async with mem, red, aiohttp.ClientSession() as http:
            urls = {
                "memory": mem.ws("/v1/local/default/echo"),
                "redis": red.ws("/v1/local/default/echo"),
            }
            times: dict[str, list[float]] = {"memory": [], "redis": []}
            for url in urls.values():  # warm both: connections, code paths
                for _ in range(50):
                    await _handshake(http, url)
            for i in range(n):
                order = ("memory", "redis") if i % 2 == 0 else ("redis", "memory")
                for name in order:
                    times[name].append(await _handshake(http, urls[name]))
    m, r = times["memory"], times["redis"]
    print(f"\nRelay handshake (upgrade through a dialled echo upstream), {n} each, interleaved")
    print(f"  {'state':<10}{'p50 ms':>10}{'p95 ms':>10}")
    for name, xs in times.items():
        print(f"  {name:<10}{pct(xs, 0.5) * 1e3:>10.3f}{pct(xs, 0.95) * 1e3:>10.3f}")
    added = (statistics.median(r) - statistics.median(m)) * 1e3
    print(f"  added by redis:// over memory://, p50: {added:.3f} ms (target <= 1 ms)")
    await _state_ops(n)


async def _state_ops(n: int) -> None:
    """The state operations of one session alone: slot, listing, unlisting, release."""
    from voxgate.state.redis import RedisState

    state = RedisState(f"redis://127.0.0.1:6379/{REDIS_DB}", node="bench")
    await state.start()
    try:
        took = []
        for i in range(n):
            sid = f"s{i}"
            started = time.perf_counter()
            await state.acquire_slot("conn:bench", sid, 1000)
            await state.put_session("bench/scope", sid, lambda: b"{}")
            await state.remove_session("bench/scope", sid)
            await state.release_slot("conn:bench", sid)
            took.append(time.perf_counter() - started)
    finally:
        await state.close()
        await empty_redis(REDIS_DB)
    print(
        f"  one session's state operations on Redis (4 round trips): "
        f"p50 {pct(took, 0.5) * 1e3:.3f} ms, p95 {pct(took, 0.95) * 1e3:.3f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench cluster", description=__doc__)
    p.add_argument("--handshakes", type=int, default=500, help="handshakes per node")
    p.add_argument("--records", type=int, default=20000, help="usage records to write")
    p.add_argument("--packets", type=int, default=500, help="SFU packets compared")
    args = p.parse_args(argv)

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="voxgate-bench-cluster-") as tmp:
            await handshakes(args.handshakes, Path(tmp))
            await records(args.records, Path(tmp))
            await sfu(args.packets, Path(tmp))

    run_main(run())
    return 0


def _record(i: int) -> UsageRecord:
    now = time.time()
    return UsageRecord(
        session_id=f"bench_{i:08d}",
        account="local",
        gateway="default",
        provider="echo",
        model=None,
        token_name="bench",
        client_address="127.0.0.1",
        started_at=now - 30,
        ended_at=now,
        duration_seconds=30.0,
        client_frames=1500,
        client_bytes=2_400_000,
        upstream_frames=1500,
        upstream_bytes=2_400_000,
        client_close_code=1000,
        upstream_close_code=1000,
        error=None,
        node="bench",
    )


async def _write_through(store: UsageStore, n: int, sessions: int) -> float:
    """Records/s as ``sessions`` concurrent sessions end, each writing its record the way
    a session does (``add``, returning once committed), ``n`` records in all."""
    per = n // sessions

    async def session(k: int) -> None:
        for j in range(per):
            await store.add(_record(k * per + j))

    started = time.perf_counter()
    await asyncio.gather(*(session(k) for k in range(sessions)))
    return per * sessions / (time.perf_counter() - started)


async def records(n: int, tmp: Path) -> None:
    why = await postgres_reason()
    print(f"\nUsage records, {n} written by 200 concurrent sessions (group commit)")
    rates: dict[str, float] = {}
    sqlite = open_store(
        StoreSettings(url=f"sqlite:///{tmp}/records.db", spill_path=str(tmp / "s1.jsonl")),
        node="bench",
    )
    await sqlite.open()
    try:
        rates["sqlite"] = await _write_through(sqlite, n, 200)
    finally:
        await sqlite.close()
    if why is not None:
        print(f"  postgresql: skipped ({why})")
    else:
        async with fresh_database(f"voxgate_bench_{os.getpid()}") as url:
            pg = open_store(StoreSettings(url=url, spill_path=str(tmp / "s2.jsonl")), node="bench")
            await pg.open()
            try:
                rates["postgresql"] = await _write_through(pg, n, 200)
            finally:
                await pg.close()
    for name, rate in rates.items():
        print(f"  {name:<12}{rate:>10,.0f} records/s")
    if "postgresql" in rates:
        print(f"  postgresql: {rates['postgresql']:,.0f} records/s (target >= 5,000/s)")


async def sfu(n: int, tmp: Path) -> None:
    why = redis_reason()
    if why is not None:
        print(f"\nCross-node SFU pull: skipped ({why})")
        return
    from voxgate.bench.cluster_sfu import cross_node_latency

    await empty_redis(REDIS_DB)
    secret = os.urandom(16).hex()
    config = (
        f'[state]\nurl = "redis://127.0.0.1:6379/{REDIS_DB}"\n'
        '[cluster]\nsecret_env = "VOXGATE_CLUSTER_SECRET"\n'
    )
    env = {"VOXGATE_CLUSTER_SECRET": secret}
    a = Node("sfu-a", config + f'[store]\nurl = "sqlite:///{tmp}/a.db"\n', tmp / "a", env=env)
    b = Node("sfu-b", config + f'[store]\nurl = "sqlite:///{tmp}/b.db"\n', tmp / "b", env=env)
    try:
        async with a, b:
            added = await cross_node_latency(a.base, b.base, packets=n)
    finally:
        await empty_redis(REDIS_DB)
    print("\nCross-node SFU pull, one track published on A, pulled on A and on B at once")
    print(f"  {added.summary()}")
    print(f"  added p50 {added.p50_ms:.3f} ms (target <= 2 ms)")


if __name__ == "__main__":
    raise SystemExit(main())
