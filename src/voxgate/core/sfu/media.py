"""The media server: sessions by id, the tracks they publish, adapters, and collection.

There is no room object (spec/sfu.md): an application decides who pulls what. A
track with no packets for ``stale_seconds`` is collected, and so is a session that
lost connectivity (or never had it) and has been without for as long.

Collection outlives its failures: a session whose tracks or close raise is logged
(once, with its traceback) and dropped from the table, and the other sessions are
collected all the same; the collector task itself never ends before :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from voxgate.channels import Dial
from voxgate.clock import Clock, IdFactory
from voxgate.core.sfu.adapters import IngestAdapter, StreamAdapter
from voxgate.core.sfu.loops import stop_task, surviving
from voxgate.core.sfu.session import SfuSession
from voxgate.core.sfu.tracks import TrackSource
from voxgate.errors import SfuError

log = logging.getLogger("voxgate.sfu")


class Closable(Protocol):
    """An adapter or agent the media server owns until it closes."""

    id: str
    app_id: str

    def close(self) -> Awaitable[int | None]:
        """Stop; returns bytes processed (``None`` if it was already closed)."""
        ...


@dataclass(frozen=True)
class MediaSettings:
    #: A track with no packets for this long is collected; a session keeps its tracks
    #: for this long after losing connectivity.
    stale_seconds: float = 30.0
    collect_every: float = 5.0


@dataclass(eq=False)
class MediaServer:
    clock: Clock
    ids: IdFactory
    settings: MediaSettings = field(default_factory=MediaSettings)
    sessions: dict[str, SfuSession] = field(default_factory=dict)
    adapters: dict[str, Closable] = field(default_factory=dict)
    agents: dict[str, Closable] = field(default_factory=dict)
    #: Adapter and agent ids closed already, so a second close answers 200 (spec).
    closed_ids: set[str] = field(default_factory=set)
    #: Agents closing on their own (their session's time limit), until they have.
    closing_agents: set[asyncio.Task[int | None]] = field(default_factory=set)
    _collector: asyncio.Task[None] | None = None
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    #: Set to run a collection now (new settings), without waiting out the interval.
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def new_session(self, app_id: str) -> SfuSession:
        sid = self.ids("sess").replace("sess_", "")
        session = SfuSession(sid, app_id, now=self.clock.monotonic, lookup=self.find_track)
        self.sessions[sid] = session
        return session

    def session(self, app_id: str, sid: str) -> SfuSession:
        s = self.sessions.get(sid)
        if s is None or s.app_id != app_id or s.closed:
            raise SfuError(404, "not_found", f"no session {sid!r} in app {app_id!r}")
        return s

    def track(self, app_id: str, sid: str, name: str) -> TrackSource:
        """A published track of the app's session ``sid``; raises SfuError 404."""
        source = self.find_track(self.session(app_id, sid).id, name)
        if source is None:
            raise SfuError(404, "not_found", f"no track {name!r} in session {sid!r}")
        return source

    def find_track(self, sid: str, name: str) -> TrackSource | None:
        s = self.sessions.get(sid)
        return s.find_local(name) if s is not None and not s.closed else None

    async def open_ingest(self, dial: Dial, app_id: str, name: str, endpoint: str) -> IngestAdapter:
        """Dial ``endpoint`` and publish what it sends as track ``name`` of a new session.
        Raises :class:`DialError` (nothing is left behind)."""
        channel = await dial(endpoint)
        session = self.new_session(app_id)
        adapter = IngestAdapter(
            self.ids("adapter").replace("adapter_", ""),
            app_id,
            session.id,
            session.publish_pcm(name),
            channel,
            on_close=self.adapter_closed,
        )
        self.adapters[adapter.id] = adapter
        return adapter

    async def open_stream(
        self, dial: Dial, app_id: str, session_id: str, name: str, endpoint: str
    ) -> StreamAdapter:
        """Dial ``endpoint`` and send it track ``name`` of session ``session_id``.
        Raises :class:`SfuError` (404) or :class:`DialError`."""
        source = self.track(app_id, session_id, name)
        channel = await dial(endpoint)
        adapter = StreamAdapter(
            self.ids("adapter").replace("adapter_", ""),
            app_id,
            source,
            endpoint,
            channel,
            dial,
            on_close=self.adapter_closed,
        )
        self.adapters[adapter.id] = adapter
        return adapter

    def adapter_closed(self, adapter_id: str) -> None:
        """An adapter ended (closed by the API, its endpoint, or its track)."""
        adapter = self.adapters.pop(adapter_id, None)
        self.closed_ids.add(adapter_id)
        sid = getattr(adapter, "owns_session", None)
        if isinstance(sid, str) and (s := self.sessions.pop(sid, None)) is not None:
            task = asyncio.get_running_loop().create_task(self._close(sid, s))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close_session(self, sid: str) -> None:
        """Forget session ``sid`` and close it. Never raises: a close that fails is
        logged with its traceback (the session is gone from the table either way)."""
        s = self.sessions.pop(sid, None)
        if s is not None:
            await self._close(sid, s)

    async def _close(self, sid: str, s: SfuSession) -> None:
        with surviving(log, "closing session %s", sid):
            await s.close()

    # -- collection -------------------------------------------------------------------

    def start(self) -> None:
        self._collector = asyncio.create_task(self._collect_loop(), name="sfu-collector")

    @property
    def collector_alive(self) -> bool:
        return self._collector is not None and not self._collector.done()

    def reconfigure(self, settings: MediaSettings) -> None:
        """Use ``settings`` from now on; the collector runs at once, then at the new pace."""
        self.settings = settings
        self._wake.set()

    async def _collect_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.collect_every):
                    await self._wake.wait()
            self._wake.clear()
            with surviving(log, "media collection"):
                await self.collect()

    async def collect(self) -> None:
        """End tracks gone quiet; close sessions without connectivity for too long.

        One session's failure is logged and does not keep the others from collection:
        that session is closed."""
        now = self.clock.monotonic()
        for sid, s in list(self.sessions.items()):
            if s.closed:  # closed by a failed negotiation: only the entry is left
                self.sessions.pop(sid, None)
                continue
            # a session that cannot be collected is closed: its failure is logged once,
            # not at every round
            stale = True
            with surviving(log, "collecting session %s", sid):
                stale = self._collect_tracks(sid, s, now)
            if stale:
                log.info("session %s collected", sid)
                await self.close_session(sid)

    def _collect_tracks(self, sid: str, s: SfuSession, now: float) -> bool:
        """End ``s``'s quiet tracks; whether ``s`` itself is due for collection."""
        limit = self.settings.stale_seconds
        for lt in list(s.local.values()):
            if now - lt.source.last_packet >= limit:
                log.info("track %s/%s collected: no packets", sid, lt.source.name)
                lt.source.end()
        lost = s.disconnected_since
        never = s.connection_state in ("new", "connecting") and not s.local
        return (lost is not None and now - lost >= limit) or (
            never and now - s.created >= limit and not self._in_use(sid)
        )

    def _in_use(self, sid: str) -> bool:
        """Adapter sessions have no PeerConnection; their adapter keeps them."""
        return any(getattr(a, "session_id", None) == sid for a in self.adapters.values())

    async def close(self) -> None:
        """Stop collection; close every agent, adapter and session (each one's failure
        is logged and the rest still close)."""
        await stop_task(self._collector, log, "the media collector")
        for agent in list(self.agents.values()):
            with surviving(log, "closing agent %s", agent.id):
                await agent.close()
        for adapter in list(self.adapters.values()):
            with surviving(log, "closing adapter %s", adapter.id):
                await adapter.close()
        for sid in list(self.sessions):
            await self.close_session(sid)
        if self._closing:
            await asyncio.wait(list(self._closing))
