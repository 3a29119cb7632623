"""Node-to-node feeds: one track of a session on one node, forwarded to another node.

Like mediasoup's pipe transports, a node that needs a track published on another node
opens one feed per (session, track) and fans it out to all of its own subscribers; the
Opus packets are forwarded as they are, never decoded.

Wire format (a WebSocket, subprotocol :data:`SUBPROTOCOL`): the publishing node sends
one binary frame per Opus packet, a 4-byte big-endian RTP timestamp (48 kHz units, any
origin) then the payload. The pulling node sends nothing. The publishing node closes
with 1000 ``track ended`` when the track ends; any other end (1001 going away, a dropped
connection) also ends the feed. The pulling node closes with 1000 when its last
subscriber leaves.

- :class:`FeedSender` is the publishing side: a subscriber of the local track holding
  at most ``backlog`` frames; when the peer node reads too slowly the oldest go first
  (counted in ``dropped``), so a slow node costs audio, never memory.
- :class:`RemoteFeed` is the pulling side: it reads frames from a channel and delivers
  them into a local :class:`~voxgate.core.sfu.tracks.TrackSource`, which its owner
  (:class:`voxgate.core.sfu.cluster.Cluster`) makes findable like a local track.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from collections.abc import Callable

from voxgate.channels import Channel, Closed
from voxgate.core.sfu.loops import surviving
from voxgate.core.sfu.tracks import TrackSource
from voxgate.errors import RemoteProtocolError

log = logging.getLogger("voxgate.sfu.feeds")

#: The WebSocket subprotocol of this wire format; another format gets another name.
SUBPROTOCOL = "voxgate.feed.v1"
#: The close reason the publishing node sends (code 1000) when the track ended.
TRACK_ENDED = "track ended"
_HEADER = struct.Struct(">I")


def encode_frame(timestamp: int, payload: bytes) -> bytes:
    """One feed frame: the RTP timestamp (mod 2**32), big-endian, then the payload."""
    return _HEADER.pack(timestamp & 0xFFFFFFFF) + payload


def decode_frame(frame: bytes) -> tuple[int, bytes]:
    """``(timestamp, payload)`` of a feed frame; raises RemoteProtocolError."""
    if len(frame) <= _HEADER.size:
        raise RemoteProtocolError(f"a {len(frame)}-byte feed frame has no payload")
    (timestamp,) = _HEADER.unpack_from(frame)
    return timestamp, frame[_HEADER.size :]


class FeedSender:
    """The publishing node's side of a feed: subscribe it to the track, then send what
    :meth:`next` gives until it gives ``None`` (the track ended)."""

    def __init__(self, *, backlog: int = 50) -> None:
        self._frames: collections.deque[bytes] = collections.deque()
        self._backlog = backlog
        self._ready = asyncio.Event()
        self._ended = False
        self.dropped = 0
        self.sent = 0

    # Subscriber
    def push(self, payload: bytes, timestamp: int) -> None:
        if self._ended:
            return
        if len(self._frames) >= self._backlog:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(encode_frame(timestamp, payload))
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    @property
    def ended(self) -> bool:
        return self._ended

    async def next(self) -> bytes | None:
        """The oldest frame waiting, ``None`` once the track has ended and all is sent."""
        while not self._frames:
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()
        self.sent += 1
        return self._frames.popleft()


class RemoteFeed:
    """The pulling node's side of a feed: frames from ``channel`` into ``source``.

    :meth:`start` begins reading. The feed ends when the publishing node closes it, when
    the connection drops, or at :meth:`stop`; then ``source`` ends (its subscribers see
    the track end, as for a local track), the channel is closed, and ``on_done`` is
    called once. Reading outlives a packet that fails: it is logged and skipped.
    """

    def __init__(
        self,
        app_id: str,
        node: str,
        source: TrackSource,
        channel: Channel,
        *,
        now: Callable[[], float],
        on_done: Callable[[RemoteFeed], None],
    ) -> None:
        self.app_id = app_id
        #: The URL of the node that publishes the track (logs only: never sent to clients).
        self.node = node
        self.source = source
        #: Requests between finding this feed and subscribing to it; it stays while any.
        self.holds = 0
        #: Since when no request has held it and nobody subscribed (for the sweep).
        self.idle_since: float | None = None
        self.packets = 0
        self.bad_frames = 0
        #: How the publishing node ended the feed (``None`` while open, or if we did).
        self.ended_by: Closed | None = None
        self._channel = channel
        self._now = now
        self._on_done = on_done
        self._task: asyncio.Task[None] | None = None
        self._finished = False

    @property
    def key(self) -> tuple[str, str]:
        return self.source.session_id, self.source.name

    def start(self) -> None:
        sid, name = self.key
        self._task = asyncio.create_task(self._run(), name=f"feed-{sid}-{name}")

    def stop(self) -> None:
        """End the feed (its last subscriber left); :meth:`wait` for it to have ended."""
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        """Until the feed has ended and its channel is closed (never raises)."""
        if self._task is not None:
            await asyncio.wait([self._task])
        await self._finish()  # also when stopped before it ever ran

    async def _run(self) -> None:
        try:
            await self._read()
        except Exception:  # a channel that fails is a feed that ended: say why, end it
            log.exception("feed %s/%s from %s failed", *self.key, self.node)
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.source.end()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._channel.close(1000, "unsubscribed")
        self._on_done(self)

    async def _read(self) -> None:
        sid, name = self.key
        while True:
            msg = await self._channel.receive()
            if isinstance(msg, Closed):
                self.ended_by = msg
                ended = msg.clean and msg.code == 1000
                level = logging.INFO if ended else logging.WARNING
                why = msg.reason or ("" if msg.clean else "connection lost")
                log.log(
                    level, "feed %s/%s from %s ended (%d %s)", sid, name, self.node, msg.code, why
                )
                return
            try:
                timestamp, payload = decode_frame(msg if isinstance(msg, bytes) else b"")
            except RemoteProtocolError as exc:
                self.bad_frames += 1
                if self.bad_frames == 1:
                    log.warning("feed %s/%s from %s: %s; skipped", sid, name, self.node, exc)
                continue
            self.packets += 1
            with surviving(log, "feed %s/%s: a %d-byte packet", sid, name, len(payload)):
                self.source.deliver(payload, timestamp, self._now())
