"""Shared state across nodes: connection slots, client secrets, live sessions, the SFU's
directory (:mod:`voxgate.state.base`). ``memory://`` (the default) keeps it in the
process; ``redis://HOST:PORT/DB`` shares it between nodes."""

from __future__ import annotations

from voxgate.errors import ConfigError
from voxgate.state.base import DEFAULT_LEASE_SECONDS, Describe, StateBackend
from voxgate.state.memory import MemoryState

__all__ = ["DEFAULT_LEASE_SECONDS", "Describe", "MemoryState", "StateBackend", "open_state"]


def open_state(
    url: str, *, node: str = "local", lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> StateBackend:
    """The backend ``url`` names (``memory://``, ``redis://…``, ``rediss://…``)."""
    if url.startswith("memory://"):
        return MemoryState(node=node, lease_seconds=lease_seconds)
    if url.startswith(("redis://", "rediss://")):
        from voxgate.state.redis import RedisState

        return RedisState(url, node=node, lease_seconds=lease_seconds)
    raise ConfigError(f"state.url: {url.split('://', 1)[0]}:// is not supported; use memory://")
