"""The PostgreSQL usage store, and the batching store in front of every store.

PostgreSQL tests use a real server on 127.0.0.1:5432 (user ``postgres``, trust auth):
each run creates its own database ``voxgate_test_PID`` and drops it after, and each
test works in a schema of its own in it. Without a server they are skipped with the
reason; the batching tests run over SQLite either way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import ConfigError, StoreError
from voxgate.protocols.relay.capture import CapturedFrame
from voxgate.settings import StoreSettings
from voxgate.store import BatchingStore, BulkUsageStore, Entry, UsageQuery, open_store
from voxgate.store.base import spill_path_for, write_record
from voxgate.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore
from voxgate.store.spill import decode_entry, encode_entry
from voxgate.store.sqlite import SQLiteStore

PG = "postgresql://postgres@127.0.0.1:5432"
_schemas = itertools.count()


def rec(n: int, **changes: object) -> UsageRecord:
    base = UsageRecord(
        session_id=f"sess_{n:05d}",
        account="acme",
        gateway="main",
        provider="openai",
        model="gpt-realtime",
        token_name="ops",
        client_address="127.0.0.1",
        started_at=1_700_000_000.0 + n,
        ended_at=1_700_000_010.0 + n,
        duration_seconds=10.0,
        client_frames=n,
        client_bytes=100 * n,
        upstream_frames=2 * n,
        upstream_bytes=200 * n,
        client_close_code=1000,
        upstream_close_code=None,
        error=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def cap(sid: str, frames: int = 3) -> SessionCapture:
    return SessionCapture(
        sid,
        tuple(CapturedFrame(i, "client", i / 10, "text", 5, f'{{"n":{i}}}') for i in range(frames)),
        dropped=1,
    )


# -- PostgreSQL fixtures -----------------------------------------------------------


@pytest.fixture(scope="session")
def pg_db() -> Iterator[str]:
    """A database of this run's own; its URL."""
    try:
        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"postgresql not reachable at 127.0.0.1:5432: {exc}")
    name = f"voxgate_test_{os.getpid()}"
    with admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    yield f"{PG}/{name}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=10) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_db: str) -> Iterator[str]:
    """The URL of an empty schema of this test's own (``search_path`` in the URL)."""
    schema = f"t{next(_schemas)}"
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{pg_db}?options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_db, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def sql(url: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, args or None)
        return cur.fetchall() if cur.description else []


def columns(url: str) -> set[str]:
    rows = sql(
        url,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'usage_records'",
    )
    return {str(r[0]) for r in rows}


@pytest.fixture(params=["sqlite", "postgres"])
async def bulk(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BulkUsageStore]:
    store: BulkUsageStore
    if request.param == "sqlite":
        store = SQLiteStore(str(tmp_path / "usage.db"))
    else:
        store = PostgresStore(request.getfixturevalue("pg_url"))
    await store.open()
    yield store
    await store.close()


# -- the same reads and writes on both stores ----------------------------------------


async def test_reads_and_writes_are_the_same_on_sqlite_and_postgres(bulk: BulkUsageStore) -> None:
    await bulk.add(rec(1))
    await bulk.add_many([(rec(n), cap(f"sess_{n:05d}") if n == 3 else None) for n in (2, 3, 4)])
    q = UsageQuery("acme", "main")
    assert [r.session_id for r in await bulk.query(q)] == [f"sess_{n:05d}" for n in (4, 3, 2, 1)]
    assert await bulk.query(replace(q, limit=2)) == [rec(4), rec(3)]
    assert await bulk.query(replace(q, since=rec(3).ended_at)) == [rec(4), rec(3)]
    assert await bulk.query(UsageQuery("acme", "other")) == []
    assert await bulk.get("acme", "main", "sess_00002") == rec(2)
    assert await bulk.get("acme", "other", "sess_00002") is None
    assert await bulk.get_capture("sess_00003") == cap("sess_00003")
    assert await bulk.get_capture("sess_00002") is None
    # the same session again replaces it (a replayed spill file leaves one row)
    again = rec(2, error="upstream_timeout")
    await bulk.add_many([(again, cap("sess_00002", 2)), (rec(5), None), (rec(5), None)])
    assert await bulk.get("acme", "main", "sess_00002") == again
    assert await bulk.get_capture("sess_00002") == cap("sess_00002", 2)
    assert len(await bulk.query(q)) == 5
    # counters saturate, text with NUL or lone surrogates is kept, quotes are data
    odd = rec(6, client_bytes=2**70, error="a\x00b\ud800'; DROP TABLE x; --", model="é✓")
    await bulk.add_many([(odd, None)])
    got = await bulk.get("acme", "main", "sess_00006")
    assert got is not None
    assert got.client_bytes == 2**53 - 1
    assert got.model == "é✓"
    assert got.error is not None
    assert got.error.startswith("a")
    assert "DROP TABLE" in got.error
    assert await bulk.ping()


async def test_an_empty_batch_and_a_closed_store(bulk: BulkUsageStore) -> None:
    await bulk.add_many([])
    await bulk.close()
    assert not await bulk.ping()
    with pytest.raises(StoreError):
        await bulk.add(rec(1))


# -- the PostgreSQL schema -----------------------------------------------------------


async def test_schema_is_created_once_and_reopened(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    assert store.schema_version == SCHEMA_VERSION
    await store.add(rec(1))
    await store.close()
    store = PostgresStore(pg_url)
    await store.open()  # idempotent: nothing to do
    try:
        assert await store.get("acme", "main", "sess_00001") == rec(1)
    finally:
        await store.close()
    versions = sql(pg_url, "SELECT version FROM voxgate_schema ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert {f for f in UsageRecord.__dataclass_fields__} | {"stored_at"} == columns(pg_url)


async def test_migration_from_version_1_adds_columns_and_bumps_the_version(pg_url: str) -> None:
    # a database at version 1 from before UsageRecord had `transport`
    for step in MIGRATIONS[0]:
        sql(pg_url, step)
    sql(pg_url, "ALTER TABLE usage_records DROP COLUMN transport")
    sql(pg_url, "CREATE TABLE voxgate_schema (version integer PRIMARY KEY, applied_at timestamptz)")
    sql(pg_url, "INSERT INTO voxgate_schema VALUES (1, now())")
    sql(
        pg_url,
        "INSERT INTO usage_records (session_id, account, gateway, provider, started_at, ended_at, "
        "duration_seconds, client_frames, client_bytes, upstream_frames, upstream_bytes) "
        "VALUES ('sess_old', 'acme', 'main', 'openai', 1, 2, 1, 0, 0, 0, 0)",
    )
    assert "transport" not in columns(pg_url)
    store = PostgresStore(pg_url)
    await store.open()
    try:
        assert store.schema_version == SCHEMA_VERSION == 2
        old = await store.get("acme", "main", "sess_old")
        assert old is not None
        assert (old.transport, old.kind, old.input_tokens) == ("websocket", "relay", 0)
        await store.add(rec(1))
        assert await store.get("acme", "main", "sess_00001") == rec(1)
    finally:
        await store.close()
    assert {"transport", "stored_at"} <= columns(pg_url)
    assert sql(pg_url, "SELECT max(version), count(*) FROM voxgate_schema") == [(2, 2)]


async def test_a_field_the_table_lacks_is_added_without_a_migration(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    sql(pg_url, "ALTER TABLE usage_records DROP COLUMN audio_seconds")
    sql(pg_url, "ALTER TABLE captured_frames DROP COLUMN payload")
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await store.add(rec(1, audio_seconds=1.5), cap("sess_00001"))
        assert await store.get("acme", "main", "sess_00001") == rec(1, audio_seconds=1.5)
        assert await store.get_capture("sess_00001") == cap("sess_00001")
    finally:
        await store.close()
    assert sql(pg_url, "SELECT count(*) FROM voxgate_schema") == [(SCHEMA_VERSION,)]


async def test_nodes_opening_together_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await asyncio.gather(*(s.add(rec(i)) for i, s in enumerate(stores)))
        assert len(await stores[0].query(UsageQuery("acme", "main"))) == 4
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert sql(pg_url, "SELECT count(*) FROM voxgate_schema") == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_is_used_as_it_is(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    sql(pg_url, "INSERT INTO voxgate_schema (version) VALUES (99)")
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await store.add(rec(1))
        assert store.schema_version == 99
    finally:
        await store.close()
    assert "newer than this node's" in caplog.text


async def test_unreachable_server_and_bad_urls_are_store_and_config_errors() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/nope", timeout=5)
    started = time.monotonic()
    with pytest.raises(StoreError, match="postgresql"):
        await store.open()
    assert time.monotonic() - started < 5
    assert not await store.ping()
    await store.close()
    for url in ("postgresql://u:hunter2@host/db?nosuch=1", "postgresql://u:hunter2@[::1/db"):
        with pytest.raises(ConfigError, match=r"store\.url") as bad:
            PostgresStore.from_url(url)
        assert "hunter2" not in str(bad.value)
    with pytest.raises(ConfigError, match=r"store\.url"):
        open_store(StoreSettings(url="mysql://x/y"), node="n")


async def test_a_node_starts_while_postgresql_is_down_and_its_records_wait(
    tmp_path: Path,
) -> None:
    # PostgreSQL down at start is an outage to wait out: the node starts, records queue
    spill = tmp_path / "spill.jsonl"
    settings = StoreSettings(url="postgresql://postgres@127.0.0.1:1/nope", spill_path=str(spill))
    store = open_store(settings, node="n")
    await store.open()
    started = time.monotonic()
    await store.add(rec(1))
    assert time.monotonic() - started < 3
    assert store.pending == 1
    assert not await store.ping()
    with pytest.raises(StoreError):
        await store.query(UsageQuery("acct", "gw"))
    await store.close()
    assert spill.exists()  # kept for the next start
    # a local store that cannot be opened is a configuration problem: it stops the start
    bad = open_store(
        StoreSettings(url=f"sqlite:///{tmp_path}/file/usage.db", spill_path=str(spill)), node="n"
    )
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError):
        await bad.open()


async def test_add_many_takes_over_5000_records_a_second(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    rates = []
    try:
        for run in range(5):
            batch: list[Entry] = [(rec(run * 500 + i), None) for i in range(500)]
            started = time.perf_counter()
            await store.add_many(batch)
            rates.append(500 / (time.perf_counter() - started))
        assert len(await store.query(UsageQuery("acme", "main", limit=5000))) == 2500
    finally:
        await store.close()
    print(f"add_many, batches of 500: median {statistics.median(rates):.0f} records/s")
    assert statistics.median(rates) >= 5000


# -- the batching store --------------------------------------------------------------


class FlakySQLite(SQLiteStore):
    """SQLite that is down while ``failing`` is set (writes fail, ``ping`` is False),
    refuses the record ``refuse`` names, raises RuntimeError ``explode`` times, and
    records the session ids of each ``add_many`` that succeeded."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.failing = False
        self.calls: list[list[str]] = []
        self.refuse = ""
        self.explode = 0

    async def add_many(self, entries: Sequence[Entry]) -> None:
        if self.explode:
            self.explode -= 1
            raise RuntimeError("a bug in the store")
        if self.failing:
            raise StoreError("sqlite: OperationalError: disk I/O error")
        if self.refuse and any(r.session_id == self.refuse for r, _ in entries):
            raise StoreError("sqlite: IntegrityError: refused")
        self.calls.append([r.session_id for r, _ in entries])
        await super().add_many(entries)

    async def ping(self) -> bool:
        return not self.failing and await super().ping()


def batching(inner: BulkUsageStore, spill: Path, **kw: object) -> BatchingStore:
    options: dict[str, object] = {"queue_max": 5, "add_wait": 1.0, "backoff": (0.01, 0.05)}
    return BatchingStore(inner, spill_path=spill, **(options | kw))  # type: ignore[arg-type]


async def all_ids(store: BulkUsageStore | BatchingStore) -> list[str]:
    return sorted(r.session_id for r in await store.query(UsageQuery("acme", "main", limit=1000)))


async def test_adds_are_group_committed_and_readable_at_once(tmp_path: Path) -> None:
    inner = FlakySQLite(str(tmp_path / "u.db"))
    store = batching(inner, tmp_path / "spill.jsonl", queue_max=1000, batch_size=50)
    await store.open()

    async def add_and_read(n: int) -> UsageRecord | None:
        await store.add(rec(n), cap(f"sess_{n:05d}"))
        return await store.get("acme", "main", f"sess_{n:05d}")

    got = await asyncio.gather(*(add_and_read(n) for n in range(120)))
    assert got == [rec(n) for n in range(120)]
    assert len(inner.calls) < 20  # batches, not 120 transactions
    assert max(len(c) for c in inner.calls) <= 50
    assert store.pending == 0
    await write_record(store, rec(500))
    assert await store.get_capture("sess_00007") == cap("sess_00007")
    await store.close()
    assert not (tmp_path / "spill.jsonl").exists()
    fresh = SQLiteStore(str(tmp_path / "u.db"))
    await fresh.open()
    assert len(await all_ids(fresh)) == 121
    await fresh.close()


async def test_a_failing_store_queues_spills_then_writes_everything_once(tmp_path: Path) -> None:
    inner = FlakySQLite(str(tmp_path / "u.db"))
    spill = tmp_path / "spill.jsonl"
    store = batching(inner, spill)
    await store.open()
    await store.add(rec(0))
    inner.failing = True
    slowest = 0.0
    for n in range(1, 13):
        started = time.monotonic()
        await store.add(rec(n), cap(f"sess_{n:05d}"))  # never raises
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 1.2
    assert store.pending == 12
    assert len(spill.read_bytes().splitlines()) == 7  # 5 in memory, the rest on disk
    assert await store.get("acme", "main", "sess_00000") == rec(0)  # reads go to the store
    inner.failing = False
    await asyncio.wait_for(store.wait_drained(), 10)
    assert store.pending == 0
    assert not spill.exists()
    assert await all_ids(store) == [f"sess_{n:05d}" for n in range(13)]
    assert await store.get_capture("sess_00012") == cap("sess_00012")
    written = [sid for call in inner.calls for sid in call]
    assert written == [f"sess_{n:05d}" for n in range(13)]  # oldest first, each once
    await store.close()


async def test_concurrent_spills_share_a_write_and_its_fsync(tmp_path: Path) -> None:
    inner = FlakySQLite(str(tmp_path / "u.db"))
    store = batching(inner, tmp_path / "spill.jsonl", queue_max=1)
    await store.open()
    inner.failing = True
    await store.add(rec(0))  # the memory queue is full now
    appends: list[int] = []
    append = store.spill.append

    def counted(lines: list[bytes]) -> None:
        appends.append(len(lines))
        append(lines)

    store.spill.append = counted  # type: ignore[method-assign]
    await asyncio.gather(*(store.add(rec(n)) for n in range(1, 41)))
    assert sum(appends) == 40
    assert len(appends) <= 3
    inner.failing = False
    await asyncio.wait_for(store.wait_drained(), 10)
    assert await all_ids(store) == [f"sess_{n:05d}" for n in range(41)]
    await store.close()


async def test_close_spills_what_is_left_and_the_next_start_replays_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = FlakySQLite(str(tmp_path / "u.db"))
    spill = tmp_path / "spill.jsonl"
    store = batching(inner, spill, close_timeout=0.2)
    await store.open()
    inner.failing = True
    for n in range(9):
        await store.add(rec(n), cap(f"sess_{n:05d}", 1))
    await store.close()
    await store.add(rec(9))  # after close: spilled too
    lines = spill.read_bytes().splitlines(keepends=True)
    assert len(lines) == 10
    # a crash mid-line and a line from elsewhere: reported, the rest replayed
    spill.write_bytes(b"".join(lines) + b"not json\n" + encode_entry(rec(10), None)[:-30])
    caplog.set_level(logging.ERROR, "voxgate.store")
    again = batching(SQLiteStore(str(tmp_path / "u.db")), spill)
    await again.open()
    assert again.pending == 12
    await asyncio.wait_for(again.wait_drained(), 10)
    assert await all_ids(again) == [f"sess_{n:05d}" for n in range(10)]
    assert await again.get_capture("sess_00003") == cap("sess_00003", 1)
    assert not spill.exists()
    assert caplog.text.count("spill line not readable") == 2
    await again.close()


async def test_a_record_nothing_can_take_is_logged_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = FlakySQLite(str(tmp_path / "u.db"))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the spill directory should be")
    store = batching(inner, blocked / "spill.jsonl", queue_max=1, close_timeout=0.1)
    await store.open()
    inner.failing = True
    for n in range(4):
        await store.add(rec(n, error=f"lost-{n}"))
    await store.close()
    lost = [r.getMessage() for r in caplog.records if "not saved" in r.getMessage()]
    assert len(lost) == 4
    assert all(r.levelno == logging.ERROR for r in caplog.records if "not saved" in r.message)
    assert sorted(m.split('"error":"')[1][:6] for m in lost) == [f"lost-{n}" for n in range(4)]


async def test_a_refused_record_is_logged_and_the_rest_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = FlakySQLite(str(tmp_path / "u.db"))
    store = batching(inner, tmp_path / "s.jsonl", queue_max=100)
    await store.open()
    inner.refuse = "sess_00003"
    await asyncio.gather(*(store.add(rec(n)) for n in range(6)))
    await asyncio.wait_for(store.wait_drained(), 10)
    assert await all_ids(store) == [f"sess_{n:05d}" for n in (0, 1, 2, 4, 5)]
    assert "usage record sess_00003 not saved (refused by the store" in caplog.text
    await store.close()


async def test_the_writer_survives_an_unexpected_error_and_add_waits_at_most_add_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = FlakySQLite(str(tmp_path / "u.db"))
    store = batching(inner, tmp_path / "s.jsonl", add_wait=0.2, close_timeout=0.2)
    await store.open()
    inner.explode = 2
    await store.add(rec(1))
    await asyncio.wait_for(store.wait_drained(), 10)
    assert await all_ids(store) == ["sess_00001"]
    assert "unexpected error" in caplog.text

    async def hang(entries: Sequence[Entry]) -> None:
        await asyncio.sleep(3600)

    inner.add_many = hang  # type: ignore[method-assign]
    started = time.monotonic()
    await store.add(rec(2))
    assert time.monotonic() - started < 0.5
    assert store.pending == 1
    await store.close()  # the writer still hangs: the record waits in the spill file
    assert [decode_entry(line)[0] for line in store.spill.path.read_bytes().splitlines()] == [
        rec(2)
    ]


async def test_open_store_wraps_the_store_the_url_names(tmp_path: Path) -> None:
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/u.db"), node="10.0.0.1:8780")
    assert isinstance(store, BatchingStore)
    assert isinstance(store.inner, SQLiteStore)
    assert store.spill.path == Path("voxgate-spill-10.0.0.1_8780.jsonl")
    assert spill_path_for("../a b/c") == "voxgate-spill-_a_b_c.jsonl"
    settings = StoreSettings(url="postgres://postgres@127.0.0.1/db", spill_path="x.jsonl")
    store = open_store(settings, node="n")
    assert isinstance(store, BatchingStore)
    assert isinstance(store.inner, PostgresStore)
    assert store.spill.path == Path("x.jsonl")


# -- PostgreSQL stopped mid-run ------------------------------------------------------


def _cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_postgresql_down_mid_run_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None:
        pytest.skip("stopping PostgreSQL needs root and pg_ctlcluster")
    spill = tmp_path / "spill.jsonl"
    store = batching(PostgresStore(pg_url, timeout=5), spill, backoff=(0.1, 0.5))
    await store.open()
    for n in range(3):
        await store.add(rec(n))
    # readers leave connections in the pool: after the restart they are dead
    await asyncio.gather(*(all_ids(store) for _ in range(4)))
    try:
        await asyncio.to_thread(_cluster, "stop")
        assert not await store.ping()
        slowest = 0.0
        for n in range(3, 23):
            started = time.monotonic()
            await store.add(rec(n), cap(f"sess_{n:05d}", 2))
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.5
        assert store.pending == 20
        assert len(spill.read_bytes().splitlines()) == 15
    finally:
        await asyncio.to_thread(_cluster, "start")
    await asyncio.wait_for(store.wait_drained(), 30)
    assert not spill.exists()
    reads = await asyncio.gather(*(all_ids(store) for _ in range(4)))
    assert reads == [[f"sess_{n:05d}" for n in range(23)]] * 4
    assert sql(pg_url, "SELECT count(*), count(DISTINCT session_id) FROM usage_records") == [
        (23, 23)
    ]
    assert await store.get_capture("sess_00022") == cap("sess_00022", 2)
    await store.close()
