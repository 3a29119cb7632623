"""The usage store interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import ConfigError


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
