"""A live session as this node lists it: its meter, how it ended, its registry entry."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.core.records import UsageRecord
from voxgate.core.relay import RelaySession


@dataclass
class SessionEnd:
    """How a session ended, as its usage record says. The default is what a session
    that failed before saying otherwise leaves: 1011, ``internal_error``."""

    client_code: int | None = 1011
    upstream_code: int | None = None
    error: str | None = "internal_error"

    def set(self, client_code: int | None, upstream_code: int | None, error: str | None) -> None:
        self.client_code, self.upstream_code, self.error = client_code, upstream_code, error


class Live:
    """One session between :func:`~voxgate.server.sessions.open_session` and its record."""

    def __init__(self, counters: RelaySession, *, node: str, wall: Callable[[], float]) -> None:
        self.counters = counters
        self.node = node
        self.end = SessionEnd()
        #: Resolved once the session is unlisted and its slots released (its record
        #: may still be in flight: see ``Services.pending_writes``).
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wall = wall
        #: False for a session refused before anything ran (see :meth:`abandon`).
        self.recorded = True

    def abandon(self) -> None:
        """The request was refused after all (an offer that cannot be answered) and the
        client got an HTTP error: nothing ran, so no usage record is written."""
        self.recorded = False

    @property
    def id(self) -> str:
        return self.counters.info.session_id

    @property
    def scope(self) -> str:
        """The registry scope: ``account/gateway``."""
        return f"{self.counters.info.account}/{self.counters.info.gateway}"

    def row(self, now: float) -> dict[str, Any]:
        """The session as the sessions API shows it, at the Unix time ``now``."""
        c = self.counters
        info = c.info
        return {
            "id": info.session_id,
            "kind": info.kind,
            "transport": info.transport,
            "provider": info.provider,
            "model": info.model,
            "token": info.token_name,
            "node": self.node,
            "started_at": c.started_wall,
            "duration_seconds": round(max(0.0, now - c.started_wall), 3),
            "client_bytes": c.client_bytes,
            "upstream_bytes": c.upstream_bytes,
            "client_messages": c.client_frames,
            "upstream_messages": c.upstream_frames,
            "audio_seconds": round(c.audio_seconds, 3),
            "characters": c.characters,
        }

    def record(self, end: SessionEnd) -> UsageRecord:
        """The session's usage record as of now, ended as ``end`` says."""
        record = self.counters.record(
            now=asyncio.get_running_loop().time(),
            wall=self._wall(),
            client_close_code=end.client_code,
            upstream_close_code=end.upstream_code,
            error=end.error,
        )
        return dataclasses.replace(record, node=self.node)

    def describe(self) -> bytes:
        """The registry entry (JSON), as of now: ``session``, the row other nodes list,
        and ``record``, the usage record that another node writes (``error:
        "node_lost"``) should this node die with the session live (see
        :func:`~voxgate.server.sessions.reap_lost_sessions`)."""
        record = self.record(SessionEnd(None, None, LOST))
        return orjson.dumps({"session": self.row(record.ended_at), "record": record.to_json()})


#: The error of the record of a session whose node died with it live.
LOST = "node_lost"
