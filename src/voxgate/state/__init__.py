"""Shared state across nodes: connection slots (later: registry, track directory).

:class:`StateBackend` is the interface; :class:`MemoryState` is the in-process
default. A Redis implementation lets several nodes share limits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from voxgate.errors import ConfigError


class StateBackend(ABC):
    @abstractmethod
    async def acquire_slot(self, key: str, holder: str, limit: int) -> bool:
        """Take one of ``limit`` slots under ``key`` for ``holder``; False if all are taken."""

    @abstractmethod
    async def release_slot(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot. Releasing a slot not held does nothing."""

    @abstractmethod
    async def slots_in_use(self, key: str) -> int: ...

    async def close(self) -> None:
        """Release resources; the backend is unusable afterwards."""
        return None


class MemoryState(StateBackend):
    def __init__(self) -> None:
        self._slots: dict[str, set[str]] = {}

    async def acquire_slot(self, key: str, holder: str, limit: int) -> bool:
        held = self._slots.setdefault(key, set())
        if holder in held:
            return True
        if len(held) >= limit:
            return False
        held.add(holder)
        return True

    async def release_slot(self, key: str, holder: str) -> None:
        held = self._slots.get(key)
        if held is not None:
            held.discard(holder)
            if not held:
                del self._slots[key]

    async def slots_in_use(self, key: str) -> int:
        return len(self._slots.get(key, ()))


def open_state(url: str) -> StateBackend:
    if url.startswith("memory://"):
        return MemoryState()
    raise ConfigError(
        f"state.url: {url.split('://', 1)[0]}:// is not available in this version; use memory://"
    )
