"""Hostile session descriptions (issue 12): each reproducer found by fuzzing, sent as a
client would, gets a 400 that names the problem; nothing half-built is left behind; and
the media server's collector outlives any one failure."""

from __future__ import annotations

import logging

import aiohttp
import psutil
import pytest
from aiortc import RTCSessionDescription
from tests.conftest import GatewayFactory, wait_for

from voxgate.clock import random_id
from voxgate.core.sfu.media import MediaServer, MediaSettings
from voxgate.core.sfu.session import SfuSession
from voxgate.testing.clock import FakeClock
from voxgate.testing.webrtc import PcmTrack, SfuPeer
from voxgate.webrtc import peer_connection

APP = "/v1/apps/default"

#: Defect 2's reproducer: a BUNDLE group naming mids the offer does not have.
BAD_BUNDLE = (
    "v=0\r\na=group:BUNDLE 0 1 2 3\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96 9 0 8\r\na=mid:3\r\n"
    "a=rtcp-mux\r\na=rtpmap:8 PCMA/8000\r\na=ice-ufrag:JMV0\r\n"
    "a=ice-pwd:Wh2BT6N2DmTdWUaK1Hjsvl\r\na=setup:actpass\r\n"
)


async def aiortc_offer(tracks: int = 1, *, datachannel: bool = False) -> str:
    """A real offer of ``tracks`` sending audio m-lines, as an aiortc client makes it."""
    pc = peer_connection()
    for _ in range(tracks):
        pc.addTransceiver(PcmTrack(), direction="sendonly")
    if datachannel:
        pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def replace_line(sdp: str, prefix: str, new: str) -> str:
    """``sdp`` with its first line starting with ``prefix`` replaced by ``new``."""
    lines = sdp.split("\r\n")
    i = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    lines[i] = new
    return "\r\n".join(lines)


def two_datachannel_sections(sdp: str) -> str:
    section = sdp[sdp.index("m=application") :]
    return sdp.replace("BUNDLE 0 1", "BUNDLE 0 1 2") + section.replace("a=mid:1", "a=mid:2")


async def post(
    http: aiohttp.ClientSession, url: str, body: object, method: str = "POST"
) -> tuple[int, dict[str, object]]:
    async with http.request(method, url, json=body) as r:
        return r.status, await r.json()


def offer_body(sdp: str) -> dict[str, object]:
    return {"sessionDescription": {"type": "offer", "sdp": sdp}}


# -- defect 2: one bad SDP stopped the collector for good ------------------------------


async def test_bad_bundle_offer_is_refused_and_collection_goes_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    media = gw.services.media
    clock = FakeClock()
    media.clock = clock  # sessions made from now on age on the fake clock
    before = len(media.sessions)

    status, body = await post(http, gw.base + APP + "/sessions/new", offer_body(BAD_BUNDLE))
    assert status == 400, body
    assert body["errorCode"] == "invalid_session_description"
    assert "BUNDLE" in str(body["errorDescription"]), body
    assert len(media.sessions) == before  # nothing half-built is kept

    # a normal session whose client never connects: stale after 30 s
    status, body = await post(
        http, gw.base + APP + "/sessions/new", offer_body(await aiortc_offer())
    )
    assert status == 201, body
    sid = str(body["sessionId"])
    assert sid in media.sessions

    media.reconfigure(MediaSettings(stale_seconds=30.0, collect_every=0.02))
    clock.advance(31.0)  # the 30 s after which the old collector died
    await wait_for(lambda: sid not in media.sessions, 5)
    assert media.collector_alive
    status, body = await post(http, gw.base + APP + "/sessions/new", {})
    assert status == 201
    later = str(body["sessionId"])
    clock.advance(31.0)
    await wait_for(lambda: later not in media.sessions, 5)
    assert media.collector_alive


class ExplodingSession(SfuSession):
    """A session whose close fails, as aiortc's did for a half-built PeerConnection."""

    async def close(self) -> None:
        self.closed = True
        raise RuntimeError("close failed")


async def test_a_session_that_fails_to_close_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    media = MediaServer(clock, random_id, MediaSettings(stale_seconds=30.0, collect_every=0.01))
    bad = ExplodingSession("bad", "default", now=clock.monotonic, lookup=media.find_track)
    media.sessions["bad"] = bad
    good = [media.new_session("default") for _ in range(3)]
    media.start()
    try:
        clock.advance(31.0)
        await wait_for(lambda: not media.sessions, 5)
        assert all(s.closed for s in good)
        failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
        assert len(failures) == 1, failures  # logged once, with its traceback
        assert "bad" in failures[0].getMessage()
        assert media.collector_alive
        later = media.new_session("default")
        clock.advance(31.0)
        await wait_for(lambda: later.id not in media.sessions, 5)
    finally:
        await media.close()


async def test_a_half_built_peer_connection_is_closed_with_all_its_sockets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiortc's own close stopped at a transceiver a BUNDLE group had left without a
    transport, leaving the next one's ICE sockets open for good."""
    me = psutil.Process()
    fds = me.num_fds()
    media = MediaServer(FakeClock(), random_id)
    session = media.new_session("default")
    # straight to aiortc, past the server's checks (which want one BUNDLE group):
    # two transports, each with its own sockets ...
    pc = session.pc
    offer = (await aiortc_offer(2)).replace("a=group:BUNDLE 0 1\r\n", "")
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    assert me.num_fds() > fds
    # ... then mid 0 loses its transport to a BUNDLE group led by a mid no m-line has
    broken = offer.replace("a=msid-semantic", "a=group:BUNDLE 9 0\r\na=msid-semantic")
    await pc.setRemoteDescription(RTCSessionDescription(broken, "offer"))
    await media.close_session(session.id)
    assert session.closed
    assert session.id not in media.sessions
    assert me.num_fds() <= fds
    # aiortc's close did fail (and was logged once); the transports were stopped anyway
    failed = [r for r in caplog.records if r.exc_info and r.name == "voxgate.webrtc"]
    assert len(failed) == 1, failed


# -- defect 3: bad SDP answered 500 ----------------------------------------------------


def _nul_in_address(sdp: str) -> str:
    return replace_line(sdp, "c=", "c=IN IP4 192.0.\x002.2")


BAD_OFFERS = {
    "c-not-an-address": (
        lambda sdp: replace_line(sdp, "c=", "c=IN IP4 1-17.0.0.1"),
        "'1-17.0.0.1' is not an IP address",
    ),
    "nul-in-address": (_nul_in_address, "control character"),
    "nul-in-candidate": (
        lambda sdp: replace_line(
            sdp, "a=candidate:", "a=candidate:1 1 udp 2130706431 10.0.\x000.1 5000 typ host"
        ),
        "control character",
    ),
    "m=audio2": (
        lambda sdp: sdp.replace("m=audio ", "m=audio2 "),
        "media 'audio2' is not audio, video or application",
    ),
    "m=-without-media": (
        lambda sdp: sdp.replace("m=audio ", "m= "),
        "must be m=<media> <port> <proto> <formats>",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OFFERS))
async def test_bad_offer_answers_400_naming_the_problem(
    gateway: GatewayFactory, http: aiohttp.ClientSession, case: str
) -> None:
    gw = await gateway()
    mutate, why = BAD_OFFERS[case]
    sdp = mutate(await aiortc_offer())
    status, body = await post(http, gw.base + APP + "/sessions/new", offer_body(sdp))
    assert status == 400, body
    assert body["errorCode"] == "invalid_session_description"
    assert why in str(body["errorDescription"]), body
    assert "line " in str(body["errorDescription"]), body
    assert not gw.services.media.sessions

    # the same offer pushing a track into an open session
    peer = SfuPeer(http, gw.base + APP)
    sid = await peer.open()
    status, body = await post(
        http,
        gw.base + APP + f"/sessions/{sid}/tracks/new",
        offer_body(sdp) | {"tracks": [{"location": "local", "mid": "0", "trackName": "mic"}]},
    )
    assert status == 400, body
    assert body["errorCode"] == "invalid_session_description"
    assert why in str(body["errorDescription"]), body
    await peer.close()


async def test_two_datachannel_sections_answer_400(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """aiortc's own answer failed: "Media sections in answer do not match offer"."""
    gw = await gateway()
    sdp = two_datachannel_sections(await aiortc_offer(datachannel=True))
    status, body = await post(http, gw.base + APP + "/sessions/new", offer_body(sdp))
    assert status == 400, body
    assert body["errorCode"] == "invalid_session_description"
    assert "one m=application" in str(body["errorDescription"]), body
    assert not gw.services.media.sessions


BAD_ANSWERS = {
    "c-not-an-address": (
        lambda sdp: replace_line(sdp, "c=", "c=IN IP4 1-17.0.0.1"),
        "'1-17.0.0.1' is not an IP address",
    ),
    "nul-in-address": (_nul_in_address, "control character"),
    "sections-do-not-match": (
        lambda sdp: sdp.replace("a=mid:0", "a=mid:7").replace("BUNDLE 0", "BUNDLE 7"),
        "do not match the offer",
    ),
    "actpass-in-answer": (
        lambda sdp: replace_line(sdp, "a=setup:", "a=setup:actpass"),
        "a=setup",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
async def test_bad_renegotiation_answer_answers_400(
    gateway: GatewayFactory, http: aiohttp.ClientSession, case: str
) -> None:
    gw = await gateway()
    base = gw.base + APP
    pub = SfuPeer(http, base)
    await pub.open()
    await pub.publish("mic", PcmTrack())
    sub = SfuPeer(http, base)
    sid = await sub.open()
    status, body = await post(
        http,
        base + f"/sessions/{sid}/tracks/new",
        {"tracks": [{"location": "remote", "sessionId": pub.session_id, "trackName": "mic"}]},
    )
    assert status == 200, body
    server_offer = body["sessionDescription"]
    assert isinstance(server_offer, dict)
    await sub.pc.setRemoteDescription(RTCSessionDescription(server_offer["sdp"], "offer"))
    await sub.pc.setLocalDescription(await sub.pc.createAnswer())
    mutate, why = BAD_ANSWERS[case]
    answer = mutate(sub.pc.localDescription.sdp)
    status, body = await post(
        http,
        base + f"/sessions/{sid}/renegotiate",
        {"sessionDescription": {"type": "answer", "sdp": answer}},
        "PUT",
    )
    assert status == 400, body
    assert body["errorCode"] == "invalid_session_description"
    assert why in str(body["errorDescription"]), body
    # the session is still usable: the server's offer still waits for a good answer
    status, body = await post(
        http,
        base + f"/sessions/{sid}/renegotiate",
        {"sessionDescription": {"type": "answer", "sdp": sub.pc.localDescription.sdp}},
        "PUT",
    )
    assert status == 200, body
    await wait_for(lambda: len(sub.received) == 1, 10)
    await sub.close()
    await pub.close()
