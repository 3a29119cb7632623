"""The in-process :class:`StateBackend`: the default for one node (``memory://``).

Nothing here can fail or lapse: the process that holds an entry is the only one that
sees it, and it goes with the process. Two apps in one process may share one instance,
which is how tests run several nodes without a server.
"""

from __future__ import annotations

from voxgate.state.base import DEFAULT_LEASE_SECONDS, Describe, StateBackend


class MemoryState(StateBackend):
    def __init__(self, *, node: str = "local", lease_seconds: float = DEFAULT_LEASE_SECONDS):
        super().__init__(node=node, lease_seconds=lease_seconds)
        self._slots: dict[str, set[str]] = {}
        self._secrets: dict[str, tuple[bytes, float]] = {}
        self._sessions: dict[str, dict[str, Describe]] = {}
        self._locations: dict[str, str] = {}

    async def acquire_slot(self, key: str, holder: str, limit: int) -> bool:
        held = self._slots.setdefault(key, set())
        if holder in held:
            return True
        if len(held) >= limit:
            if not held:
                del self._slots[key]
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

    async def put_secret(self, value: str, payload: bytes, expires_at: float) -> None:
        self._secrets[value] = (payload, expires_at)

    async def get_secret(self, value: str, *, now: float) -> bytes | None:
        for v in [v for v, (_, exp) in self._secrets.items() if exp <= now]:
            del self._secrets[v]
        found = self._secrets.get(value)
        return found[0] if found is not None else None

    async def put_session(self, scope: str, session_id: str, describe: Describe) -> None:
        self._sessions.setdefault(scope, {})[session_id] = describe

    async def remove_session(self, scope: str, session_id: str) -> None:
        listed = self._sessions.get(scope)
        if listed is not None:
            listed.pop(session_id, None)
            if not listed:
                del self._sessions[scope]

    async def list_sessions(self, scope: str) -> list[bytes]:
        return [describe() for describe in self._sessions.get(scope, {}).values()]

    async def put_location(self, key: str, value: str) -> None:
        self._locations[key] = value

    async def remove_location(self, key: str) -> None:
        self._locations.pop(key, None)

    async def get_location(self, key: str) -> str | None:
        return self._locations.get(key)
