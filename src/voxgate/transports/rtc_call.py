"""The WebRTC edge of an OpenAI Realtime call (``POST /v1/realtime/calls``).

A browser offers a PeerConnection with its microphone (Opus), an audio m-line to hear
the agent on, and usually a data channel ``oai-events``. :class:`CallPeer` is the
server's side of that connection:

- **in**: the microphone's Opus packets are tapped (:func:`voxgate.webrtc.tap_receiver`:
  no jitter buffer, no decoder thread), decoded on the loop (about 0.05 ms a packet) and
  handed on as 48 kHz mono PCM16, gaps in the RTP clock filled with silence so the
  audio clock keeps time with the caller's.
- **out**: :class:`Playout` is the session's :class:`~voxgate.core.realtime.ports.AudioSink`.
  Its track paces itself on the loop clock, one Opus packet every 20 ms (silence when
  nothing is queued), and counts what it has actually handed to the RTP sender, so
  ``played_ms`` is what the caller heard, not what was written.
- **events**: text messages both ways on ``oai-events``; what is sent before the channel
  opens waits (at most :data:`MAX_PENDING_EVENTS`) and goes out in order when it opens.

The owner makes a :class:`CallPeer` with its callbacks, awaits :meth:`CallPeer.answer`
with the client's offer (an :class:`~voxgate.errors.SfuError` 400 refuses it, and leaves
nothing open), returns the answer to the client, and awaits :meth:`CallPeer.close` when
the call ends, whoever ended it. Callbacks are synchronous and run on the loop inside
aiortc's tasks: they must not block, and an exception they raise is logged, not raised.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import NoReturn

import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError

from voxgate.core.realtime.playout import (
    MONO_FRAME_BYTES,
    Pacer,
    Playout,
    PlayoutEvent,
    ignore_playout,
)
from voxgate.core.sfu.loops import surviving
from voxgate.core.sfu.sdp import check_sdp
from voxgate.core.sfu.session import SDP_ERRORS
from voxgate.errors import SfuError
from voxgate.opus import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder, OpusEncoder
from voxgate.webrtc import EncodedPacket, close_peer, peer_connection, tap_receiver

__all__ = ["EVENTS_LABEL", "MAX_PENDING_EVENTS", "CallPeer", "Playout"]

log = logging.getLogger("voxgate.rtc_call")

#: The data channel that carries the Realtime events.
EVENTS_LABEL = "oai-events"
#: Events :meth:`CallPeer.send` keeps while the channel is not open yet.
MAX_PENDING_EVENTS = 1024
#: Silent frames encoded after audio (the encoder settles to silence); later ones reuse
#: the last of them.
QUIET_ENCODED = 3
#: The longest RTP gap (lost packets, DTX) that incoming audio is filled across.
MAX_GAP_SAMPLES = SAMPLE_RATE

_SILENT_STEREO = bytes(FRAME_BYTES)


class _VoiceTrack(MediaStreamTrack):
    """The outgoing track: one Opus packet of the playout every 20 ms, on a fixed schedule
    from its first ``recv()`` (the loop clock); silence while nothing is queued."""

    kind = "audio"

    def __init__(self, playout: Playout) -> None:
        super().__init__()
        self._playout = playout
        self._encoder = OpusEncoder()
        self._quiet = 0
        self._silent: bytes | None = None
        self._pacer = Pacer(playout)

    async def recv(self) -> EncodedPacket:  # type: ignore[override]
        """The next packet, when the :class:`Pacer` says it is due."""
        while True:
            if self._playout.stopped or self.readyState != "live":
                raise MediaStreamError
            frame, slot = await self._pacer.next()
            if self._playout.stopped or self.readyState != "live":
                raise MediaStreamError
            payload = self._encode(frame)
            if payload:  # the encoder may hold a first frame back; its slot stays empty
                return EncodedPacket(payload, slot * FRAME_SAMPLES)

    def _encode(self, mono: bytes | None) -> bytes:
        """One Opus packet for 20 ms of mono PCM (stereo on the wire) or silence."""
        if mono is None:
            self._quiet += 1
            if self._quiet > QUIET_ENCODED and self._silent is not None:
                return self._silent
            pcm = _SILENT_STEREO
        else:
            self._quiet = 0
            samples = np.frombuffer(mono.ljust(MONO_FRAME_BYTES, b"\0"), dtype=np.int16)
            pcm = np.repeat(samples, 2).tobytes()
        packets = self._encoder.encode(pcm)
        packet = packets[-1] if packets else b""
        if mono is None and self._quiet == QUIET_ENCODED and packet:
            self._silent = packet
        return packet


class CallPeer:
    """The server's PeerConnection of one WebRTC Realtime call.

    Construct with the callbacks (nothing starts), then :meth:`answer` the offer once.
    ``on_audio(pcm)`` gets the caller's microphone as 48 kHz mono PCM16, one packet's
    worth (usually 20 ms) a call. ``on_message(text)`` gets each text message of the
    ``oai-events`` channel (binary ones are dropped). ``on_closed()`` is called once when
    the connection ends without :meth:`close` (the caller hung up, ICE or DTLS failed,
    the events channel closed): the playout has then stopped, and the owner must still
    await :meth:`close`. ``on_started``/``on_stopped``/``on_cleared`` are
    :attr:`playout`'s (see :class:`Playout`).
    """

    def __init__(
        self,
        *,
        on_audio: Callable[[bytes], None],
        on_message: Callable[[str], None],
        on_closed: Callable[[], None],
        on_started: PlayoutEvent = ignore_playout,
        on_stopped: PlayoutEvent = ignore_playout,
        on_cleared: PlayoutEvent = ignore_playout,
    ) -> None:
        self._on_audio = on_audio
        self._on_message = on_message
        self._on_closed = on_closed
        self.playout = Playout(on_started=on_started, on_stopped=on_stopped, on_cleared=on_cleared)
        self._track = _VoiceTrack(self.playout)
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._carries_events = True
        self._pending: collections.deque[str] = collections.deque()
        self._overflowed = False
        self._decoder = OpusDecoder()
        self._next_ts: int | None = None  # the RTP timestamp the next mic packet should have
        self._ended = False  # on_closed was called, or close() was
        self._closing: asyncio.Event | None = None

    # -- negotiation ------------------------------------------------------------------

    async def answer(self, offer: str) -> str:
        """Apply the client's offer and return the answer (ICE candidates included).

        The offer needs an audio m-line the client receives on (``sendrecv`` or
        ``recvonly``: the agent's voice); the first audio m-line the client sends on is
        the microphone; a data channel is optional (without one, events are not
        carried). Raises :class:`SfuError` 400 ``invalid_session_description`` naming
        the problem; when aiortc fails, the peer is closed first, so the owner need not
        :meth:`close` it (doing so is harmless)."""
        if self._closing is not None:
            raise SfuError(400, "session_error", "this call is closed")
        if self._pc is not None:
            raise SfuError(400, "session_error", "this call has already been answered")
        check_sdp(offer, "offer")
        mic, voice = _choose_media(offer)
        self._pc = pc = peer_connection()
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("datachannel", self._on_datachannel)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            self._attach(pc, mic, voice)
            await pc.setLocalDescription(await pc.createAnswer())
        except SDP_ERRORS as exc:
            await self._failed(exc)
        self._carries_events = pc.sctp is not None
        if not self._carries_events:
            self._pending.clear()
        return str(pc.localDescription.sdp)

    def _attach(self, pc: RTCPeerConnection, mic: str | None, voice: str) -> None:
        """Tap the microphone, send the voice; other audio m-lines are made inactive."""
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "audio":
                continue
            if transceiver.mid == voice:
                transceiver.sender.replaceTrack(self._track)
                transceiver.direction = "sendrecv"  # the answer narrows it to the offer's
            elif transceiver.mid != mic:
                transceiver.direction = "inactive"
            sink = self._on_packet if transceiver.mid == mic else _drop
            tap_receiver(transceiver.receiver, sink)  # never a decoder thread

    async def _failed(self, exc: Exception) -> NoReturn:
        if self._closing is not None:
            raise SfuError(400, "session_error", "the call was closed while answering") from exc
        log.warning("aiortc cannot answer an offer (%s: %s); closing", type(exc).__name__, exc)
        await self.close()
        why = f"the offer cannot be applied: {exc or type(exc).__name__}"
        raise SfuError(400, "invalid_session_description", why) from exc

    # -- events -----------------------------------------------------------------------

    @property
    def events_open(self) -> bool:
        """Whether the ``oai-events`` channel is open (sends go straight out)."""
        return self._channel is not None and self._channel.readyState == "open"

    def send(self, text: str) -> None:
        """Send one event. Before the channel opens it waits, with at most
        :data:`MAX_PENDING_EVENTS` others (the oldest are dropped); after the call ended,
        or on a call without a data channel, it is dropped. Never blocks."""
        if self._ended or not self._carries_events:
            return
        channel = self._channel
        if channel is not None and channel.readyState in ("closing", "closed"):
            return
        if channel is not None and channel.readyState == "open":
            self._pending.append(text)
            self._flush()
            return
        if len(self._pending) >= MAX_PENDING_EVENTS:
            self._pending.popleft()
            if not self._overflowed:
                self._overflowed = True
                log.warning(
                    "over %d events wait for the data channel; dropping the oldest",
                    MAX_PENDING_EVENTS,
                )
        self._pending.append(text)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL or self._channel is not None:
            log.info("closing data channel %r: a call carries one %r", channel.label, EVENTS_LABEL)
            channel.close()
            return
        self._channel = channel
        channel.on("message", self._on_channel_message)
        channel.on("open", self._flush)
        channel.on("close", self._on_channel_close)
        if channel.readyState == "open":  # a channel the client made arrives open
            self._flush()

    def _flush(self) -> None:
        channel = self._channel
        while self._pending and channel is not None and channel.readyState == "open":
            channel.send(self._pending.popleft())
        self._overflowed = False

    def _on_channel_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            log.info("dropped a binary message on %r (%d bytes)", EVENTS_LABEL, len(message))
            return
        with surviving(log, "on_message"):
            self._on_message(message)

    def _on_channel_close(self) -> None:
        self._end("the events channel closed")

    # -- media and connection ---------------------------------------------------------

    def _on_packet(self, payload: bytes, timestamp: int) -> None:
        """One microphone packet: decode, fill a gap before it, down to mono, hand on."""
        if self._ended:
            return
        stereo = self._decoder.decode(payload)
        if not stereo:
            return
        samples = np.frombuffer(stereo, dtype=np.int16).reshape(-1, 2)
        gap = 0
        if self._next_ts is not None:
            gap = (timestamp - self._next_ts) % 2**32
            if gap >= 2**31:  # late (reordered or repeated): its time has passed
                return
            if gap > MAX_GAP_SAMPLES:
                gap = 0  # a new stream or a long pause: no point in filling it
        self._next_ts = (timestamp + len(samples)) % 2**32
        mono = (samples.astype(np.int32).sum(axis=1) // 2).astype(np.int16).tobytes()
        with surviving(log, "on_audio"):
            self._on_audio(bytes(gap * 2) + mono if gap else mono)

    def _on_connection_state(self) -> None:
        pc = self._pc
        if pc is not None and pc.connectionState in ("failed", "closed"):
            self._end(f"the connection is {pc.connectionState}")

    def _end(self, why: str) -> None:
        if self._ended:
            return
        self._ended = True
        log.info("call ended: %s", why)
        self.playout.stop()
        self._track.stop()
        self._pending.clear()
        with surviving(log, "on_closed"):
            self._on_closed()

    async def close(self) -> None:
        """Stop the playout and close the PeerConnection with every socket it holds.
        Idempotent; a second call waits for the first. ``on_closed`` is not called."""
        if self._closing is not None:
            await self._closing.wait()
            return
        self._closing = closing = asyncio.Event()
        self._ended = True
        try:
            self.playout.stop()
            self._track.stop()
            self._pending.clear()
            if self._pc is not None:
                await close_peer(self._pc)
        finally:
            closing.set()


def _choose_media(offer: str) -> tuple[str | None, str]:
    """The mids of the microphone (``None``: the client sends no audio) and of the
    agent's voice, from an offer :func:`check_sdp` accepted. Raises :class:`SfuError`."""
    media = aiortc_sdp.SessionDescription.parse(offer).media
    if any(m.kind == "video" for m in media):
        raise SfuError(400, "invalid_session_description", "the offer has video: a call is audio")
    audio = [m for m in media if m.kind == "audio" and m.port != 0]
    if not audio:
        raise SfuError(400, "invalid_session_description", "the offer has no audio m-line")
    mic = next((m.rtp.muxId for m in audio if m.direction in ("sendrecv", "sendonly")), None)
    voice = next((m.rtp.muxId for m in audio if m.direction in ("sendrecv", "recvonly")), None)
    if voice is None:
        why = "the offer has no audio m-line to hear the agent on (sendrecv or recvonly)"
        raise SfuError(400, "invalid_session_description", why)
    return mic, str(voice)


def _drop(payload: bytes, timestamp: int) -> None:
    """The sink of audio m-lines other than the microphone's."""
