"""The WebRTC edge of a Realtime call (transports/rtc_call.py), over real sockets on this
host (aiortc's host candidates; it leaves out loopback): an aiortc client does what a
browser does (microphone track, ``oai-events`` data channel, an m-line to hear the agent
on) against a :class:`CallPeer`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import pytest
from aiortc import MediaStreamTrack, RTCDataChannel, RTCSessionDescription
from tests.conftest import wait_for

from voxgate.core.realtime.ports import OutputAudio
from voxgate.errors import SfuError
from voxgate.opus import OpusEncoder
from voxgate.testing.webrtc import PcmTrack, Recorder, tone
from voxgate.transports.rtc_call import CallPeer
from voxgate.webrtc import PacketTrack, close_peer, peer_connection

RATE = 48000
#: RMS of the 8000-amplitude test tone.
TONE_RMS = 8000 / np.sqrt(2)


def rms_windows(pcm: bytes | bytearray, ms: int = 20) -> np.ndarray:
    """The RMS of each ``ms`` window of 48 kHz mono PCM16."""
    samples = np.frombuffer(bytes(pcm), np.int16).astype(np.float64)
    n = RATE * ms // 1000
    whole = len(samples) // n * n
    return np.sqrt((samples[:whole].reshape(-1, n) ** 2).mean(axis=1))


@dataclass
class Heard:
    """What a :class:`CallPeer`'s callbacks got."""

    audio: bytearray = field(default_factory=bytearray)
    chunks: int = 0
    messages: list[str] = field(default_factory=list)
    closed: int = 0
    playout: list[tuple[str, str, str]] = field(default_factory=list)

    def peer(self) -> CallPeer:
        def audio(pcm: bytes) -> None:
            self.audio += pcm
            self.chunks += 1

        def closed() -> None:
            self.closed += 1

        return CallPeer(
            on_audio=audio,
            on_message=self.messages.append,
            on_closed=closed,
            on_started=lambda r, i: self.playout.append(("started", r, i)),
            on_stopped=lambda r, i: self.playout.append(("stopped", r, i)),
            on_cleared=lambda r, i: self.playout.append(("cleared", r, i)),
        )


class Client:
    """A browser's side of the call, on aiortc."""

    def __init__(
        self,
        *,
        mic: bytes | MediaStreamTrack | None = b"",
        split: bool = False,
        events: bool = True,
    ):
        self.pc = peer_connection()
        self.mic = PcmTrack(mic) if isinstance(mic, bytes) else mic
        if split:  # a send-only microphone m-line and a receive-only one for the voice
            if self.mic is not None:
                self.pc.addTransceiver(self.mic, direction="sendonly")
            self.pc.addTransceiver("audio", direction="recvonly")
        elif self.mic is not None:  # OpenAI's browser example: addTrack(mic), one m-line
            self.pc.addTrack(self.mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.received: list[str] = []
        self.channel: RTCDataChannel | None = None
        if events:
            self.channel = self.pc.createDataChannel("oai-events")
            self.channel.on("message", self.received.append)
        self.recorder: Recorder | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.recorder = Recorder(track)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def call(self, peer: CallPeer) -> str:
        answer = await peer.answer(await self.offer())
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_for(lambda: self.pc.connectionState == "connected")
        if self.channel is not None:
            await wait_for(lambda: peer.events_open and self.channel.readyState == "open")
        return answer

    async def close(self) -> None:
        if self.recorder is not None:
            await self.recorder.stop()
        await close_peer(self.pc)


@pytest.fixture
async def fds() -> int:
    """Open file descriptors before the test (async: the loop's own are counted)."""
    return psutil.Process().num_fds()


def no_leak(before: int) -> bool:
    return psutil.Process().num_fds() <= before


async def test_a_call_carries_the_microphone_and_events_both_ways(fds: int) -> None:
    heard = Heard()
    peer = heard.peer()
    peer.send("early 1")  # before the offer: they wait for the channel, in order
    peer.send("early 2")
    client = Client(mic=tone(440, 1.0))
    other = client.pc.createDataChannel("not-events")
    answer = await client.call(peer)
    assert answer.startswith("v=0")
    assert "a=candidate:" in answer  # gathered before it was returned
    assert "m=application" in answer

    peer.send("late")
    client.channel.send('{"type": "session.update"}')
    await wait_for(lambda: client.received == ["early 1", "early 2", "late"])
    await wait_for(lambda: heard.messages == ['{"type": "session.update"}'])
    client.channel.send(b"\x00binary")  # dropped (logged), not handed on
    await wait_for(lambda: other.readyState == "closed")  # only oai-events is kept

    # the tone (1 s), then the track's silence: 48 kHz mono, at the caller's pace
    started = time.monotonic()
    await wait_for(lambda: len(heard.audio) >= RATE * 2 * 1.3)
    elapsed = time.monotonic() - started
    loud = rms_windows(heard.audio) > TONE_RMS / 2
    assert 45 <= loud.sum() <= 52, loud.sum()  # 50 windows of 20 ms, give or take the edges
    # aiortc's client upmixes the mono tone to stereo at -3 dB (libswresample's matrix);
    # the server averages the two channels back, so it hears the tone at 1/√2
    level = rms_windows(heard.audio)[loud]
    assert np.median(np.abs(level - TONE_RMS / np.sqrt(2))) < TONE_RMS * 0.05, level
    assert elapsed > 0.5  # paced by the client, not a burst
    spectrum = np.abs(np.fft.rfft(np.frombuffer(bytes(heard.audio[: RATE * 2]), np.int16)))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2  # 1 s of samples: bins are 1 Hz
    assert heard.messages == ['{"type": "session.update"}']
    assert heard.closed == 0

    await client.close()
    await peer.close()
    await wait_for(lambda: no_leak(fds))


async def test_the_voice_plays_at_real_time_and_a_clear_cuts_it(fds: int) -> None:
    heard = Heard()
    peer = heard.peer()
    client = Client()
    await client.call(peer)
    playout = peer.playout
    assert playout.format.rate == 48000

    await playout.write(OutputAudio("resp_1", "A", 0, 0, tone(440, 1.0)))  # returns at once
    assert playout.playing == ("resp_1", "A")
    written = time.monotonic()
    first = playout.played_ms("A")
    assert first < 200  # written, not yet played
    await asyncio.sleep(0.5)
    half = playout.played_ms("A")
    waited = (time.monotonic() - written) * 1000
    assert waited - 150 <= half - first <= waited + 60, (first, half, waited)
    playout.finish("resp_1")
    assert heard.playout == [("started", "resp_1", "A")]
    await wait_for(lambda: len(heard.playout) == 2, 2)
    assert heard.playout == [("started", "resp_1", "A"), ("stopped", "resp_1", "A")]
    assert playout.played_ms("A") == 1000.0
    assert playout.playing is None

    # the caller heard it: a second of the tone, decoded by the client's own Opus decoder
    assert client.recorder is not None
    await asyncio.sleep(0.2)  # the client's jitter buffer
    loud = rms_windows(client.recorder.pcm) > TONE_RMS / 2
    assert 46 <= loud.sum() <= 52, loud.sum()
    level = rms_windows(client.recorder.pcm)[loud]
    assert np.median(np.abs(level - TONE_RMS)) < TONE_RMS * 0.1

    # a second answer, cut a third of the way in: nothing more of it goes out
    await playout.write(OutputAudio("resp_2", "B", 0, 0, tone(660, 1.0)))
    await asyncio.sleep(0.3)
    playout.clear()
    cut = playout.played_ms("B")
    assert 150 <= cut <= 450, cut
    assert heard.playout[2:] == [("started", "resp_2", "B"), ("cleared", "resp_2", "B")]
    assert playout.playing is None
    playout.finish("resp_2")  # a cleared response stops no more
    await asyncio.sleep(0.15)  # what was on its way, and the client's jitter buffer
    mark = len(client.recorder.pcm)
    await asyncio.sleep(0.3)
    assert playout.played_ms("B") == cut
    after = rms_windows(client.recorder.pcm[mark:])
    assert len(after) >= 10  # the track went on, with silence
    assert after.max() < 100, after.max()
    assert len(heard.playout) == 4

    await client.close()
    await peer.close()
    await wait_for(lambda: no_leak(fds))


async def test_write_waits_while_a_second_is_unplayed() -> None:
    """Backpressure: the queue holds about a second; a cancelled write queues nothing."""
    heard = Heard()
    peer = heard.peer()
    client = Client()
    await client.call(peer)
    playout = peer.playout
    chunk = tone(440, 0.5)
    await playout.write(OutputAudio("r", "A", 0, 0, chunk))
    await playout.write(OutputAudio("r", "A", 0, 0, chunk))
    await playout.write(OutputAudio("r", "A", 0, 0, chunk))  # 1.5 s queued at most
    start = time.monotonic()
    await playout.write(OutputAudio("r", "A", 0, 0, chunk))  # waits until ≤ 1 s is left
    assert time.monotonic() - start > 0.3
    blocked = asyncio.create_task(playout.write(OutputAudio("r", "A", 0, 0, chunk)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    blocked.cancel()
    playout.finish("r")
    await wait_for(lambda: ("stopped", "r", "A") in heard.playout, 3)
    assert playout.played_ms("A") == 2000.0  # four pieces, not the cancelled fifth
    await client.close()
    await peer.close()


async def test_split_media_lines_and_no_data_channel() -> None:
    """A send-only microphone m-line and a receive-only voice m-line; no events."""
    heard = Heard()
    peer = heard.peer()
    client = Client(mic=tone(440, 0.4), split=True, events=False)
    answer = await client.call(peer)
    assert "m=application" not in answer
    assert not peer.events_open
    peer.send("nowhere to go")  # dropped, no error
    await peer.playout.write(OutputAudio("r", "A", 0, 0, tone(440, 0.4)))
    peer.playout.finish("r")
    await wait_for(lambda: ("stopped", "r", "A") in heard.playout, 2)
    await asyncio.sleep(0.2)
    assert client.recorder is not None
    assert (rms_windows(client.recorder.pcm) > TONE_RMS / 2).sum() >= 16
    await wait_for(lambda: (rms_windows(heard.audio) > TONE_RMS / 2).sum() >= 18)
    # with no data channel, the connection's own end says the caller hung up
    await client.close()
    await wait_for(lambda: heard.closed == 1)
    await peer.close()


async def test_the_caller_hanging_up_ends_the_call_once(fds: int) -> None:
    heard = Heard()
    peer = heard.peer()
    client = Client()
    await client.call(peer)
    writing = asyncio.create_task(peer.playout.write(OutputAudio("r", "A", 0, 0, tone(440, 3.0))))
    await asyncio.sleep(0.05)
    await client.close()
    await wait_for(lambda: heard.closed == 1)
    await asyncio.sleep(0.3)  # the connection's own close comes after the channel's
    assert heard.closed == 1
    await asyncio.wait_for(writing, 1)  # the playout stopped; a waiting write returns
    peer.send("after the end")  # dropped
    await peer.close()
    await peer.close()
    await asyncio.gather(peer.close(), peer.close())
    assert heard.closed == 1  # close() does not call on_closed
    await wait_for(lambda: no_leak(fds))


async def test_closing_first_does_not_call_on_closed(fds: int) -> None:
    heard = Heard()
    peer = heard.peer()
    client = Client()
    await client.call(peer)
    await peer.close()
    await wait_for(lambda: client.pc.connectionState == "closed")
    assert heard.closed == 0
    await client.close()
    await wait_for(lambda: no_leak(fds))


async def test_a_gap_in_the_microphone_is_filled_and_a_late_packet_dropped() -> None:
    """Lost packets (or DTX) leave a gap in the RTP clock: the server fills it with
    silence, so its audio clock keeps the caller's time; a packet that comes too late
    (reordered) is dropped."""
    mic = PacketTrack(backlog=100)
    heard = Heard()
    peer = heard.peer()
    client = Client(mic=mic)
    await client.call(peer)
    packets = OpusEncoder().encode(np.repeat(np.frombuffer(tone(440, 0.4), np.int16), 2).tobytes())
    assert len(packets) == 20
    for n in [*range(10), *range(15, 25), 12]:  # 10, lost 5, 10, one of the lost ones late
        mic.push(packets[n % 20], n * 960)
        await asyncio.sleep(0.005)
    await wait_for(lambda: heard.chunks == 20)
    await asyncio.sleep(0.1)
    assert heard.chunks == 20  # the late one was not handed on
    assert len(heard.audio) == 25 * 960 * 2
    gap = rms_windows(heard.audio)[10:15]
    assert np.all(gap == 0), gap
    await client.close()
    await peer.close()


def _only_datachannel(sdp: str) -> str:
    head, _, rest = sdp.partition("m=audio")
    return head.replace("BUNDLE 0 1", "BUNDLE 1") + rest[rest.index("m=application") :]


BAD_OFFERS = {
    "garbage": (lambda sdp: "v=0\r\nm=what\r\n", "must be m=<media>"),
    "no-m-line": (lambda sdp: "v=0\r\ns=-\r\n", "no m= line"),
    "no-audio": (_only_datachannel, "no audio m-line"),
    "send-only": (
        lambda sdp: sdp.replace("a=sendrecv", "a=sendonly"),
        "no audio m-line to hear the agent on",
    ),
    "no-fingerprint": (
        lambda sdp: "\r\n".join(x for x in sdp.split("\r\n") if not x.startswith("a=fingerprint")),
        "no a=fingerprint",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OFFERS))
async def test_a_bad_offer_is_refused_and_leaves_nothing_open(case: str, fds: int) -> None:
    client = Client()
    offer = await client.offer()
    await client.close()
    mutate, message = BAD_OFFERS[case]
    heard = Heard()
    peer = heard.peer()
    with pytest.raises(SfuError) as refused:
        await peer.answer(mutate(offer))
    assert refused.value.status == 400
    assert refused.value.code == "invalid_session_description"
    assert message in str(refused.value)
    await peer.close()
    assert heard.closed == 0
    await wait_for(lambda: no_leak(fds))


async def test_a_video_offer_is_refused(fds: int) -> None:
    pc = peer_connection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = str(pc.localDescription.sdp)
    await pc.close()
    with pytest.raises(SfuError, match="video"):
        await Heard().peer().answer(offer)
    await wait_for(lambda: no_leak(fds))


async def test_closing_while_answering_refuses_the_offer(fds: int) -> None:
    """aiortc fails half way (the PeerConnection closed under it): a 400, all closed."""
    client = Client()
    offer = await client.offer()
    await client.close()
    peer = Heard().peer()
    answering = asyncio.create_task(peer.answer(offer))
    await asyncio.sleep(0)
    await peer.close()
    with pytest.raises(SfuError) as refused:
        await answering
    assert (refused.value.status, refused.value.code) == (400, "session_error")
    with pytest.raises(SfuError, match="closed"):
        await peer.answer(offer)
    await wait_for(lambda: no_leak(fds))
