"""The media server across nodes: a directory of sessions, and feeds of other nodes' tracks.

Two ports, implemented by the server (``voxgate.server.cluster_routes``) so that the
core imports neither the state backend nor a transport:

- :class:`Directory`: which node holds an SFU session (``sfu:session:{sid}`` → node URL).
- :data:`FeedDial`: opens a node-to-node feed (:mod:`voxgate.core.sfu.feeds`).

:class:`Listing` keeps the directory in step with this node's sessions off the request
path: creating a session never waits for the state server, and a write that fails is
logged and retried (the backend's lease renewal writes entries again anyway).

:class:`Cluster` owns this node's :class:`~voxgate.core.sfu.feeds.RemoteFeed`\\ s, one
per (session, track): :meth:`Cluster.reach` locates a session that is not here, dials
its node once, and holds the feed while a request subscribes to it; every later
subscriber of this node shares that feed. A feed closes when its last subscriber
leaves, or when the publishing node ends it; a feed opened for a request that then
subscribed nothing closes after ``idle_seconds`` (:meth:`Cluster.sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from voxgate.channels import Channel
from voxgate.core.sfu.feeds import RemoteFeed
from voxgate.core.sfu.loops import stop_task
from voxgate.core.sfu.tracks import TrackSource
from voxgate.errors import SfuError, VoxgateError

log = logging.getLogger("voxgate.sfu.cluster")

Key = tuple[str, str]  # (session id, track name)


class Directory(Protocol):
    """Where SFU sessions live, shared by every node."""

    async def publish(self, sid: str, node: str) -> None:
        """Say that session ``sid`` is held by ``node`` (this node's URL). May raise;
        the write is then retried."""

    async def withdraw(self, sid: str) -> None:
        """Forget session ``sid``. May raise; the removal is then retried."""

    async def locate(self, sid: str) -> str | None:
        """The URL of the node holding ``sid``, ``None`` if none does. Raises SfuError
        (503 ``state_unavailable``) when the directory cannot be read."""


#: Opens a feed: (node URL, app id, session id, track name) → the feed's channel.
#: Raises SfuError: 404 ``not_found`` (no such track there), or the refusal a track of
#: a pull answers with (``cluster_secret_unset``, ``cluster_unauthorized``,
#: ``node_unreachable``).
FeedDial = Callable[[str, str, str, str], Awaitable[Channel]]


class Listing:
    """This node's sessions in the :class:`Directory`: :meth:`publish` and
    :meth:`withdraw` return at once; one loop writes, in order, and retries a write that
    failed every ``retry_seconds``. Nothing is published before :attr:`here` is known."""

    def __init__(self, directory: Directory, *, here: str | None, retry_seconds: float) -> None:
        self.directory = directory
        self._here = here
        self._retry = retry_seconds
        #: Writes not done yet, in order: session id → publish (True) or withdraw.
        self._todo: dict[str, bool] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def here(self) -> str | None:
        return self._here

    def locate_here(self, url: str) -> None:
        """This node's URL, when only a request could tell it (listening on port 0)."""
        if self._here is None:
            self._here = url
            self._wake.set()

    def publish(self, sid: str) -> None:
        self._todo[sid] = True
        self._wake.set()

    def withdraw(self, sid: str) -> None:
        if self._todo.pop(sid, None) is True:
            return  # never written: nothing to take back
        self._todo[sid] = False
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._todo)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sfu-directory")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(self._retry)
                self._wake.set()

    async def flush(self) -> bool:
        """Write what is waiting; False if a write failed (it stays waiting)."""
        while self._todo and self._here is not None:
            sid, listed = next(iter(self._todo.items()))
            del self._todo[sid]
            if not await self._write(sid, listed):
                if sid not in self._todo:  # not superseded meanwhile: try again later
                    self._todo = {sid: listed, **self._todo}
                return False
        return True

    async def _write(self, sid: str, listed: bool) -> bool:
        what = "listing" if listed else "unlisting"
        try:
            if listed:
                assert self._here is not None
                await self.directory.publish(sid, self._here)
            else:
                await self.directory.withdraw(sid)
        except VoxgateError as exc:  # the state server is down: expected, retried
            if not self.failures:
                log.warning("directory: %s session %s failed (%s); retrying", what, sid, exc)
            self.failures += 1
            return False
        except Exception:
            log.exception("directory: %s session %s failed; retrying", what, sid)
            self.failures += 1
            return False
        if self.failures:
            log.info("directory: writing again after %d failures", self.failures)
            self.failures = 0
        return True

    async def close(self, within: float) -> None:
        """Stop the loop; write the withdrawals still waiting, for ``within`` seconds."""
        await stop_task(self._task, log, "the directory loop")
        self._todo = {sid: False for sid, listed in self._todo.items() if not listed}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.flush()


class Cluster:
    """This node's part of the cluster: its directory listing and the feeds it pulls."""

    def __init__(
        self,
        directory: Directory,
        dial: FeedDial,
        *,
        now: Callable[[], float],
        here: str | None,
        retry_seconds: float = 1.0,
        idle_seconds: float = 10.0,
    ) -> None:
        self.listing = Listing(directory, here=here, retry_seconds=retry_seconds)
        self._directory = directory
        self._dial = dial
        self._now = now
        self._idle_seconds = idle_seconds
        self.feeds: dict[Key, RemoteFeed] = {}
        #: Feeds being dialled, so that concurrent requests for one track share the dial.
        self._opening: dict[Key, asyncio.Task[RemoteFeed]] = {}
        #: Feeds stopped and not yet ended.
        self._ending: set[RemoteFeed] = set()
        #: Feeds opened so far (each one dial of another node).
        self.opened = 0

    def start(self) -> None:
        self.listing.start()

    # -- finding ------------------------------------------------------------------------

    def find(self, sid: str, name: str, app_id: str | None = None) -> TrackSource | None:
        """The source of a feed of track ``name`` of session ``sid`` (another node's),
        if this node has one open (for app ``app_id``, when given)."""
        feed = self.feeds.get((sid, name))
        if feed is None or feed.source.ended or (app_id is not None and feed.app_id != app_id):
            return None
        return feed.source

    @contextlib.asynccontextmanager
    async def reach(self, app_id: str, wanted: Iterable[Key]) -> AsyncIterator[dict[Key, SfuError]]:
        """Open (or share) a feed of each wanted track of another node's session, and
        hold them while inside, so that :meth:`find` gives their sources to subscribe to.

        Yields the tracks refused for a reason other than "not found" (a node that
        cannot be reached, a cluster secret that is missing or wrong, the directory
        down) with the error to answer; a track found nowhere is simply not findable."""
        held: list[RemoteFeed] = []
        refused: dict[Key, SfuError] = {}

        async def hold(key: Key) -> None:
            try:
                feed = await self.open(app_id, *key)
            except SfuError as exc:
                if exc.status != 404:
                    refused[key] = exc
                return
            feed.holds += 1
            held.append(feed)

        try:
            async with asyncio.TaskGroup() as group:
                for key in dict.fromkeys(wanted):
                    group.create_task(hold(key))
            yield refused
        finally:
            for feed in held:
                feed.holds -= 1

    async def open(self, app_id: str, sid: str, name: str) -> RemoteFeed:
        """The feed of track ``name`` of session ``sid``: this node's open one, or a new
        one from the node the directory names. Raises SfuError (404 when not found)."""
        key = (sid, name)
        feed = self.feeds.get(key)
        if feed is None or feed.source.ended:
            task = self._opening.get(key)
            if task is None:
                task = asyncio.create_task(self._open(app_id, sid, name), name=f"dial-{sid}")
                self._opening[key] = task
                task.add_done_callback(self._opened)
            feed = await asyncio.shield(task)
        if feed.app_id != app_id:
            raise SfuError(404, "not_found", f"no track {name!r} in session {sid!r}")
        return feed

    async def _open(self, app_id: str, sid: str, name: str) -> RemoteFeed:
        node = await self._directory.locate(sid)
        if node is None or node == self.listing.here:
            raise SfuError(404, "not_found", f"no track {name!r} in session {sid!r}")
        channel = await self._dial(node, app_id, sid, name)
        source = TrackSource(sid, name, created=self._now())
        feed = RemoteFeed(app_id, node, source, channel, now=self._now, on_done=self._feed_done)
        source.on_idle = lambda _source: self._idle(feed)
        self.feeds[feed.key] = feed
        self.opened += 1
        feed.start()
        log.info("feed %s/%s from %s opened", sid, name, node)
        return feed

    def _opened(self, task: asyncio.Task[RemoteFeed]) -> None:
        for key, t in list(self._opening.items()):
            if t is task:
                del self._opening[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    # -- ending -------------------------------------------------------------------------

    def _idle(self, feed: RemoteFeed) -> None:
        """The feed's last subscriber left: end it, unless a request is about to
        subscribe (then :meth:`sweep` ends it if none does)."""
        if feed.holds == 0:
            self._stop(feed)

    def _stop(self, feed: RemoteFeed) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        self._ending.add(feed)
        feed.stop()

    def _feed_done(self, feed: RemoteFeed) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        self._ending.discard(feed)

    def sweep(self, now: float) -> None:
        """End feeds that nobody has subscribed to for ``idle_seconds``."""
        for feed in list(self.feeds.values()):
            if feed.holds or feed.source.subscribers:
                feed.idle_since = None
            elif feed.idle_since is None:
                feed.idle_since = now
            elif now - feed.idle_since >= self._idle_seconds:
                log.info("feed %s/%s: no subscribers, closing", *feed.key)
                self._stop(feed)

    async def close(self, *, within: float = 2.0) -> None:
        """End every feed and the directory loop; withdraw what is still listed."""
        dials = list(self._opening.values())
        for task in dials:
            task.cancel()
        if dials:
            await asyncio.wait(dials)
        for feed in list(self.feeds.values()):
            self._stop(feed)
        for feed in list(self._ending):
            await feed.wait()
        await self.listing.close(within)
