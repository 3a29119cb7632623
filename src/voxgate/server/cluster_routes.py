"""Node-to-node: the feed endpoint of the media server, and this node's cluster wiring.

``GET /v1/cluster/feeds/{appId}/{sessionId}/{trackName}`` is a WebSocket (subprotocol
``voxgate.feed.v1``, wire format in :mod:`voxgate.core.sfu.feeds`) that another node
opens to pull a track published here: one binary frame per Opus packet, as it came in,
until the track ends (close 1000 ``track ended``). It takes ``Authorization: Bearer
<cluster secret>``, the ``[cluster] secret_env`` every node shares:

- no secret configured on this node: 403 ``cluster_secret_unset``;
- no token, or a wrong one (compared in constant time): 401 ``unauthorized``;
- no such track in a session of this node (of that app): 404 ``not_found``.

A pulling node that reads too slowly loses the oldest packets (counted), never makes
this node buffer more than ``FEED_BACKLOG`` packets for it.

:func:`add_routes` also joins the media server to the cluster at startup: its sessions
are listed in the state backend's directory (``sfu:session:{sid}`` → this node's URL)
and tracks of other nodes' sessions are pulled with :class:`FeedDialer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from voxgate.core.sfu.cluster import Cluster
from voxgate.core.sfu.feeds import SUBPROTOCOL, TRACK_ENDED, FeedSender
from voxgate.core.sfu.tracks import TrackSource
from voxgate.errors import SfuError, StateUnavailable
from voxgate.protocols.relay.auth import bearer, token_matches
from voxgate.server.services import SERVICES, Services
from voxgate.server.sfu_service import sfu_error
from voxgate.settings import Settings
from voxgate.state import StateBackend
from voxgate.transports.feeds import FeedDialer

log = logging.getLogger("voxgate.sfu.cluster")

#: Packets a feed holds for a slow pulling node (one second of 20 ms packets).
FEED_BACKLOG = 50
#: Seconds between pings on a feed; a node that stops answering ends its feeds.
HEARTBEAT = 10.0
_WILDCARD = ("0.0.0.0", "::", "")


class StateDirectory:
    """The media server's :class:`~voxgate.core.sfu.cluster.Directory` in the state
    backend: ``sfu:session:{sid}`` → the URL of the node holding the session, a lease
    of that node (so a node that died leaves no entries behind)."""

    def __init__(self, state: StateBackend) -> None:
        self._state = state

    @staticmethod
    def key(sid: str) -> str:
        return f"sfu:session:{sid}"

    async def publish(self, sid: str, node: str) -> None:
        await self._state.put_location(self.key(sid), node)

    async def withdraw(self, sid: str) -> None:
        await self._state.remove_location(self.key(sid))

    async def locate(self, sid: str) -> str | None:
        try:
            return await self._state.get_location(self.key(sid))
        except StateUnavailable as exc:
            raise SfuError(
                503, "state_unavailable", "the directory of sessions cannot be read now"
            ) from exc


def node_url(settings: Settings) -> str | None:
    """The URL other nodes reach this one at: ``server.advertise_url``, else
    ``http(s)://HOST:PORT`` of the configured address; ``None`` when that cannot say
    (port 0 or a wildcard host: the first request tells, see ``sfu_routes``)."""
    server = settings.server
    if server.advertise_url:
        return server.advertise_url.rstrip("/")
    if server.port == 0 or server.host in _WILDCARD:
        return None
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{'https' if server.tls_cert else 'http'}://{host}:{server.port}"


@dataclass(eq=False)
class ClusterNode:
    """The server's cluster parts: the dialer of this node's feeds (the feeds themselves
    are the media server's), and the feeds it serves to other nodes."""

    dialer: FeedDialer
    #: The feeds other nodes pull from this one, now.
    serving: set[FeedSender] = field(default_factory=set)
    #: Feeds served so far, and the packets they dropped for slow pulling nodes.
    served: int = 0
    dropped: int = 0


CLUSTER = web.AppKey("voxgate_cluster", ClusterNode)


def _local_track(s: Services, app_id: str, sid: str, name: str) -> TrackSource | None:
    """Only a track published here: a feed is never passed on from a third node."""
    session = s.media.sessions.get(sid)
    if session is None or session.closed or session.app_id != app_id:
        return None
    return session.find_local(name)


async def feed(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    node = request.app[CLUSTER]
    expected = s.settings.cluster.secret.value
    if not expected:
        return sfu_error(403, "cluster_secret_unset", "this node has no cluster secret set")
    presented = bearer(request.headers.get("Authorization"))
    if not presented or not token_matches(presented, expected):
        return sfu_error(401, "unauthorized", "missing or wrong cluster secret")
    app_id, sid, name = (request.match_info[k] for k in ("app", "sid", "track"))
    source = _local_track(s, app_id, sid, name)
    if source is None:
        return sfu_error(404, "not_found", f"no track {name!r} in session {sid!r} here")
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,), heartbeat=HEARTBEAT, max_msg_size=4096, timeout=2.0
    )
    await ws.prepare(request)
    sender = FeedSender(backlog=FEED_BACKLOG)
    source.subscribe(sender)
    node.serving.add(sender)
    node.served += 1
    pump = asyncio.create_task(_send(ws, sender), name=f"feed-out-{sid}")
    try:
        async for msg in ws:  # the pulling node sends nothing: this notices it leave
            if msg.type is not WSMsgType.BINARY and msg.type is not WSMsgType.TEXT:
                break
    finally:
        source.unsubscribe(sender)
        node.serving.discard(sender)
        if not sender.ended:  # the pulling node left first
            pump.cancel()
        await asyncio.wait([pump])
        node.dropped += sender.dropped
        if sender.dropped:
            log.warning("feed %s/%s: dropped %d packets for a slow node", sid, name, sender.dropped)
    return ws


async def _send(ws: web.WebSocketResponse, sender: FeedSender) -> None:
    """The track's frames to the pulling node, then the close that says it ended."""
    with contextlib.suppress(ConnectionError, RuntimeError):  # the node went away
        while (frame := await sender.next()) is not None:
            await ws.send_bytes(frame)
        await ws.close(code=1000, message=TRACK_ENDED.encode())


async def _join(app: web.Application) -> None:
    s = app[SERVICES]
    cluster = Cluster(
        StateDirectory(s.state),
        app[CLUSTER].dialer,
        now=s.clock.monotonic,
        here=node_url(s.settings),
    )
    s.media.join(cluster)  # the media server owns it from now on, and closes it


async def _close(app: web.Application) -> None:
    # the media server closed the cluster's feeds when it closed (on shutdown)
    await app[CLUSTER].dialer.close()


def add_routes(app: web.Application) -> None:
    secret = app[SERVICES].settings.cluster.secret.value
    app[CLUSTER] = ClusterNode(FeedDialer(secret=secret, heartbeat=HEARTBEAT))
    app.router.add_get("/v1/cluster/feeds/{app}/{sid}/{track:.+}", feed)
    app.on_startup.append(_join)
    app.on_cleanup.append(_close)
