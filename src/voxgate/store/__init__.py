"""Usage records: the :class:`UsageStore` interface and its implementations."""

from voxgate.store.base import UsageQuery, UsageStore, open_store, write_record

__all__ = ["UsageQuery", "UsageStore", "open_store", "write_record"]
