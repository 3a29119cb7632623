"""The one hook into aiortc internals (webrtc.py). If an aiortc upgrade breaks
it, these fail loudly: pin the version in pyproject.toml back, or port the hook."""

from __future__ import annotations

import asyncio

import aiohttp
from tests.conftest import GatewayFactory, wait_for

from voxgate.bench.sfu import opus_packets
from voxgate.testing.webrtc import SfuPeer
from voxgate.webrtc import (
    PacketTrack,
    align_header_extensions,
    check_aiortc,
    tap_receiver,
)

APP = "/v1/apps/default"


async def play(track: PacketTrack, packets: list[bytes], first: int) -> None:
    """Push at 50 packets/s, as a real publisher does (a burst can lose packets in the
    middle on a loaded machine, which the suffix check below would then report)."""
    for i, p in enumerate(packets):
        track.push(p, (first + i) * 960)
        await asyncio.sleep(0.02)


def test_installed_aiortc_has_what_the_hook_needs() -> None:
    check_aiortc()


async def test_packets_are_forwarded_byte_for_byte(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Publisher → server → subscriber without decode or re-encode: the Opus payloads a
    subscriber receives are exactly those published, and renegotiation adds a second."""
    gw = await gateway()
    pub = SfuPeer(http, gw.base + APP)
    await pub.open()
    track = PacketTrack(backlog=500)
    await pub.publish("mic", track)
    got: dict[str, list[bytes]] = {"a": [], "b": []}

    sub = SfuPeer(http, gw.base + APP)
    await sub.open()

    def on_track(_track: object) -> None:
        for t in sub.pc.getTransceivers():
            if t.receiver.track is _track:
                key = "a" if not got["a"] and t.mid == "0" else "b"
                tap_receiver(t.receiver, lambda p, ts, key=key: got[key].append(p))

    sub.pc.on("track", on_track)
    await sub.pull((pub.session_id, "mic"))
    await wait_for(lambda: sub.pc.connectionState == "connected")
    packets = opus_packets(1.0)
    await play(track, packets, 0)
    await wait_for(lambda: len(got["a"]) >= len(packets) - 5)
    # packets sent before the path was up may be missing at the start, none after
    assert got["a"] == packets[len(packets) - len(got["a"]) :]

    # renegotiation: the same subscriber pulls the same track again on a second m-line
    body = await sub.pull((pub.session_id, "mic"))
    assert body["tracks"][0]["mid"] == "1"
    await wait_for(lambda: len(sub.pc.getTransceivers()) == 2)
    await play(track, packets, 50)
    await wait_for(lambda: len(got["b"]) >= len(packets) - 5)
    assert got["b"] == packets[len(packets) - len(got["b"]) :]

    # close the first pulled track: its packets stop, the second goes on
    status, body = await sub.call(
        "PUT", f"/sessions/{sub.session_id}/tracks/close", {"tracks": [{"mid": "0"}], "force": True}
    )
    assert status == 200
    assert body["tracks"] == [{"mid": "0"}]
    status, state = await sub.call("GET", f"/sessions/{sub.session_id}")
    assert [t["mid"] for t in state["tracks"]] == ["1"]
    before = len(got["a"])
    got["b"].clear()
    await play(track, packets, 100)
    await wait_for(lambda: len(got["b"]) >= len(packets) - 5)
    assert len(got["a"]) == before
    await sub.close()
    await pub.close()


def test_reoffer_keeps_the_peers_header_extension_ids() -> None:
    """Chromium numbered the extensions its own way; aiortc's re-offer uses its defaults."""
    browser = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    )
    offer = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=extmap:2/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
        "a=extmap:3 urn:example:new\r\n"
    )
    aligned = align_header_extensions(offer, browser)
    assert aligned.count("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid") == 2
    assert "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n" in aligned
    assert "a=extmap:1/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level" in aligned
    assert "a=extmap:3 urn:example:new" in aligned  # 3 was free
    assert align_header_extensions(offer, None) == offer
