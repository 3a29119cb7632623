"""The usage store interface, :func:`open_store`, and :func:`write_record`, how a
session's record is kept.

:func:`open_store` gives a :class:`~voxgate.store.batched.BatchingStore` over the store
the URL names (SQLite or PostgreSQL): sessions never wait on a failing store and no
record is lost while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import orjson

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from voxgate.settings import StoreSettings

log = logging.getLogger("voxgate.store")

#: Seconds to wait before each retry of a failed record write.
RETRY_DELAYS = (0.05, 0.25, 1.0)


@dataclass(frozen=True)
class UsageQuery:
    account: str
    gateway: str
    limit: int = 100
    #: Only records that ended at or after this Unix time.
    since: float | None = None


def query_sql(q: UsageQuery, columns: Sequence[str], mark: str) -> tuple[str, list[object]]:
    """The SQL of ``q`` (newest first) over ``columns``, with ``mark`` as the driver's
    parameter placeholder (``?`` for sqlite3, ``%s`` for psycopg), and its arguments."""
    sql = (
        f"SELECT {', '.join(columns)} FROM usage_records "
        f"WHERE account = {mark} AND gateway = {mark}"
    )
    args: list[object] = [q.account, q.gateway]
    if q.since is not None:
        sql += f" AND ended_at >= {mark}"
        args.append(q.since)
    sql += f" ORDER BY ended_at DESC LIMIT {mark}"
    args.append(q.limit)
    return sql, args


class UsageStore(ABC):
    """Where usage records live. Methods may be called concurrently from one loop."""

    @abstractmethod
    async def open(self) -> None:
        """Create tables if needed. Must be called before any other method."""

    @abstractmethod
    async def add(self, record: UsageRecord, capture: SessionCapture | None = None) -> None: ...

    @abstractmethod
    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        """Newest first."""

    @abstractmethod
    async def get(self, account: str, gateway: str, session_id: str) -> UsageRecord | None: ...

    @abstractmethod
    async def get_capture(self, session_id: str) -> SessionCapture | None: ...

    @property
    def pending(self) -> int:
        """Records :meth:`add` accepted that are not committed yet (for ``/readyz`` and
        metrics); 0 for a store whose ``add`` returns once the record is committed."""
        return 0

    @abstractmethod
    async def ping(self) -> bool:
        """True when the store answers (for ``/readyz``)."""

    @abstractmethod
    async def close(self) -> None: ...


#: A record and its payload capture (if the session kept one), as written together.
Entry: TypeAlias = tuple[UsageRecord, SessionCapture | None]


class BulkUsageStore(UsageStore):
    """A store that writes many records in one transaction (what batching needs)."""

    #: A store on another machine (a database server): that it cannot be opened at
    #: start is an outage to wait out, not a configuration error to stop on.
    remote = False

    @abstractmethod
    async def add_many(self, entries: Sequence[Entry]) -> None:
        """Write every entry in ONE transaction: all of them, or none and StoreError.

        A record whose ``session_id`` is stored already replaces it (so writing the
        same record twice leaves it once); so does a capture.
        """

    async def add(self, record: UsageRecord, capture: SessionCapture | None = None) -> None:
        await self.add_many([(record, capture)])


def storable_text(value: str) -> str:
    """``value`` with lone surrogates (which UTF-8 cannot encode) as U+FFFD, so a
    record with one is stored, not refused."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _sqlite(url: str) -> BulkUsageStore:
    from voxgate.store.sqlite import SQLiteStore

    return SQLiteStore.from_url(url)


def _postgres(url: str) -> BulkUsageStore:
    from voxgate.store.postgres import PostgresStore

    return PostgresStore.from_url(url)


#: URL scheme → the store that serves it.
STORES: dict[str, Callable[[str], BulkUsageStore]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def spill_path_for(node: str) -> str:
    """The default spill file of ``node``: ``voxgate-spill-NODE.jsonl`` in the working
    directory, the node's name made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node).strip(".") or "node"
    return f"voxgate-spill-{safe}.jsonl"


def open_store(settings: StoreSettings, *, node: str) -> UsageStore:
    """The usage store ``settings`` describe, for this ``node``; call ``open()`` next.

    A :class:`~voxgate.store.batched.BatchingStore` over the store ``settings.url``
    names, spilling to ``settings.spill_path`` (default :func:`spill_path_for`).
    ConfigError for a URL no store serves.
    """
    from voxgate.store.batched import BatchingStore

    scheme = settings.url.split("://", 1)[0] if "://" in settings.url else ""
    factory = STORES.get(scheme)
    if factory is None:
        raise ConfigError(
            f"store.url: {scheme or settings.url!r} is not a store this version has; "
            "use sqlite:///path/to/voxgate.db or postgresql://user@host/db"
        )
    return BatchingStore(
        factory(settings.url),
        spill_path=Path(settings.spill_path or spill_path_for(node)),
        batch_size=settings.batch_size,
        queue_max=settings.queue_max,
    )


async def write_record(
    store: UsageStore,
    record: UsageRecord,
    capture: SessionCapture | None = None,
    *,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> None:
    """Add ``record``, retrying a failed write after each of ``retry_delays``.

    A write that still fails is never dropped
    silently: it is logged at error level with the whole record (counts, codes, no
    secrets), so an operator can restore it. Only cancellation escapes.
    """
    attempts = len(retry_delays) + 1
    for attempt in range(attempts):
        try:
            await store.add(record, capture)
        except StoreError as exc:
            if attempt + 1 == attempts:
                log.error(
                    "usage record %s not saved after %d attempts: %s; record: %s",
                    record.session_id,
                    attempts,
                    exc,
                    orjson.dumps(record.to_json()).decode(),
                )
                return
            log.warning("usage record %s not saved (%s); retrying", record.session_id, exc)
            await asyncio.sleep(retry_delays[attempt])
        else:
            return
