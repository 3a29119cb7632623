"""Usage records: the :class:`UsageStore` interface and its implementations.

``open_store`` gives a :class:`BatchingStore` (group commit, a spill file while the store
is down) over :class:`~voxgate.store.sqlite.SQLiteStore` or
:class:`~voxgate.store.postgres.PostgresStore`.
"""

from voxgate.store.base import (
    BulkUsageStore,
    Entry,
    UsageQuery,
    UsageStore,
    open_store,
    write_record,
)
from voxgate.store.batched import BatchingStore

__all__ = [
    "BatchingStore",
    "BulkUsageStore",
    "Entry",
    "UsageQuery",
    "UsageStore",
    "open_store",
    "write_record",
]
