"""PostgreSQL usage store: several nodes keep their usage records in one database.

The schema is voxgate's, versioned by voxgate
---------------------------------------------
``voxgate_schema`` holds one row per applied migration (``version``, ``applied_at``);
the schema's version is the highest. :meth:`PostgresStore.open` does, in ONE
transaction that first takes ``pg_advisory_xact_lock(SCHEMA_LOCK)`` (so nodes starting
together take turns, and the second finds the work done):

1. create ``voxgate_schema`` if it is missing;
2. apply each of :data:`MIGRATIONS` the database has not had yet, in order, recording
   each version;
3. add every field of :class:`UsageRecord` (and :class:`CapturedFrame`) its table lacks
   as a column, ``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` with the type and default the
   dataclass gives: a new record field needs no hand-written migration.

Any failure rolls all of it back. Migrations are additive only (tables, columns,
indexes), so during a rolling upgrade nodes on older code keep working against the
newer schema; a node that finds a version newer than its own says so and carries on.

Writes replace a record with the same ``session_id`` (as SQLite's ``INSERT OR
REPLACE``), so writing a record twice (a spill file replayed after a crash) leaves it
once. Every psycopg error becomes :class:`~voxgate.errors.StoreError` here.
"""

from __future__ import annotations

import asyncio
import logging
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import ConfigError, StoreError
from voxgate.protocols.relay.capture import CapturedFrame
from voxgate.store.base import BulkUsageStore, Entry, UsageQuery, query_sql, storable_text

T = TypeVar("T")
log = logging.getLogger("voxgate.store")

#: The ``pg_advisory_xact_lock`` key schema changes are made under ("voxgate" in ASCII).
SCHEMA_LOCK = 0x766F7867617465

#: Hand-written schema changes, in order: version ``i + 1`` is ``MIGRATIONS[i]``, a list
#: of SQL statements. Append only; never edit one that has shipped. Columns for new
#: record fields are added without a migration (see the module docstring).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the tables, with UsageRecord's fields as they were then
    (
        """CREATE TABLE IF NOT EXISTS usage_records (
            session_id text PRIMARY KEY,
            account text, gateway text, provider text, model text, token_name text,
            client_address text,
            started_at double precision, ended_at double precision,
            duration_seconds double precision,
            client_frames bigint, client_bytes bigint,
            upstream_frames bigint, upstream_bytes bigint,
            client_close_code bigint, upstream_close_code bigint, error text,
            input_tokens bigint DEFAULT 0, output_tokens bigint DEFAULT 0,
            total_tokens bigint DEFAULT 0, kind text DEFAULT 'relay',
            characters bigint DEFAULT 0, audio_seconds double precision DEFAULT 0.0,
            transport text DEFAULT 'websocket'
        )""",
        "CREATE INDEX IF NOT EXISTS usage_by_gateway ON usage_records (account, gateway, ended_at)",
        "CREATE TABLE IF NOT EXISTS captures (session_id text PRIMARY KEY, dropped bigint)",
        """CREATE TABLE IF NOT EXISTS captured_frames (
            session_id text NOT NULL, seq bigint NOT NULL, direction text, at double precision,
            kind text, size bigint, payload text,
            PRIMARY KEY (session_id, seq)
        )""",
    ),
    # 2: when a row was stored: a record replayed after an outage has stored_at well
    # after ended_at (records are read by ended_at; this column is for operators)
    (
        "ALTER TABLE usage_records "
        "ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL DEFAULT now()",
    ),
)
#: The schema version this code brings a database to.
SCHEMA_VERSION = len(MIGRATIONS)

_SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS voxgate_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

_PG_TYPES: dict[type, str] = {
    bool: "boolean",
    str: "text",
    int: "bigint",
    float: "double precision",
}


def _column_ddl(cls: type) -> dict[str, str]:
    """``name type [DEFAULT literal]`` for each field of the dataclass ``cls``.

    Columns are nullable (rows stored before a field existed have no value for it, and
    a field later removed must not block inserts); a field's default becomes the
    column's, which fills the rows already there.
    """
    hints = typing.get_type_hints(cls)
    out: dict[str, str] = {}
    for f in fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        base = [a for a in args if a is not type(None)]
        if len(base) != 1 or base[0] not in _PG_TYPES:
            raise TypeError(f"{cls.__name__}.{f.name}: no PostgreSQL type for {hint}")
        ddl = f"{f.name} {_PG_TYPES[base[0]]}"
        if f.default is not MISSING and f.default is not None:
            ddl += f" DEFAULT {_sql_literal(f.default)}"
        out[f.name] = ddl
    return out


def _sql_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"no SQL literal for {value!r}")


_COLUMNS = tuple(f.name for f in fields(UsageRecord))
_FRAME_COLUMNS = ("session_id", *(f.name for f in fields(CapturedFrame)))
_SYNCED: dict[str, type] = {"usage_records": UsageRecord, "captured_frames": CapturedFrame}


@dataclass(frozen=True)
class _Table:
    """A table written through COPY into a session-private staging table, then
    ``INSERT … ON CONFLICT (key) DO UPDATE``."""

    name: str
    staging: str
    columns: tuple[str, ...]
    key: tuple[str, ...]

    def create_staging(self) -> str:
        cols = ", ".join(self.columns)
        return (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.staging} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {self.name} WITH NO DATA"
        )

    def copy(self) -> str:
        return f"COPY {self.staging} ({', '.join(self.columns)}) FROM STDIN"

    def upsert(self) -> str:
        cols = ", ".join(self.columns)
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c not in self.key)
        return (
            f"INSERT INTO {self.name} ({cols}) SELECT {cols} FROM {self.staging} "
            f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {sets}"
        )


_RECORDS = _Table("usage_records", "voxgate_records_in", _COLUMNS, ("session_id",))
_CAPTURES = _Table("captures", "voxgate_captures_in", ("session_id", "dropped"), ("session_id",))
_FRAMES = _Table("captured_frames", "voxgate_frames_in", _FRAME_COLUMNS, ("session_id", "seq"))


def _pg_value(value: object) -> object:
    """``value`` as PostgreSQL text takes it: NUL (which ``text`` cannot hold) becomes
    U+FFFD, as do lone surrogates (:func:`storable_text`)."""
    if isinstance(value, str):
        value = storable_text(value)
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
    return value


@dataclass
class _Pooled:
    conn: AsyncConnection[tuple[Any, ...]]
    #: It has served an operation before (the server may have closed it since).
    reused: bool = False
    #: Its session's staging tables exist.
    staged: bool = False


class _Pool:
    """At most ``size`` connections, kept open between operations.

    A connection goes back to the pool only after an operation that succeeded and left
    no transaction open; after any error it is closed, so a broken one is never reused.
    """

    def __init__(self, conninfo: str, size: int, connect_timeout: float) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Pooled] = []
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Pooled]:
        async with self._slots:
            if self._closed:
                raise StoreError("store is not open")
            if self._idle:
                pooled = self._idle.pop()
                pooled.reused = True
            else:
                conn = await AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=max(2, round(self._connect_timeout)),
                    application_name="voxgate",
                )
                pooled = _Pooled(conn)
            keep = False
            try:
                yield pooled
                keep = pooled.conn.info.transaction_status is TransactionStatus.IDLE
            finally:
                if keep and not self._closed:
                    self._idle.append(pooled)
                else:
                    await pooled.conn.close()

    async def drop_idle(self) -> None:
        """Close the connections kept idle (after one of them turned out dead)."""
        idle, self._idle = self._idle, []
        for pooled in idle:
            await pooled.conn.close()

    async def close(self) -> None:
        self._closed = True
        await self.drop_idle()


class PostgresStore(BulkUsageStore):
    """Usage records in PostgreSQL (``postgresql://user@host:port/db?…``, libpq's URL).

    ``pool_size`` connections at most; an operation (connection included) that takes
    longer than ``timeout`` seconds fails with :class:`StoreError`.
    """

    remote = True

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 10.0) -> None:
        self.url = url
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: _Pool | None = None
        #: The database's schema version once :meth:`open` has run.
        self.schema_version = 0

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://…`` or ``postgres://…``; ConfigError (without the password)
        when libpq cannot parse it."""
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("store.url: expected postgresql://…")
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            detail = str(exc).strip().replace(url, "the URL")  # never echo a password
            raise ConfigError(f"store.url: not a PostgreSQL URL libpq accepts: {detail}") from None
        return cls(url)

    async def _run(self, op: Callable[[_Pooled], Awaitable[T]]) -> T:
        """``op`` on a pooled connection, with psycopg's errors mapped to StoreError.

        An operation that fails on a connection kept from before (the server restarted
        since) is tried once more on a new one: every operation here is idempotent.
        """
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        retried = False
        while True:
            pooled: _Pooled | None = None
            try:
                async with asyncio.timeout(self._timeout), pool.connection() as pooled:
                    return await op(pooled)
            except psycopg.OperationalError as exc:
                if not retried and pooled is not None and pooled.reused:
                    retried = True
                    await pool.drop_idle()  # they are as old as the one that died
                    continue
                raise _store_error(exc) from exc
            except (psycopg.Error, UnicodeError) as exc:
                raise _store_error(exc) from exc
            except TimeoutError as exc:
                raise StoreError(f"postgresql: no answer within {self._timeout:g} s") from exc

    async def open(self) -> None:
        """Connect and bring the schema to :data:`SCHEMA_VERSION` (module docstring).

        StoreError when the server cannot be reached or the migration fails.
        """
        if self._pool is None:
            self._pool = _Pool(self.url, self._pool_size, self._timeout)
        self.schema_version = await self._run(lambda p: _migrate(p.conn))

    async def add_many(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` in one transaction (COPY into staging tables, then one
        upsert per table): all of them or, with StoreError, none."""
        records: dict[str, tuple[object, ...]] = {}
        heads: dict[str, tuple[object, ...]] = {}
        frames: dict[tuple[str, int], tuple[object, ...]] = {}
        for record, capture in entries:
            r = record.clamped()
            records[r.session_id] = tuple(_pg_value(getattr(r, c)) for c in _COLUMNS)
            if capture is not None:
                sid = _pg_value(capture.session_id)
                heads[capture.session_id] = (sid, capture.dropped)
                for f in capture.frames:
                    row = (sid, *(_pg_value(getattr(f, c)) for c in _FRAME_COLUMNS[1:]))
                    frames[(capture.session_id, f.seq)] = row
        batches = [
            (_RECORDS, records.values()),
            (_CAPTURES, heads.values()),
            (_FRAMES, frames.values()),
        ]

        async def write(pooled: _Pooled) -> None:
            conn = pooled.conn
            if not pooled.staged:
                for table, _ in batches:
                    await conn.execute(table.create_staging())
                pooled.staged = True
            async with conn.transaction(), conn.cursor() as cur:
                for table, rows in batches:
                    if rows:
                        await _copy_upsert(cur, table, rows)

        await self._run(write)

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        sql, args = query_sql(q, _COLUMNS, "%s")

        async def read(pooled: _Pooled) -> list[UsageRecord]:
            cur = await pooled.conn.execute(sql, args)
            return [UsageRecord(*row) for row in await cur.fetchall()]

        return await self._run(read)

    async def get(self, account: str, gateway: str, session_id: str) -> UsageRecord | None:
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM usage_records "
            "WHERE account = %s AND gateway = %s AND session_id = %s"
        )

        async def read(pooled: _Pooled) -> UsageRecord | None:
            cur = await pooled.conn.execute(sql, (account, gateway, session_id))
            row = await cur.fetchone()
            return UsageRecord(*row) if row else None

        return await self._run(read)

    async def get_capture(self, session_id: str) -> SessionCapture | None:
        frame_sql = (
            f"SELECT {', '.join(_FRAME_COLUMNS[1:])} FROM captured_frames "
            "WHERE session_id = %s ORDER BY seq"
        )

        async def read(pooled: _Pooled) -> SessionCapture | None:
            cur = await pooled.conn.execute(
                "SELECT dropped FROM captures WHERE session_id = %s", (session_id,)
            )
            head = await cur.fetchone()
            if head is None:
                return None
            cur = await pooled.conn.execute(frame_sql, (session_id,))
            rows = await cur.fetchall()
            return SessionCapture(session_id, tuple(CapturedFrame(*r) for r in rows), head[0])

        return await self._run(read)

    async def ping(self) -> bool:
        async def select(pooled: _Pooled) -> None:
            await pooled.conn.execute("SELECT 1")

        try:
            await self._run(select)
        except StoreError:
            return False
        return True

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def _copy_upsert(
    cur: psycopg.AsyncCursor[tuple[Any, ...]], table: _Table, rows: Iterable[tuple[object, ...]]
) -> None:
    async with cur.copy(table.copy()) as copy:
        for row in rows:
            await copy.write_row(row)
    await cur.execute(table.upsert())


async def _migrate(conn: AsyncConnection[tuple[Any, ...]]) -> int:
    """Bring the schema up to date (module docstring); the version it is at after."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await conn.execute(_SCHEMA_TABLE)
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM voxgate_schema")
        row = await cur.fetchone()
        version: int = row[0] if row else 0
        if version > SCHEMA_VERSION:
            log.warning(
                "usage store schema is at version %d, newer than this node's %d; "
                "carrying on (migrations are additive)",
                version,
                SCHEMA_VERSION,
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for step in MIGRATIONS[number - 1]:
                await conn.execute(step)
            await conn.execute("INSERT INTO voxgate_schema (version) VALUES (%s)", (number,))
            log.info("usage store schema migrated to version %d", number)
        for table, cls in _SYNCED.items():
            await _add_missing_columns(conn, table, cls)
    return max(version, SCHEMA_VERSION)


async def _add_missing_columns(
    conn: AsyncConnection[tuple[Any, ...]], table: str, cls: type
) -> None:
    """A column for each field of ``cls`` that ``table`` lacks (a field added since)."""
    cur = await conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    )
    have = {row[0] for row in await cur.fetchall()}
    for name, ddl in _column_ddl(cls).items():
        if name not in have:
            await conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {ddl}")
            log.info("usage store: added column %s.%s", table, name)


def _store_error(exc: BaseException) -> StoreError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StoreError(f"postgresql: {type(exc).__name__}: {detail}")
