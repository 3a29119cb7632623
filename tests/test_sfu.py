"""The media server over real WebRTC on this machine: aiortc client peers, stock codecs."""

from __future__ import annotations

import aiohttp
import numpy as np
from tests.conftest import GatewayFactory, wait_for

from voxgate.testing.webrtc import PcmTrack, Recorder, SfuPeer, tone

APP = "/v1/apps/default"


def dominant_hz(pcm: bytes, rate: int = 48000) -> float:
    x = np.frombuffer(pcm, np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, np.int16).astype(np.float64) ** 2)))


async def heard(rec: Recorder, seconds: float = 0.5) -> bytes:
    """The last ``seconds`` a subscriber decoded, once it has that much of real sound."""
    need = int(48000 * seconds) * 2
    await wait_for(lambda: len(rec.pcm) >= need and rms(bytes(rec.pcm[-need:])) > 1000, 10)
    return bytes(rec.pcm[-need:])


async def start_call(
    http: aiohttp.ClientSession, base: str, hz: float
) -> tuple[SfuPeer, SfuPeer, Recorder]:
    """A publisher playing a tone and one subscriber recording it."""
    pub, sub = SfuPeer(http, base), SfuPeer(http, base)
    await pub.open()
    await pub.publish("mic", PcmTrack(tone(hz, 30)))
    await sub.open()
    await sub.pull((pub.session_id, "mic"))
    await wait_for(lambda: len(sub.received) == 1)
    return pub, sub, Recorder(next(iter(sub.received.values())))


async def test_one_publisher_fans_out_to_subscribers(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    base = gw.base + APP
    pub = SfuPeer(http, base)
    await pub.open()
    mic = PcmTrack(tone(440, 30))
    answer = await pub.publish("mic", mic)
    assert answer["requiresImmediateRenegotiation"] is False
    assert [t["trackName"] for t in answer["tracks"]] == ["mic"]

    subs = [SfuPeer(http, base) for _ in range(3)]
    recorders = []
    for sub in subs:
        await sub.open()
        body = await sub.pull((pub.session_id, "mic"))
        (track,) = body["tracks"]
        assert track["sessionId"] == pub.session_id
        assert "errorCode" not in track
        await wait_for(lambda sub=sub, mid=track["mid"]: mid in sub.received)
        recorders.append(Recorder(sub.received[track["mid"]]))
    for rec in recorders:
        pcm = await heard(rec)
        assert abs(dominant_hz(pcm) - 440) < 10

    # forwarded, not transcoded: the server's source counted each publisher packet once
    source = gw.services.media.find_track(pub.session_id, "mic")
    assert source is not None
    assert source.packets > 0
    assert len(source.subscribers) == 3

    status, body = await pub.call("GET", f"/sessions/{pub.session_id}")
    assert status == 200
    assert body["tracks"][0] | {"mid": None} == {
        "location": "local",
        "mid": None,
        "trackName": "mic",
        "status": "active",
    }

    for rec in recorders:
        await rec.stop()
    for peer in (pub, *subs):
        await peer.close()
