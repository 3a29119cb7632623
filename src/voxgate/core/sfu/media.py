"""The media server: sessions by id, the tracks they publish, adapters, and collection.

There is no room object (spec/sfu.md): an application decides who pulls what. A
track with no packets for ``stale_seconds`` is collected, and so is a session that
lost connectivity (or never had it) and has been without for as long.

Collection outlives its failures: a session whose tracks or close raise is logged
(once, with its traceback) and dropped from the table, and the other sessions are
collected all the same; the collector task itself never ends before :meth:`close`.

Across nodes (:mod:`voxgate.core.sfu.cluster`, once :meth:`MediaServer.join` is
called): every session is listed in the shared directory while it lives, and a track
of a session on another node is reached with :meth:`MediaServer.reach` (or
:meth:`MediaServer.tracks`) before the synchronous lookups (:meth:`find_track`,
:meth:`track`) can give it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from voxgate.channels import Dial
from voxgate.clock import Clock, IdFactory
from voxgate.core.sfu.adapters import IngestAdapter, StreamAdapter
from voxgate.core.sfu.cluster import Cluster, Key
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
    #: The other nodes (``None``: this node alone); see :meth:`join`.
    cluster: Cluster | None = None

    def join(self, cluster: Cluster) -> None:
        """List this node's sessions in ``cluster``'s directory and reach tracks on
        other nodes through it; it is closed with the media server."""
        self.cluster = cluster
        cluster.start()
        for sid in self.sessions:
            cluster.listing.publish(sid)

    def new_session(self, app_id: str) -> SfuSession:
        sid = self.ids("sess").replace("sess_", "")
        session = SfuSession(
            sid,
            app_id,
            now=self.clock.monotonic,
            lookup=lambda sid, name: self.find_track(sid, name, app_id=app_id),
            on_close=self._session_closed,
        )
        self.sessions[sid] = session
        if self.cluster is not None:
            self.cluster.listing.publish(sid)
        return session

    def _session_closed(self, sid: str) -> None:
        if self.cluster is not None:
            self.cluster.listing.withdraw(sid)

    def session(self, app_id: str, sid: str) -> SfuSession:
        s = self.sessions.get(sid)
        if s is None or s.app_id != app_id or s.closed:
            raise SfuError(404, "not_found", f"no session {sid!r} in app {app_id!r}")
        return s

    def track(self, app_id: str, sid: str, name: str) -> TrackSource:
        """A published track of the app's session ``sid`` (on another node: one
        :meth:`reach` made findable); raises SfuError 404."""
        if sid not in self.sessions and self.cluster is not None:
            fed = self.cluster.find(sid, name, app_id)
            if fed is not None:
                return fed
        source = self.find_track(self.session(app_id, sid).id, name)
        if source is None:
            raise SfuError(404, "not_found", f"no track {name!r} in session {sid!r}")
        return source

    def find_track(self, sid: str, name: str, *, app_id: str | None = None) -> TrackSource | None:
        """Track ``name`` of session ``sid``: published here, or (for ``app_id``) fed
        from another node by a feed that :meth:`reach` opened."""
        s = self.sessions.get(sid)
        if s is not None:
            return s.find_local(name) if not s.closed else None
        return self.cluster.find(sid, name, app_id) if self.cluster is not None else None

    @contextlib.asynccontextmanager
    async def reach(
        self, app_id: str, wanted: Iterable[Key]
    ) -> AsyncIterator[Mapping[Key, SfuError]]:
        """Make the wanted ``(session id, track name)`` of sessions on other nodes
        findable while inside (one shared feed each); subscribe to them inside.

        Yields the tracks that were refused for a reason other than "not found", with
        the error to answer (see :meth:`Cluster.reach`)."""
        remote = [(sid, name) for sid, name in wanted if sid not in self.sessions]
        if self.cluster is None or not remote:
            yield {}
            return
        async with self.cluster.reach(app_id, remote) as refused:
            yield refused

    @contextlib.asynccontextmanager
    async def tracks(self, app_id: str, wanted: list[Key]) -> AsyncIterator[list[TrackSource]]:
        """The sources of the wanted tracks, here or on other nodes, held while inside.
        Raises SfuError: 404, or the refusal of a track on another node."""
        async with self.reach(app_id, wanted) as refused:
            for key in wanted:
                if key in refused:
                    raise refused[key]
            yield [self.track(app_id, sid, name) for sid, name in wanted]

    async def resolve(self, app_id: str, wanted: list[Key]) -> None:
        """Check that the wanted tracks exist, here or on other nodes (a feed opened for
        one stays a little while for the request's next step). Raises SfuError."""
        async with self.tracks(app_id, wanted):
            pass

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
        Raises :class:`SfuError` (404, or the refusal of a track on another node) or
        :class:`DialError`."""
        async with self.tracks(app_id, [(session_id, name)]) as (source,):
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
            if self.cluster is not None:
                with surviving(log, "sweeping idle feeds"):
                    self.cluster.sweep(self.clock.monotonic())

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
        if self.cluster is not None:
            with surviving(log, "closing the cluster's feeds and listing"):
                await self.cluster.close()
