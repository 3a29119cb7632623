"""SQLite usage store. All sqlite3 calls run on one dedicated worker thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import ConfigError, StoreError
from voxgate.protocols.relay.capture import CapturedFrame
from voxgate.store.base import BulkUsageStore, Entry, UsageQuery, query_sql, storable_text

T = TypeVar("T")

_COLUMNS = [f.name for f in fields(UsageRecord)]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage_records (
    {", ".join(f"{c} {'TEXT PRIMARY KEY' if c == 'session_id' else ''}" for c in _COLUMNS)}
);
CREATE INDEX IF NOT EXISTS usage_by_gateway ON usage_records (account, gateway, ended_at);
CREATE TABLE IF NOT EXISTS captured_frames (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    direction TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS captures (
    session_id TEXT PRIMARY KEY,
    dropped INTEGER NOT NULL
);
"""


class SQLiteStore(BulkUsageStore):
    """Usage records in one SQLite file (one node)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxgate-sqlite")

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``."""
        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(f"store.url: expected sqlite:///PATH, got {url!r}")
        return cls(rest[1:])

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, conn)
        except (sqlite3.Error, OverflowError, UnicodeError) as exc:
            # OverflowError: an integer past SQLite's 64 bits; UnicodeError: a string
            # that is not valid UTF-8 (lone surrogates)
            raise StoreError(f"sqlite: {type(exc).__name__}: {exc}") from exc

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            _add_missing_columns(conn)
            return conn

        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, connect)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open usage store {self.path!r}: {exc}") from exc

    async def add_many(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` in one transaction (``executemany``): all of them or, with
        StoreError, none. A record or capture stored already is replaced."""
        rows = []
        heads = []
        frames = []
        for record, capture in entries:
            r = record.clamped()
            rows.append([_value(getattr(r, c)) for c in _COLUMNS])
            if capture is not None:
                sid = storable_text(capture.session_id)
                heads.append((sid, capture.dropped))
                frames += [
                    (sid, f.seq, f.direction, f.at, f.kind, f.size, storable_text(f.payload))
                    for f in capture.frames
                ]

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN")
                conn.executemany(
                    f"INSERT OR REPLACE INTO usage_records ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                    rows,
                )
                conn.executemany("INSERT OR REPLACE INTO captures VALUES (?, ?)", heads)
                conn.executemany(
                    "INSERT OR REPLACE INTO captured_frames VALUES (?, ?, ?, ?, ?, ?, ?)", frames
                )

        await self._run(write)

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        sql, args = query_sql(q, _COLUMNS, "?")
        rows = await self._run(lambda c: c.execute(sql, args).fetchall())
        return [UsageRecord(*r) for r in rows]

    async def get(self, account: str, gateway: str, session_id: str) -> UsageRecord | None:
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM usage_records "
            "WHERE account = ? AND gateway = ? AND session_id = ?"
        )
        row = await self._run(lambda c: c.execute(sql, (account, gateway, session_id)).fetchone())
        return UsageRecord(*row) if row else None

    async def get_capture(self, session_id: str) -> SessionCapture | None:
        def read(conn: sqlite3.Connection) -> SessionCapture | None:
            head = conn.execute(
                "SELECT dropped FROM captures WHERE session_id = ?", (session_id,)
            ).fetchone()
            if head is None:
                return None
            rows = conn.execute(
                "SELECT seq, direction, at, kind, size, payload FROM captured_frames "
                "WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ).fetchall()
            return SessionCapture(session_id, tuple(CapturedFrame(*r) for r in rows), head[0])

        return await self._run(read)

    async def ping(self) -> bool:
        try:
            await self._run(lambda c: c.execute("SELECT 1").fetchone())
        except StoreError:
            return False
        return True

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)


def _value(value: object) -> object:
    return storable_text(value) if isinstance(value, str) else value


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns added to :class:`UsageRecord` since a database was made (defaults 0/NULL)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(usage_records)")}
    for f in fields(UsageRecord):
        if f.name not in have:
            default = f.default if isinstance(f.default, int | float | str) else None
            conn.execute(
                f"ALTER TABLE usage_records ADD COLUMN {f.name} DEFAULT {_sql_literal(default)}"
            )


def _sql_literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)
