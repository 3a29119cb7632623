"""Mutations of real session descriptions, for the SFU's property tests and its fuzz.

:func:`mutate` takes a valid description and a ``random.Random`` and changes one to a
few lines the way a broken or hostile client would: drops, duplicates and swaps lines,
changes numbers, inserts NUL, other control characters, non-ASCII and odd whitespace,
truncates, blows a value up, or adds a line aiortc would misread. The property tests
hand it hypothesis' ``randoms()``; the fuzz a seeded ``random.Random``.
"""

from __future__ import annotations

import random
import re

#: A real offer from aiortc 1.16 (one sending audio m-line and a data channel; its
#: candidates moved to 127.0.0.1, its sha-384/512 fingerprints left out).
AIORTC_OFFER = (
    "v=0\r\no=- 4004945918 4004945918 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1\r\na=msid-semantic:WMS *\r\n"
    "m=audio 35219 UDP/TLS/RTP/SAVPF 96 9 0 8\r\nc=IN IP4 127.0.0.1\r\na=sendonly\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=mid:0\r\n"
    "a=msid:60b0f8bc-7a19-410b-b183-1dbb504a27e9 84e7f6ae-f28c-48da-ba49-f2bd7a669ed2\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=rtcp-mux\r\n"
    "a=ssrc:268799074 cname:fad2dd17-d641-4aef-8ae7-2adc0da63cc1\r\n"
    "a=rtpmap:96 opus/48000/2\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 35219 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:hj83\r\na=ice-pwd:zbp0giLHNJC5MJWB6IM7VW\r\n"
    "a=fingerprint:sha-256 56:77:CF:56:27:18:EE:EE:32:76:AF:61:9E:6F:99:B5:DE:76:88:FC:"
    "7B:C4:6F:E7:95:07:17:E2:1A:DA:12:AC\r\na=setup:actpass\r\n"
    "m=application 53118 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 127.0.0.1\r\n"
    "a=mid:1\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
    "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 53118 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:hj83\r\na=ice-pwd:zbp0giLHNJC5MJWB6IM7VW\r\n"
    "a=fingerprint:sha-256 56:77:CF:56:27:18:EE:EE:32:76:AF:61:9E:6F:99:B5:DE:76:88:FC:"
    "7B:C4:6F:E7:95:07:17:E2:1A:DA:12:AC\r\na=setup:actpass\r\n"
)

#: A real offer from Chromium 1xx (one sending audio m-line and a data channel).
CHROMIUM_OFFER = (
    "v=0\r\no=- 6916313931330373232 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:4050048295 1 udp 2113937151 94ebc64a-84d0-4b3e-bde1-296dc8bf4286.local "
    "32995 typ host generation 0 network-cost 999\r\n"
    "a=ice-ufrag:wrGE\r\na=ice-pwd:VEwJxUyG/KDHNwa88kOUhehb\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 9C:F1:CC:25:BC:31:48:73:B1:80:55:06:D0:56:52:DB:F9:E7:C1:FA:"
    "4D:5E:44:63:FF:99:2A:9F:F4:56:0B:01\r\na=setup:actpass\r\na=mid:0\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendonly\r\n"
    "a=msid:- fe79834c-9cc4-4734-9393-a90a39929ee4\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
    "a=rtcp-xr:rcvr-rtt=all\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n"
    "a=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\n"
    "a=rtpmap:126 telephone-event/8000\r\na=ssrc:593756340 cname:5idZJI9jMTPLYYm1\r\n"
    "a=ssrc:593756340 msid:- fe79834c-9cc4-4734-9393-a90a39929ee4\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    "a=candidate:4050048295 1 udp 2113937151 94ebc64a-84d0-4b3e-bde1-296dc8bf4286.local "
    "33548 typ host generation 0 network-cost 999\r\n"
    "a=ice-ufrag:wrGE\r\na=ice-pwd:VEwJxUyG/KDHNwa88kOUhehb\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 9C:F1:CC:25:BC:31:48:73:B1:80:55:06:D0:56:52:DB:F9:E7:C1:FA:"
    "4D:5E:44:63:FF:99:2A:9F:F4:56:0B:01\r\na=setup:actpass\r\na=mid:1\r\n"
    "a=sctp-port:5000\r\na=max-message-size:262144\r\n"
)

#: Characters a hostile client puts where they do not belong.
ODD_CHARS = ["\0", "\x01", "\t", "\x0b", "\x1c", "\x7f", "\x85", "\xa0", "\u2028", "\u3000",
             "é", "€", "\U0001f600", "\r", "\n", " ", ":", "/", "=", ";", "-", "٣"]  # fmt: skip
ODD_NUMBERS = ["0", "-1", "1", "72", "127", "128", "255", "256", "65535", "65536",
               "4294967296", "18446744073709551616", "9" * 40, "1e3", "0x10", ""]  # fmt: skip
#: Lines aiortc reads, in the shapes that used to get past it.
ODD_LINES = [
    "a=group:BUNDLE 0 1 2 3",
    "a=group:BUNDLE",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96",
    "m=audio2 9 UDP/TLS/RTP/SAVPF 96",
    "m= 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "a=mid:0",
    "a=mid:",
    "a=setup:holdconn",
    "a=setup",
    "a=fmtp:97 apt=x",
    "a=fmtp:96",
    "a=rtpmap:96 opus/0",
    "a=rtpmap:96",
    "a=rtpmap:97 rtx/90000",
    "c=IN IP4 1-17.0.0.1",
    "c=IN IP6 ::1",
    "a=candidate:1 1 udp 1 10.0.0.1 9 typ host raddr x rport y",
    "a=candidate:1 1 udp",
    "a=extmap:0 urn:x",
    "a=extmap:1/bogus urn:x",
    "a=ssrc:x cname:y",
    "a=ssrc:1",
    "a=ssrc-group:FID 1 x",
    "a=sendrecv",
    "a=inactive",
    "a=recvonly",
    "a=rtcp-mux",
    "a=ice-lite",
    "a=rtcp:abc",
    "a=rtcp:9 IN IP4 x",
    "a=fingerprint:sha-1 00:11",
    "a=fingerprint:sha-256",
    "a=ice-ufrag:a b",
    "a=ice-pwd:short",
    "a=sctp-port:x",
    "a=max-message-size:-1",
    "a=msid-semantic",
    "a=rtcp-fb:96",
    "v=1",
]
_NUMBER = re.compile(r"\d+")


def _change_number(line: str, rnd: random.Random) -> str:
    spans = [m.span() for m in _NUMBER.finditer(line)]
    if not spans:
        return line
    a, b = rnd.choice(spans)
    return line[:a] + rnd.choice(ODD_NUMBERS) + line[b:]


def _insert(line: str, rnd: random.Random, text: str) -> str:
    at = rnd.randrange(len(line) + 1)
    return line[:at] + text + line[at:]


def _mutate_line(line: str, rnd: random.Random) -> str:
    op = rnd.randrange(6)
    if op == 0:
        return _change_number(line, rnd)
    if op == 1:
        return _insert(line, rnd, rnd.choice(ODD_CHARS))
    if op == 2:
        return line[: rnd.randrange(len(line) + 1)]
    if op == 3:
        return line + rnd.choice(["x", "9", " ", "é"]) * rnd.choice([1, 64, 300, 70_000])
    if op == 4 and ":" in line:
        head, _, tail = line.partition(":")
        return head + ":" + " ".join(rnd.choice(tail.split(" ") or [""]) for _ in range(2))
    return rnd.choice("vocstmabkz") + line[1:]


def mutate(sdp: str, rnd: random.Random, *, ops: int | None = None) -> str:
    """``sdp`` with 1–4 (or ``ops``) hostile changes."""
    lines = sdp.split("\r\n")
    if lines[-1] == "":
        lines.pop()
    for _ in range(ops if ops is not None else rnd.randint(1, 4)):
        i = rnd.randrange(len(lines)) if lines else 0
        op = rnd.randrange(7)
        if not lines or op == 0:
            lines.insert(i, rnd.choice(ODD_LINES))
        elif op == 1:
            del lines[i]
        elif op == 2:
            lines.insert(i, lines[i])
        elif op == 3:
            j = rnd.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = _mutate_line(lines[i], rnd)
    end = rnd.choice(["\r\n", "\r\n", "\r\n", "\n"])
    return end.join(lines) + end
