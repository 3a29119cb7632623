"""Properties of the media server's sans-I/O pieces, for any input (hypothesis).

- :func:`check_sdp`: any text is accepted, or refused with an ``SfuError`` 400
  ``invalid_session_description``; never another exception.
- What it accepts, aiortc applies and answers (a real ``RTCPeerConnection``, through
  :class:`SfuSession`): the check is the whole boundary, nothing slips past it.
- The adapter's ``Packet`` codec: any bytes decode or raise ``PacketError``.

Runs are bounded and derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import psutil
from aiortc import RTCSessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.sdp_mutations import AIORTC_OFFER, CHROMIUM_OFFER, ODD_LINES, mutate

from voxgate.core.sfu.sdp import Section, check_sdp, sections_of
from voxgate.core.sfu.session import SfuSession, TrackRequest
from voxgate.core.sfu.tracks import TrackSource
from voxgate.errors import SfuError
from voxgate.protocols.adapter import Packet, PacketError, decode_packet, encode_packet
from voxgate.webrtc import close_peer, peer_connection

PURE = settings(max_examples=500, deadline=None, derandomize=True)
LIVE = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
KINDS = st.sampled_from(["offer", "answer"])
BASE_SECTIONS = [Section("audio", "0"), Section("application", "1")]


def refusal(exc: SfuError | None, kind: str) -> bool:
    """Whether ``exc`` is a refusal (``None``: accepted); fails on any other error."""
    if exc is None:
        return False
    assert (exc.status, exc.code) == (400, "invalid_session_description"), exc
    assert str(exc).startswith(f"the {kind}"), exc
    return True


def checked(sdp: str, kind: str, negotiated: list[Section] | None = None) -> bool:
    """Whether ``check_sdp`` accepts; fails the test on anything but its own refusal."""
    error: SfuError | None = None
    try:
        check_sdp(sdp, kind, negotiated or [])
    except SfuError as exc:
        error = exc
    return not refusal(error, kind)


# -- check_sdp, sans-I/O -----------------------------------------------------------------


@PURE
@given(st.text(max_size=2000), KINDS)
def test_any_text_is_accepted_or_refused(text: str, kind: str) -> None:
    checked(text, kind)


_VALUE = st.text(
    alphabet=st.sampled_from(list("0123456789 abcxyzABC:/.-=;#*\0\x85\u3000é")), max_size=40
)
_ATTRIBUTES = st.sampled_from(
    [
        *("candidate", "extmap", "fingerprint", "fmtp", "group", "ice-options", "ice-pwd"),
        *("ice-ufrag", "max-message-size", "mid", "msid", "msid-semantic", "rtcp", "rtcp-fb"),
        *("rtpmap", "sctp-port", "sctpmap", "setup", "ssrc", "ssrc-group", "sendrecv"),
        *("sendonly", "recvonly", "inactive", "rtcp-mux", "end-of-candidates", "ice-lite", "x"),
    ]
)
_LINE = st.one_of(
    st.builds(lambda a, v: f"a={a}:{v}", _ATTRIBUTES, _VALUE),
    st.builds(lambda a: f"a={a}", _ATTRIBUTES),
    st.builds(lambda t, v: f"{t}={v}", st.sampled_from(list("vosctmbz")), _VALUE),
    st.sampled_from(ODD_LINES),
)


@PURE
@given(st.lists(_LINE, max_size=40), KINDS)
def test_sdp_shaped_text_is_accepted_or_refused(lines: list[str], kind: str) -> None:
    for head in (["v=0"], ["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 96"]):
        checked("\r\n".join(head + lines) + "\r\n", kind)


@PURE
@given(st.sampled_from([AIORTC_OFFER, CHROMIUM_OFFER]), st.randoms(use_true_random=False))
def test_mutated_descriptions_are_accepted_or_refused(base: str, rnd: random.Random) -> None:
    sdp = mutate(base, rnd)
    checked(sdp, "offer")
    checked(sdp, "offer", BASE_SECTIONS)
    checked(sdp, "answer", BASE_SECTIONS)


def test_real_descriptions_are_accepted() -> None:
    for sdp in (AIORTC_OFFER, CHROMIUM_OFFER):
        assert check_sdp(sdp, "offer") == BASE_SECTIONS
        assert sections_of(sdp) == BASE_SECTIONS


# -- what check_sdp accepts, aiortc applies ----------------------------------------------


async def _answer(offer: str) -> tuple[bool, str | None]:
    """(accepted by check_sdp, the session's answer or its refusal)."""
    accepted = checked(offer, "offer")
    session = SfuSession("s", "app", now=lambda: 0.0, lookup=lambda sid, name: None)
    error: SfuError | None = None
    try:
        return accepted, await session.answer(offer)
    except SfuError as exc:
        error = exc
    finally:
        await session.close()
    assert refusal(error, "offer")
    return accepted, None


@LIVE
@given(st.randoms(use_true_random=False))
def test_accepted_offers_are_answered(rnd: random.Random) -> None:
    offer = mutate(AIORTC_OFFER, rnd)
    accepted, answer = asyncio.run(_answer(offer))
    if accepted:  # nothing check_sdp lets through fails in aiortc
        assert answer is not None
        assert check_sdp(answer, "answer", check_sdp(offer, "offer"))


async def _renegotiate(mutation: int) -> tuple[bool, bool]:
    """A server offer (a pulled track), answered by aiortc, the answer mutated: (accepted
    by check_sdp, applied by the session)."""
    source = TrackSource("pub", "mic", created=0.0)
    session = SfuSession("s", "app", now=lambda: 0.0, lookup=lambda sid, name: source)
    client = peer_connection()
    try:
        offer, _ = await session.pull([TrackRequest("remote", "mic", None, "pub")])
        assert offer is not None
        await client.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await client.setLocalDescription(await client.createAnswer())
        answer = mutate(client.localDescription.sdp, random.Random(mutation))
        accepted = checked(answer, "answer", sections_of(offer))
        error: SfuError | None = None
        try:
            await session.renegotiate(answer)
        except SfuError as exc:
            error = exc
        return accepted, not refusal(error, "answer")
    finally:
        await session.close()
        await close_peer(client)


@LIVE
@given(st.integers(min_value=0, max_value=2**32))
def test_accepted_answers_are_applied(mutation: int) -> None:
    accepted, applied = asyncio.run(_renegotiate(mutation))
    assert applied == accepted


def test_sessions_release_their_sockets() -> None:
    """Hundreds of sessions answered and closed above leave no socket behind."""
    me = psutil.Process()
    before = me.num_fds()
    for seed in range(30):
        asyncio.run(_answer(mutate(AIORTC_OFFER, random.Random(seed), ops=1)))
    assert me.num_fds() <= before + 2


# -- the adapter's Packet codec ----------------------------------------------------------


@PURE
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_packet_error(data: bytes) -> None:
    try:
        packet = decode_packet(data)
    except PacketError:
        return
    assert isinstance(packet, Packet)
    assert 0 <= packet.sequence_number < 2**32
    assert 0 <= packet.timestamp < 2**32


@PURE
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=200))
def test_packets_round_trip(seq: int, ts: int, payload: bytes) -> None:
    assert decode_packet(encode_packet(seq, ts, payload)) == Packet(seq, ts, payload)


@PURE
@given(st.binary(min_size=1, max_size=200), st.data())
def test_truncated_packets_raise_packet_error_or_decode(
    payload: bytes, data: st.DataObject
) -> None:
    frame = encode_packet(7, 960, payload)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with contextlib.suppress(PacketError):
        decode_packet(frame[:cut])
