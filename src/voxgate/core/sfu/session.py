"""One media-server session: a WebRTC PeerConnection and the tracks it pushes and pulls.

Negotiation follows spec/sfu.md: pushing local tracks answers the client's offer;
pulling remote tracks makes a server offer that the client answers with
``PUT /renegotiate``. Operations on one session run one at a time (a lock), since
each changes the PeerConnection's signalling state.

A client's description is checked (:func:`voxgate.core.sfu.sdp.check_sdp`) before
aiortc sees it, so a bad one is refused with a 400 that names the problem and leaves
the session as it was. Should aiortc still fail to apply one, or to answer it, the
PeerConnection may be half-built: the session is closed at once (every transport and
socket released) and the request answers 400; the media server drops it from its table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from voxgate.core.sfu.sdp import MAX_SDP, PARSER_ERRORS, Section, check_sdp, sections_of
from voxgate.core.sfu.tracks import PcmPublisher, TrackSource
from voxgate.errors import SfuError
from voxgate.webrtc import (
    PacketTrack,
    align_header_extensions,
    close_peer,
    peer_connection,
    tap_receiver,
)

__all__ = ["MAX_SDP", "SfuSession", "TrackRequest", "TrackResult", "check_sdp"]

log = logging.getLogger("voxgate.sfu")

#: What aiortc raises for a description it cannot use: its own errors, and what its
#: loose parser lets through to the code behind it. Caught only around the calls that
#: apply a client's description or answer it, after :func:`check_sdp` accepted it.
SDP_ERRORS = (
    *PARSER_ERRORS,
    InvalidAccessError,
    InvalidStateError,
    OperationError,
    InternalError,
)

#: The signalling states in which the PeerConnection takes a client's offer or answer.
_EXPECTED = {"offer": ("stable",), "answer": ("have-local-offer",)}


@dataclass(frozen=True)
class TrackRequest:
    location: str
    track_name: str
    mid: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class TrackResult:
    track_name: str
    mid: str | None = None
    session_id: str | None = None
    error_code: str | None = None
    error_description: str | None = None

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trackName": self.track_name}
        if self.mid is not None:
            out["mid"] = self.mid
        if self.session_id is not None:
            out["sessionId"] = self.session_id
        if self.error_code is not None:
            out["errorCode"] = self.error_code
            out["errorDescription"] = self.error_description
        return out


@dataclass(eq=False)
class LocalTrack:
    mid: str
    source: TrackSource


@dataclass(eq=False)
class RemoteTrack:
    mid: str
    source: TrackSource
    track: PacketTrack
    transceiver: RTCRtpTransceiver


#: Finds a published track by (session id, track name), or ``None``.
TrackLookup = Callable[[str, str], TrackSource | None]


class SfuSession:
    def __init__(
        self,
        session_id: str,
        app_id: str,
        *,
        now: Callable[[], float],
        lookup: TrackLookup,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self.id = session_id
        self.app_id = app_id
        self._now = now
        self._lookup = lookup
        #: Called once with the session's id when it closes (the directory forgets it).
        self._on_close = on_close
        self._pc: RTCPeerConnection | None = None
        self.local: dict[str, LocalTrack] = {}  # by mid
        self.remote: dict[str, RemoteTrack] = {}  # by mid
        self.created = now()
        #: When the PeerConnection last lost connectivity (``None`` while it has it).
        self.disconnected_since: float | None = None
        self.closed = False
        self._lock = asyncio.Lock()
        self._tapped: set[int] = set()
        #: The m-lines described so far (by the last offer, either side's).
        self._sections: list[Section] = []

    # -- published tracks -------------------------------------------------------------

    def find_local(self, name: str) -> TrackSource | None:
        for t in self.local.values():
            if t.source.name == name and not t.source.ended:
                return t.source
        return None

    def _new_source(self, name: str, mid: str) -> TrackSource:
        source = TrackSource(self.id, name, created=self._now())
        source.on_end = lambda s: self._forget_local(mid, s)
        self.local[mid] = LocalTrack(mid, source)
        return source

    def _forget_local(self, mid: str, source: TrackSource) -> None:
        if (t := self.local.get(mid)) is not None and t.source is source:
            del self.local[mid]

    def publish_pcm(self, name: str) -> PcmPublisher:
        """A local track fed with PCM (an ingest adapter's), encoded once for all."""
        if self.find_local(name) is not None:
            raise SfuError(400, "repeated_local_track_error", f"track {name!r} exists")
        source = self._new_source(name, f"pcm:{name}")
        return PcmPublisher(source, self._now)

    # -- negotiation ------------------------------------------------------------------

    @property
    def pc(self) -> RTCPeerConnection:
        if self._pc is None:
            self._pc = pc = peer_connection()
            pc.on("connectionstatechange", self._on_state)
        return self._pc

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s: connection %s (ICE %s)", self.id, state, self.pc.iceConnectionState)
        if state == "connected":
            self.disconnected_since = None
        elif state in ("disconnected", "failed", "closed") and self.disconnected_since is None:
            self.disconnected_since = self._now()

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc is not None else "new"

    async def _apply_remote(self, sdp: str, kind: str) -> None:
        """Check and apply a client's description. Raises SfuError 400; when aiortc
        fails half way through, the session is closed first."""
        state = self._pc.signalingState if self._pc is not None else "stable"
        if state not in _EXPECTED[kind]:
            why = f"an {kind} is not expected now (signalling state {state})"
            raise SfuError(400, "invalid_session_description", why)
        sections = check_sdp(sdp, kind, self._sections)
        pc = self.pc  # made only for a description worth applying
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except SDP_ERRORS as exc:
            await self._failed(f"the {kind} cannot be applied", exc)
        self._sections = sections
        for transceiver in pc.getTransceivers():
            receiver = transceiver.receiver
            if id(receiver) not in self._tapped and transceiver.mid is not None:
                self._tapped.add(id(receiver))
                tap_receiver(receiver, self._sink(transceiver.mid))

    async def _failed(self, what: str, exc: Exception) -> NoReturn:
        """aiortc refused a description :func:`check_sdp` accepted: the PeerConnection
        may be half-built, so close the session, then refuse the request."""
        log.warning("session %s: %s (%s: %s); closing it", self.id, what, type(exc).__name__, exc)
        await self.close()
        why = f"{what}: {exc or type(exc).__name__}; the session is closed"
        raise SfuError(400, "invalid_session_description", why) from exc

    def _sink(self, mid: str) -> Callable[[bytes, int], None]:
        def deliver(payload: bytes, timestamp: int) -> None:
            if (t := self.local.get(mid)) is not None:
                t.source.deliver(payload, timestamp, self._now())

        return deliver

    async def _local_description(self, make_offer: bool) -> str:
        pc = self.pc
        if not make_offer:
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except SDP_ERRORS as exc:
                await self._failed("the server cannot answer this offer", exc)
            return str(pc.localDescription.sdp)
        remote = pc.remoteDescription.sdp if pc.remoteDescription is not None else None
        await pc.setLocalDescription(await pc.createOffer())
        sdp = align_header_extensions(str(pc.localDescription.sdp), remote)
        self._sections = sections_of(sdp)
        return sdp

    async def answer(self, offer: str) -> str:
        """Apply a client offer (new session, or one that only changes directions)."""
        async with self._lock:
            self._check_open()
            await self._apply_remote(offer, "offer")
            return await self._local_description(make_offer=False)

    async def push(
        self, offer: str, tracks: list[TrackRequest], auto_discover: bool
    ) -> tuple[str, list[TrackResult]]:
        """Publish the offer's sending m-lines named in ``tracks``; returns the answer."""
        async with self._lock:
            self._check_open()
            await self._apply_remote(offer, "offer")
            by_mid = {t.mid: t for t in self.pc.getTransceivers() if t.mid is not None}
            requests = list(tracks)
            if auto_discover:
                named = {r.mid for r in requests}
                for mid, tr in by_mid.items():
                    if mid not in named and mid not in self.local and _sends(tr):
                        requests.append(TrackRequest("local", tr.receiver.track.id, mid))
            results = [self._publish(r, by_mid) for r in requests]
            answer = await self._local_description(make_offer=False)
            return answer, results

    def _publish(self, req: TrackRequest, by_mid: dict[str, RTCRtpTransceiver]) -> TrackResult:
        name = req.track_name
        tr = by_mid.get(req.mid or "")
        if tr is None or not _sends(tr):
            why = f"the offer has no sending m-line with mid {req.mid!r}"
            return TrackResult(name, req.mid, None, "not_found_track_error", why)
        if self.find_local(name) is not None:
            why = f"track {name!r} is already published by this session"
            return TrackResult(name, req.mid, None, "repeated_local_track_error", why)
        if tr.kind != "audio":
            why = "voxgate forwards audio tracks only"
            return TrackResult(name, req.mid, None, "not_found_track_error", why)
        mid = str(tr.mid)
        self._new_source(name, mid)
        return TrackResult(name, mid)

    async def pull(
        self, tracks: list[TrackRequest], refused: Mapping[tuple[str, str], SfuError] | None = None
    ) -> tuple[str | None, list[TrackResult]]:
        """Subscribe to other sessions' tracks; returns a server offer (or ``None`` when
        no track could be pulled) for the client to answer via :meth:`renegotiate`.

        ``refused``: tracks that could not be reached on another node, by (session id,
        track name), with the error their result carries."""
        async with self._lock:
            self._check_open()
            pending: list[tuple[TrackRequest, RemoteTrack | TrackResult]] = []
            for req in tracks:
                error = (refused or {}).get((req.session_id or "", req.track_name))
                if error is not None:
                    result = TrackResult(
                        req.track_name, req.mid, req.session_id, error.code, error.public_message
                    )
                    pending.append((req, result))
                else:
                    pending.append((req, self._subscribe(req)))
            if not any(isinstance(p, RemoteTrack) for _, p in pending):
                return None, [p for _, p in pending if isinstance(p, TrackResult)]
            offer = await self._local_description(make_offer=True)
            results = []
            for req, p in pending:
                if isinstance(p, TrackResult):
                    results.append(p)
                    continue
                p.mid = str(p.transceiver.mid)
                self.remote[p.mid] = p
                results.append(TrackResult(req.track_name, p.mid, req.session_id))
            return offer, results

    def _subscribe(self, req: TrackRequest) -> RemoteTrack | TrackResult:
        source = self._lookup(req.session_id or "", req.track_name)
        if source is None:
            why = f"no track {req.track_name!r} in session {req.session_id!r}"
            return TrackResult(
                req.track_name, req.mid, req.session_id, "not_found_track_error", why
            )
        track = PacketTrack()
        reuse = self._reusable(req.mid)
        if reuse is not None:
            reuse.source.unsubscribe(reuse.track)
            reuse.track.stop()
            reuse.transceiver.sender.replaceTrack(track)
            del self.remote[reuse.mid]
            transceiver = reuse.transceiver
        else:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
        source.subscribe(track)
        return RemoteTrack("", source, track, transceiver)

    def _reusable(self, mid: str | None) -> RemoteTrack | None:
        if not mid or not mid.startswith("#"):
            return None
        name = mid[1:]
        return next((t for t in self.remote.values() if t.source.name == name), None)

    async def renegotiate(self, answer: str) -> None:
        async with self._lock:
            self._check_open()
            if self._pc is None or self._pc.signalingState != "have-local-offer":
                raise SfuError(
                    400, "invalid_session_description", "no server offer is waiting for an answer"
                )
            await self._apply_remote(answer, "answer")

    async def close_tracks(
        self, mids: list[str], offer: str | None
    ) -> tuple[str | None, list[dict[str, Any]]]:
        async with self._lock:
            self._check_open()
            results: list[dict[str, Any]] = []
            for mid in mids:
                if (lt := self.local.get(mid)) is not None:
                    lt.source.end()
                    results.append({"mid": mid})
                elif (rt := self.remote.pop(mid, None)) is not None:
                    rt.source.unsubscribe(rt.track)
                    rt.track.end()
                    rt.transceiver.direction = "inactive"
                    results.append({"mid": mid})
                else:
                    why = f"no open track with mid {mid!r}"
                    results.append(
                        {"mid": mid, "errorCode": "close_track_error", "errorDescription": why}
                    )
            answer = None
            if offer is not None:
                await self._apply_remote(offer, "offer")
                answer = await self._local_description(make_offer=False)
            return answer, results

    # -- status and end ---------------------------------------------------------------

    def status(self, stale_after: float) -> list[dict[str, Any]]:
        now = self._now()
        out: list[dict[str, Any]] = []
        for lt in self.local.values():
            s = lt.source
            live = not s.ended and s.packets > 0 and now - s.last_packet < stale_after
            out.append(
                {
                    "location": "local",
                    "mid": lt.mid,
                    "trackName": s.name,
                    "status": "active" if live else "inactive",
                }
            )
        for rt in self.remote.values():
            s = rt.source
            live = not s.ended and now - s.last_packet < stale_after
            out.append(
                {
                    "location": "remote",
                    "mid": rt.mid,
                    "trackName": s.name,
                    "sessionId": s.session_id,
                    "status": "active" if live else "inactive",
                }
            )
        return out

    def _check_open(self) -> None:
        if self.closed:
            raise SfuError(400, "session_error", f"session {self.id} is closed")

    async def close(self) -> None:
        """End every published track and subscription, then the PeerConnection."""
        if self.closed:
            return
        self.closed = True
        if self._on_close is not None:
            self._on_close(self.id)
        try:
            for lt in list(self.local.values()):
                lt.source.end()
            for rt in self.remote.values():
                rt.source.unsubscribe(rt.track)
                rt.track.end()
            self.remote.clear()
        finally:  # whatever a subscriber did, the PeerConnection and its sockets go
            if self._pc is not None:
                await close_peer(self._pc)


def _sends(tr: RTCRtpTransceiver) -> bool:
    """Whether the client sends on this m-line (the server's side receives)."""
    return tr.direction in ("recvonly", "sendrecv") and not tr.stopped
