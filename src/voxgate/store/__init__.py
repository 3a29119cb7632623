"""Usage records: the :class:`UsageStore` interface and its implementations."""

from voxgate.store.base import UsageQuery, UsageStore, open_store

__all__ = ["UsageQuery", "UsageStore", "open_store"]
