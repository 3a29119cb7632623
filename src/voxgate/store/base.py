"""The usage store interface, and :func:`write_record`, how a session's record is kept."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import ConfigError, StoreError

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

    @abstractmethod
    async def ping(self) -> bool:
        """True when the store answers (for ``/readyz``)."""

    @abstractmethod
    async def close(self) -> None: ...


def open_store(url: str) -> UsageStore:
    if url.startswith("sqlite://"):
        from voxgate.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    raise ConfigError(
        f"store.url: {url.split('://', 1)[0]}:// is not available in this version; "
        "use sqlite:///path/to/voxgate.db"
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
