"""aiortc at the media server's edge: Opus packets in and out, never decoded on the way.

Stock aiortc decodes every received track in a thread and re-encodes it for every
sender. An SFU forwards instead, so this module gives it two packet paths:

- **out**: :class:`PacketTrack` is a ``MediaStreamTrack`` whose ``recv()`` returns
  pre-encoded ``av.Packet`` objects. ``RTCRtpSender`` packs those without encoding;
  this is aiortc's public API.
- **in**: :func:`tap_receiver` replaces one receiver's ``_handle_rtp_packet`` so each
  RTP packet's Opus payload goes straight to a callback: no jitter buffer, no decoder
  thread. The receiver's RTCP statistics are still fed, so receiver reports go out.
  This is the one hook into aiortc internals; :func:`check_aiortc` verifies what it
  relies on, and ``tests/test_webrtc_hook.py`` fails loudly when an aiortc upgrade
  breaks it. aiortc is pinned in ``pyproject.toml`` for that reason.

:func:`close_peer` closes a PeerConnection for good: when aiortc's own ``close`` fails
half way (it stops at a transceiver a bad description left without a transport), it
stops every remaining transport itself, reading the PeerConnection's transport sets
(also checked by :func:`check_aiortc`), so no ICE socket outlives the session.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import re
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket

#: The aiortc release the receive hook was written against.
AIORTC_VERSION = "1.16.0"
SAMPLE_RATE = 48000
SAMPLES_PER_PACKET = 960  # 20 ms at 48 kHz
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)

_STATS = "_RTCRtpReceiver__remote_streams"
_CODECS = "_RTCRtpReceiver__codecs"
_PC_TRANSPORTS = ("_RTCPeerConnection__dtlsTransports", "_RTCPeerConnection__iceTransports")

log = logging.getLogger("voxgate.webrtc")

#: Called with (Opus payload, RTP timestamp) for each packet a tapped receiver gets.
PacketSink = Callable[[bytes, int], None]


class AiortcIncompatible(RuntimeError):
    """The installed aiortc lacks what :func:`tap_receiver` relies on."""


def check_aiortc() -> None:
    """Raise :class:`AiortcIncompatible` unless the receive hook can work."""
    installed = version("aiortc")
    if installed != AIORTC_VERSION:
        raise AiortcIncompatible(
            f"voxgate's media server needs aiortc {AIORTC_VERSION}, found {installed}"
        )
    probe = RTCRtpReceiver.__init__
    names = probe.__code__.co_names
    for attr in ("_RTCRtpReceiver__remote_streams", "_RTCRtpReceiver__codecs"):
        if attr not in names:
            raise AiortcIncompatible(f"aiortc {installed}: RTCRtpReceiver has no {attr}")
    if not hasattr(RTCRtpReceiver, "_handle_rtp_packet"):
        raise AiortcIncompatible(f"aiortc {installed}: no RTCRtpReceiver._handle_rtp_packet")
    names = RTCPeerConnection.__init__.__code__.co_names
    for attr in _PC_TRANSPORTS:
        if attr not in names:
            raise AiortcIncompatible(f"aiortc {installed}: RTCPeerConnection has no {attr}")


def peer_connection() -> RTCPeerConnection:
    """A PeerConnection with no STUN servers: the server has only host candidates, and
    aiortc's default (a public STUN server) is unreachable offline."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def close_peer(pc: RTCPeerConnection) -> None:
    """Close ``pc`` and release every transport and socket it opened. Never raises.

    aiortc's ``close`` stops transceivers, then each transceiver's transports, in one
    pass that ends at the first failure; a transceiver that a BUNDLE group pointed at a
    missing mid has no transport, and the sockets of those after it stayed open for
    good. So when ``close`` fails, the failure is logged and every transport the
    PeerConnection still holds is stopped one by one."""
    try:
        await pc.close()
    except Exception:
        log.exception("aiortc could not close a PeerConnection; stopping its transports")
        await _stop_transports(pc)


async def _stop_transports(pc: RTCPeerConnection) -> None:
    """Stop what holds sockets and tasks: every DTLS transport, then every ICE
    transport (both idempotent), as ``close`` would have."""
    dtls, ice = (list(getattr(pc, name)) for name in _PC_TRANSPORTS)
    for transport in [*dtls, *ice]:
        try:
            await transport.stop()
        except Exception:
            log.exception("stopping %s failed", type(transport).__name__)
    pc.remove_all_listeners()


def tap_receiver(receiver: RTCRtpReceiver, sink: PacketSink) -> None:
    """Route the receiver's Opus packets to ``sink`` instead of its decoder.

    Call before media flows (right after ``setRemoteDescription``). Packets of any other
    codec are dropped. The receiver's decoder thread stays idle and stops with it.
    """
    stats: dict[int, StreamStatistics] = getattr(receiver, _STATS)
    codecs: dict[int, Any] = getattr(receiver, _CODECS)

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        codec = codecs.get(packet.payload_type)
        if codec is None or codec.mimeType.lower() != "audio/opus":
            return
        stream = stats.get(packet.ssrc)
        if stream is None:
            stream = stats[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        if packet.payload:
            sink(packet.payload, packet.timestamp)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


_EXTMAP = re.compile(r"^a=extmap:(\d+)(/\w+)? (\S+)(.*)$")


def align_header_extensions(offer: str, remote: str | None) -> str:
    """A server re-offer with the RTP header extension ids the peer chose before.

    aiortc's ``createOffer`` numbers header extensions its own way (``sdes:mid`` = 1,
    ``ssrc-audio-level`` = 2) on every m-line, also on m-lines the peer has already
    negotiated with its own numbers. Browsers refuse that ("RTP extension ID reassignment
    not supported"; in a BUNDLE all m-lines share one id space). So each ``a=extmap``
    of the offer takes the id the peer's last description gave the same URI; a URI the
    peer never used gets an id no one uses. aiortc adopts the ids of the answer, so
    both ends then agree.
    """
    if not remote:
        return offer
    ids: dict[str, str] = {}
    for line in remote.splitlines():
        if m := _EXTMAP.match(line):
            ids.setdefault(m.group(3), m.group(1))
    used = set(ids.values())
    lines = []
    for line in offer.split("\r\n"):
        if m := _EXTMAP.match(line):
            uri = m.group(3)
            if uri not in ids:
                ids[uri] = next(str(n) for n in range(1, 256) if str(n) not in used)
                used.add(ids[uri])
            line = f"a=extmap:{ids[uri]}{m.group(2) or ''} {uri}{m.group(4)}"
        lines.append(line)
    return "\r\n".join(lines)


class EncodedPacket:
    """What ``RTCRtpSender`` needs of a pre-encoded packet (``pts``, ``time_base``,
    ``bytes()``): lighter than building an ``av.Packet`` per subscriber per packet."""

    __slots__ = ("payload", "pts")
    time_base = TIME_BASE

    def __init__(self, payload: bytes, pts: int) -> None:
        self.payload = payload
        self.pts = pts

    def __bytes__(self) -> bytes:
        return self.payload


class PacketTrack(MediaStreamTrack):
    """An audio track fed with Opus packets; a sender forwards them as they are.

    :meth:`push` never blocks: a subscriber that falls more than ``backlog`` packets
    behind loses its oldest packets (counted in ``dropped``), not everyone's time.
    A deque and one waiter future instead of an ``asyncio.Queue``: this runs once per
    subscriber per packet.
    """

    kind = "audio"

    def __init__(self, *, backlog: int = 50) -> None:
        super().__init__()
        self._queue: collections.deque[tuple[bytes, int] | None] = collections.deque()
        self._backlog = backlog
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.sent = 0

    def _put(self, item: tuple[bytes, int] | None) -> None:
        q = self._queue
        if len(q) >= self._backlog:
            q.popleft()
            self.dropped += 1
        q.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def push(self, payload: bytes, timestamp: int) -> None:
        """Queue one Opus packet; ``timestamp`` in 48 kHz samples, any origin."""
        if self.readyState == "live":
            self._put((payload, timestamp))

    def end(self) -> None:
        """The source is gone: the sender stops after what is queued."""
        self._put(None)

    async def recv(self) -> EncodedPacket:  # type: ignore[override]
        q = self._queue
        while not q:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = q.popleft()
        if item is None or self.readyState != "live":
            self.stop()
            raise MediaStreamError
        self.sent += 1
        return EncodedPacket(item[0], item[1])
