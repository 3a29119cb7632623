"""Session descriptions checked before aiortc sees them (sans-I/O).

aiortc's SDP parser accepts almost any text, and what it cannot use fails later: half
way through ``setRemoteDescription`` (after it has made transceivers and transports), in
``createAnswer``, when it renders a description back to text, or in a background task
once the connection starts — as ``AssertionError``, ``StopIteration``, ``AttributeError``
or ``ValueError``. :func:`check_sdp` refuses, with a message that names the line and
the field, every description this server's aiortc cannot apply cleanly, so what passes
it applies whole or not at all. Every refusal is an :class:`SfuError` 400
``invalid_session_description``; nothing else leaves this module.

What is checked, beyond "``v=0`` first, ``<type>=<value>`` lines":

- bounds: 64 KB, 4096 lines, 64 m-lines; no control characters (they would split
  lines differently for aiortc, which uses ``str.splitlines``);
- the grammar of each line aiortc interprets: ``c=``, ``m=``, and the attributes it
  reads (``candidate``, ``extmap``, ``fingerprint``, ``fmtp``, ``ice-ufrag``, ``mid``,
  ``rtpmap``, ``setup``, ``ssrc``, …), numbers in range;
- the whole: each m-line has a unique ``a=mid``, ICE credentials, a DTLS fingerprint
  and role, ``a=rtcp-mux`` and a direction (audio and video), a codec the server
  speaks; one BUNDLE group naming only mids the description has, with every m-line
  in use in it; at most one ``m=application``;
- against the negotiation so far (``negotiated``): an offer keeps the m-lines already
  negotiated, in order, with their kinds (it may add more); an answer has exactly the
  offer's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtp import FORBIDDEN_PAYLOAD_TYPES

from voxgate.errors import SfuError

MAX_SDP = 64 * 1024
MAX_LINES = 4096
MAX_MEDIA = 64

#: What aiortc's parser, renderer and codec matcher raise for input they cannot use.
#: Only ever caught around those pure functions, after the checks below, as a net.
PARSER_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,
    AttributeError,
    StopIteration,
    ArithmeticError,
)

_LINE = re.compile(r"([a-z])=(.*)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Whitespace other than the space: ``str.split()`` in aiortc would split on it.
_OTHER_SPACE = re.compile(r"[^\S ]")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_MDNS = re.compile(r"[a-zA-Z0-9-]{1,63}\.local")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*")
_MEDIA_LINE = re.compile(r"m=([^ ]*) ([^ ]*) ([^ ]*) (.+)")
_DIRECTIONS = frozenset(aiortc_sdp.DIRECTIONS)
_SETUP = frozenset(aiortc_sdp.DTLS_SETUP_ROLE)
_KINDS = ("audio", "video", "application")


@dataclass(frozen=True)
class Section:
    """One m-line, as far as negotiation cares: its kind and mid."""

    kind: str
    mid: str

    def __str__(self) -> str:
        return f"{self.kind} {self.mid}"


class _Refused(Exception):
    """A line-level problem; :func:`check_sdp` adds where it was."""


def _refuse(kind: str, why: str) -> SfuError:
    """``why`` continues "the offer" (or "answer"): "has …", or "'s line 3 …"."""
    sep = "" if why.startswith("'s ") else " "
    return SfuError(400, "invalid_session_description", f"the {kind}{sep}{why}")


def _int(text: str, lo: int, hi: int, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise _Refused(f"{what} {_show(text)} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise _Refused(f"{what} {value} is not in {lo}–{hi}")
    return value


def _show(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _ip(text: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise _Refused(f"{_show(text)} is not an IP address") from None


def _fields(value: str, least: int, most: int, form: str) -> list[str]:
    bits = value.split(" ")
    if not least <= len(bits) <= most or not all(bits):
        raise _Refused(f"must be {form}")
    return bits


# -- one checker per line or attribute aiortc interprets --------------------------------


def _connection(value: str) -> None:
    bits = _fields(value, 3, 3, "c=IN IP4|IP6 <address>")
    if bits[:2] not in (["IN", "IP4"], ["IN", "IP6"]):
        raise _Refused("must be c=IN IP4|IP6 <address>")
    _ip(bits[2])


def _media(value: str) -> str:
    m = _MEDIA_LINE.fullmatch("m=" + value)
    if m is None or not all(m.groups()):
        raise _Refused("must be m=<media> <port> <proto> <formats>")
    kind, port, proto, formats = m.groups()
    if kind not in _KINDS:
        raise _Refused(f"media {_show(kind)} is not audio, video or application")
    _int(port, 0, 65535, "port")
    if not re.fullmatch(r"[A-Z/]+", proto):
        raise _Refused(f"protocol {_show(proto)} is not an RTP or SCTP profile")
    fmts = formats.split(" ")
    if kind != "application":
        for pt in fmts:
            if _int(pt, 0, 127, "payload type") in FORBIDDEN_PAYLOAD_TYPES:
                raise _Refused(f"payload type {pt} is reserved for RTCP")
    elif proto == "DTLS/SCTP":
        _int(fmts[0], 0, 65535, "SCTP port")
    return kind


def _candidate(value: str) -> None:
    form = "<foundation> <component> <transport> <priority> <address> <port> typ <type>"
    bits = _fields(value, 8, 64, form)
    if not _TOKEN.fullmatch(bits[0]) or len(bits[0]) > 32:
        raise _Refused("foundation must be 1–32 token characters")
    _int(bits[1], 1, 256, "component")
    if bits[2].lower() not in ("udp", "tcp"):
        raise _Refused(f"transport {_show(bits[2])} is not udp or tcp")
    _int(bits[3], 0, 2**32 - 1, "priority")
    if not _MDNS.fullmatch(bits[4]):
        _ip(bits[4])
    _int(bits[5], 0, 65535, "port")
    if bits[6] != "typ" or bits[7] not in ("host", "srflx", "prflx", "relay"):
        raise _Refused("must say typ host|srflx|prflx|relay")
    for key, val in zip(bits[8::2], bits[9::2], strict=False):
        if key == "raddr" and not _MDNS.fullmatch(val):
            _ip(val)
        elif key == "rport":
            _int(val, 0, 65535, "rport")


def _extmap(value: str) -> None:
    bits = _fields(value, 2, 2, "a=extmap:<id>[/<direction>] <uri>")
    ident, _, direction = bits[0].partition("/")
    _int(ident, 1, 255, "extension id")
    if "/" in bits[0] and direction not in _DIRECTIONS:
        raise _Refused(f"direction {_show(direction)} is not a direction")


def _fingerprint(value: str) -> None:
    bits = _fields(value, 2, 2, "a=fingerprint:<hash> <hex pairs>")
    if not _TOKEN.fullmatch(bits[0]) or not _HEX_PAIRS.fullmatch(bits[1]):
        raise _Refused("must be a=fingerprint:<hash> <hex pairs>")


def _setup(value: str) -> None:
    if value not in _SETUP:
        raise _Refused(f"{_show(value)} is not actpass, active or passive")


def _ice(least: int) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not least <= len(value) <= 256 or not _ICE_CHARS.fullmatch(value):
            raise _Refused(f"must be {least}–256 letters, digits, + or /")

    return check


def _mid(value: str) -> None:
    if len(value) > 32 or not _TOKEN.fullmatch(value):
        raise _Refused("must be 1–32 token characters")


def _msid(value: str) -> None:
    bits = _fields(value, 1, 2, "a=msid:<stream id> [<track id>]")
    if not all(len(b) <= 64 and _TOKEN.fullmatch(b) for b in bits):
        raise _Refused("ids must be 1–64 token characters")


def _rtcp(value: str) -> None:
    port, _, address = value.partition(" ")
    _int(port, 0, 65535, "port")
    if address:
        _connection(address)


def _rtpmap(value: str) -> None:
    bits = _fields(value, 2, 2, "a=rtpmap:<payload type> <codec>/<rate>[/<channels>]")
    _int(bits[0], 0, 127, "payload type")
    codec = bits[1].split("/")
    if not 2 <= len(codec) <= 3 or not _TOKEN.fullmatch(codec[0]):
        raise _Refused("must be a=rtpmap:<payload type> <codec>/<rate>[/<channels>]")
    _int(codec[1], 1, 1_000_000, "clock rate")
    if len(codec) == 3:
        _int(codec[2], 1, 8, "channels")


def _fmtp(value: str) -> None:
    pt, _, params = value.partition(" ")
    _int(pt, 0, 127, "payload type")
    if not params:
        raise _Refused("must be a=fmtp:<payload type> <parameters>")
    for param in params.split(";"):
        key, eq, val = param.partition("=")
        if key in aiortc_sdp.FMTP_INT_PARAMETERS and eq:
            _int(val, 0, 2**31 - 1, key)


def _rtcp_fb(value: str) -> None:
    bits = value.split(" ", 2)
    if len(bits) < 2 or not bits[1]:
        raise _Refused("must be a=rtcp-fb:<payload type>|* <type> [<parameter>]")
    if bits[0] != "*":
        _int(bits[0], 0, 127, "payload type")


def _ssrc(value: str) -> None:
    ssrc, _, rest = value.partition(" ")
    _int(ssrc, 0, 2**32 - 1, "ssrc")
    if ":" not in rest:
        raise _Refused("must be a=ssrc:<ssrc> <attribute>:<value>")


def _ssrc_group(value: str) -> None:
    bits = _fields(value, 1, 64, "a=ssrc-group:<semantics> <ssrc>…")
    for ssrc in bits[1:]:
        _int(ssrc, 0, 2**32 - 1, "ssrc")


def _sctpmap(value: str) -> None:
    bits = _fields(value, 2, 3, "a=sctpmap:<port> <protocol> [<streams>]")
    _int(bits[0], 0, 65535, "port")


def _port(value: str) -> None:
    _int(value, 0, 65535, "port")


def _size(value: str) -> None:
    _int(value, 0, 2**32 - 1, "size")


def _words(value: str) -> None:
    if not value.split():
        raise _Refused("needs a value")


#: The attributes aiortc reads, each with the check that keeps its parser whole.
#: Every one of them needs a value (``a=<name>:<value>``).
_ATTRIBUTES: dict[str, Callable[[str], None]] = {
    "candidate": _candidate,
    "extmap": _extmap,
    "fingerprint": _fingerprint,
    "fmtp": _fmtp,
    "group": _words,
    "ice-options": _words,
    "ice-pwd": _ice(22),
    "ice-ufrag": _ice(4),
    "max-message-size": _size,
    "mid": _mid,
    "msid": _msid,
    "msid-semantic": _words,
    "rtcp": _rtcp,
    "rtcp-fb": _rtcp_fb,
    "rtpmap": _rtpmap,
    "sctp-port": _port,
    "sctpmap": _sctpmap,
    "setup": _setup,
    "ssrc": _ssrc,
    "ssrc-group": _ssrc_group,
}


def _check_line(letter: str, value: str) -> None:
    if letter == "v" and value != "0":
        raise _Refused("must be v=0")
    if letter == "c":
        _connection(value)
    elif letter == "m":
        _media(value)
    elif letter == "a":
        name, colon, attr = value.partition(":")
        check = _ATTRIBUTES.get(name)
        if check is not None:
            if not colon or not attr:
                raise _Refused(f"a={name} needs a value")
            check(attr)


def _lines(sdp: str, kind: str) -> list[str]:
    if len(sdp) > MAX_SDP:
        raise _refuse(kind, f"is over {MAX_SDP // 1024} KB")
    lines = sdp.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_LINES:
        raise _refuse(kind, f"has over {MAX_LINES} lines")
    if not lines or lines[0] != "v=0":
        raise _refuse(kind, "must start with v=0")
    for n, line in enumerate(lines, 1):
        where = f"line {n} ({line[:2]})" if _LINE.match(line[:2]) else f"line {n}"
        if (bad := _CONTROL.search(line)) is not None:
            raise _refuse(kind, f"'s {where} has a control character (U+{ord(bad[0]):04X})")
        if (bad := _OTHER_SPACE.search(line)) is not None:
            why = f"has whitespace other than a space (U+{ord(bad[0]):04X})"
            raise _refuse(kind, f"'s {where} {why}")
        m = _LINE.fullmatch(line)
        if m is None:
            raise _refuse(kind, f"'s {where} is not <type>=<value>")
        try:
            _check_line(m[1], m[2])
        except _Refused as exc:
            raise _refuse(kind, f"'s {where}: {exc}") from None
    _check_formats(lines, kind)
    return lines


def _check_formats(lines: list[str], kind: str) -> None:
    """Each m-line's ``a=fmtp`` is for a payload type its ``a=rtpmap`` names."""
    mapped: set[int] = set()
    pending: list[tuple[int, int]] = []

    def settle() -> None:
        for n, pt in pending:
            if pt not in mapped:
                why = f"'s line {n} (a=fmtp) is for payload type {pt}, with no a=rtpmap"
                raise _refuse(kind, why)
        mapped.clear()
        pending.clear()

    media = False
    for n, line in enumerate(lines, 1):
        if line.startswith("m="):
            settle()
            media = True
        elif media and line.startswith("a=rtpmap:"):
            mapped.add(int(line[9:].split(" ", 1)[0]))
        elif media and line.startswith("a=fmtp:"):
            pending.append((n, int(line[7:].split(" ", 1)[0])))
    settle()


def check_sdp(sdp: str, kind: str, negotiated: Sequence[Section] = ()) -> list[Section]:
    """Check an ``offer`` or ``answer`` a client sent; returns its m-lines.

    ``negotiated`` is the m-lines described so far in this session (for an answer:
    the offer's). Raises :class:`SfuError` 400 ``invalid_session_description`` naming
    the first problem found."""
    _lines(sdp, kind)
    try:
        desc = aiortc_sdp.SessionDescription.parse(sdp)
        str(desc)  # aiortc renders descriptions again later: it must be able to
    except PARSER_ERRORS as exc:
        raise _refuse(kind, f"cannot be parsed ({type(exc).__name__}: {exc})") from exc
    if not desc.media:
        raise _refuse(kind, "has no m= line")
    if len(desc.media) > MAX_MEDIA:
        raise _refuse(kind, f"has over {MAX_MEDIA} m-lines")
    sections = [_mid_of(kind, n, m) for n, m in enumerate(desc.media, 1)]
    _check_bundle(kind, desc, sections)
    for n, (m, section) in enumerate(zip(desc.media, sections, strict=True), 1):
        _check_section(kind, n, m, section)
    if sum(s.kind == "application" for s in sections) > 1:
        raise _refuse(kind, "has more than one m=application")
    _check_against(kind, sections, list(negotiated))
    return sections


def _mid_of(kind: str, n: int, m: aiortc_sdp.MediaDescription) -> Section:
    if not m.rtp.muxId:
        raise _refuse(kind, f"'s m-line {n} has no a=mid")
    return Section(m.kind, m.rtp.muxId)


def _check_section(kind: str, n: int, m: aiortc_sdp.MediaDescription, s: Section) -> None:
    """One m-line's own requirements (``n`` counts from 1)."""
    where = f"'s m-line {n} (mid {s.mid})"
    if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
        raise _refuse(kind, f"{where} has no a=ice-ufrag and a=ice-pwd")
    if m.dtls is None:
        raise _refuse(kind, f"{where} has no a=setup")
    if kind == "answer" and m.dtls.role not in ("client", "server"):
        raise _refuse(kind, f"{where}: a=setup must be active or passive in an answer")
    if not any(f.algorithm.lower() in X509_DIGEST_ALGORITHMS for f in m.dtls.fingerprints):
        raise _refuse(kind, f"{where} has no a=fingerprint with sha-256, sha-384 or sha-512")
    if m.kind == "application":
        if m.profile != "DTLS/SCTP" and m.sctp_port is None:
            raise _refuse(kind, f"{where} has no a=sctp-port")
        return
    if m.direction is None:
        raise _refuse(kind, f"{where} has no direction (a=sendrecv, sendonly, recvonly…)")
    if not m.rtcp_mux:
        raise _refuse(kind, f"{where} has no a=rtcp-mux")
    if len(m.rtp.codecs) > 64:
        raise _refuse(kind, f"{where} has over 64 codecs")
    try:
        common = find_common_codecs(CODECS[m.kind], m.rtp.codecs)
    except PARSER_ERRORS as exc:
        raise _refuse(kind, f"{where}: a codec's parameters are unusable ({exc})") from exc
    if not common:
        names = ", ".join(sorted({c.mimeType for c in CODECS[m.kind]})) or "none"
        raise _refuse(kind, f"{where} has no codec the server speaks ({names})")


def _check_bundle(kind: str, desc: aiortc_sdp.SessionDescription, sections: list[Section]) -> None:
    mids = [s.mid for s in sections]
    if len(set(mids)) != len(mids):
        dup = next(m for m in mids if mids.count(m) > 1)
        raise _refuse(kind, f"has two m-lines with mid {_show(dup)}")
    bundles = [g for g in desc.group if g.semantic == "BUNDLE"]
    if len(bundles) > 1:
        raise _refuse(kind, "has more than one a=group:BUNDLE")
    items = [str(i) for i in bundles[0].items] if bundles else []
    for item in items:
        if item not in mids:
            why = f"'s a=group:BUNDLE names mid {_show(item)}, which no m-line has"
            raise _refuse(kind, why)
    if len(set(items)) != len(items):
        raise _refuse(kind, "'s a=group:BUNDLE names a mid twice")
    if len(sections) > 1:
        for m, s in zip(desc.media, sections, strict=True):
            if m.port != 0 and s.mid not in items:
                why = f"'s m-line with mid {_show(s.mid)} is not in its a=group:BUNDLE"
                raise _refuse(kind, why)


def _check_against(kind: str, sections: list[Section], negotiated: list[Section]) -> None:
    if kind == "answer" and negotiated and sections != negotiated:
        got, want = ", ".join(map(str, sections)), ", ".join(map(str, negotiated))
        raise _refuse(kind, f"'s m-lines ({got}) do not match the offer's ({want})")
    if kind == "offer" and sections[: len(negotiated)] != negotiated:
        want = ", ".join(map(str, negotiated))
        raise _refuse(kind, f"must keep the negotiated m-lines first, in order ({want})")


def sections_of(sdp: str) -> list[Section]:
    """The m-lines of a description this server made (aiortc's own, so well formed)."""
    out: list[Section] = []
    kind = ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=mid:") and kind:
            out.append(Section(kind, line[6:]))
            kind = ""
    return out
