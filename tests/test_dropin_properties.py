"""Property tests of what issue 13 added: the speech wire translators (unified, Deepgram's
speak/listen/Flux, SLNG's native form) and the gateway-token rule of the relay.

- A translator given any frame, in any order, answers canonical events or raises its
  own ``MessageError`` naming the problem; nothing else escapes, and a refused frame
  does not break the next good one.
- However a client places the gateway token among its credentials, the upstream request
  never carries it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from voxgate.errors import BadRequest
from voxgate.protocols.relay.auth import read_credentials
from voxgate.protocols.relay.providers import BUILTIN_PROVIDERS, build_upstream_request
from voxgate.protocols.speech.deepgram_flux import FluxProtocol
from voxgate.protocols.speech.deepgram_listen import ListenProtocol
from voxgate.protocols.speech.deepgram_live import SpeakProtocol
from voxgate.protocols.speech.deepgram_query import listen_options
from voxgate.protocols.speech.orpheus import OrpheusProtocol, looks_native
from voxgate.protocols.speech.unified import MessageError, STTProtocol, TTSConfig, TTSProtocol

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- frames -------------------------------------------------------------------------------

TYPES = [
    # unified
    "init", "input_text", "flush", "stop", "clear", "configure", "ping", "start", "audio",
    "finalize",
    # Deepgram
    "Speak", "Flush", "Clear", "Close", "KeepAlive", "Finalize", "CloseStream", "Configure",
    # SLNG
    "control",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "text", "voice_id", "sample_rate", "encoding", "speed", "binary", "data", "action",
    "language", "context_id", "interim_results", "voice", "buffer_size", "channel",
]  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    msg: dict[str, Any] = {}
    if draw(st.booleans()):
        msg["type"] = draw(st.one_of(st.sampled_from(TYPES), json_values))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        msg[name] = draw(json_values)
    return msg


frames = st.one_of(
    # json.dumps writes NaN and 2**70 as they are: frames orjson must refuse or take
    messages().map(json.dumps),
    st.text(max_size=200),  # plain text: SLNG's form, or garbage for the others
    st.binary(max_size=300),
    st.sampled_from(["{", "[]", "null", "{}", '{"type": null}', "\x00", " " * 50, "42"]),
)


def _speak() -> SpeakProtocol:
    return SpeakProtocol(
        model="aura-2-thalia-en", config=TTSConfig(), request_id="r", max_text_chars=2000
    )


def _listen() -> ListenProtocol:
    options = listen_options({"encoding": "linear16", "sample_rate": "16000"})
    return ListenProtocol(
        options=options, model="nova-3", request_id="r", created="c", max_audio_bytes=4096
    )


def _flux() -> FluxProtocol:
    options = listen_options({"encoding": "linear16", "sample_rate": "16000"})
    return FluxProtocol(options=options, request_id="r", max_audio_bytes=4096)


TRANSLATORS: dict[str, Callable[[], Any]] = {
    "unified tts": lambda: TTSProtocol(max_text_chars=2000),
    "unified stt": lambda: STTProtocol(max_audio_bytes=4096),
    "deepgram speak": _speak,
    "deepgram listen": _listen,
    "deepgram flux": _flux,
    "slng native": lambda: OrpheusProtocol(max_text_chars=2000, query={}),
}


@SETTINGS
@given(name=st.sampled_from(sorted(TRANSLATORS)), sent=st.lists(frames, max_size=12))
def test_speech_translators_raise_only_their_own_error(name: str, sent: list[str | bytes]) -> None:
    protocol = TRANSLATORS[name]()
    problems: list[MessageError] = []
    for frame in sent:
        try:
            protocol.receive(frame)
        except MessageError as exc:
            problems.append(exc)
    assert all(exc.code and str(exc) for exc in problems)  # each names the problem


@SETTINGS
@given(frame=frames)
def test_choosing_the_tts_protocol_never_fails(frame: str | bytes) -> None:
    assert looks_native(frame) in (True, False)


# --- the gateway token never goes upstream ------------------------------------------------

TOKEN = "gwTOKEN1234"


@st.composite
def credential_places(draw: st.DrawFn, provider: str) -> tuple[list[Any], list[str], str]:
    """Headers, subprotocols and a query holding the token in places the provider reads
    keys from, beside (maybe) the client's own key and noise."""
    p = BUILTIN_PROVIDERS[provider]
    own = draw(st.sampled_from(["", "own-key-1"]))
    headers: list[tuple[str, str]] = []
    protos: list[str] = []
    query: list[str] = []
    places = (
        [("h", name, prefix) for name, prefix in p.key_headers]
        + [("s", prefix, "") for prefix in p.key_subprotocols]
        + [("q", name, "") for name in (*p.key_query, *p.moved_key_query)]
        + ([("pair", p.key_subprotocol_pair, "")] if p.key_subprotocol_pair else [])
        + [("g", "cf-aig-authorization", "Bearer "), ("g", "voxgate-authorization", "")]
    )
    for kind, where, prefix in draw(st.lists(st.sampled_from(places), max_size=4)):
        value = draw(st.sampled_from([TOKEN, TOKEN, own or TOKEN]))
        if kind in ("h", "g"):
            headers.append((where, prefix + value))
        elif kind == "s":
            protos.append(where + value)
        elif kind == "pair":
            protos.extend([where, value])
        else:
            query.append(f"{where}={value}")
    query.extend(draw(st.lists(st.sampled_from(["model=m", "alt=x", "a="]), max_size=2)))
    return headers, protos, "&".join(query)


@SETTINGS
@given(data=st.data(), provider=st.sampled_from(sorted(BUILTIN_PROVIDERS)))
def test_the_gateway_token_never_reaches_an_upstream(data: st.DataObject, provider: str) -> None:
    headers, protos, query = data.draw(credential_places(provider))
    p = BUILTIN_PROVIDERS[provider]
    # as aiohttp gives it: a repeated name keeps every value
    pairs = MultiDict(part.split("=", 1) for part in query.split("&") if part)
    creds = read_credentials(
        p, CIMultiDict(headers), tuple(protos), pairs, is_gateway_token=lambda v: v == TOKEN
    )
    assert creds.client_key != TOKEN
    try:
        req = build_upstream_request(
            p,
            path="",
            query_string=query,
            client_headers=headers,
            upstream_subprotocols=creds.upstream_subprotocols,
            client_key=creds.client_key,
            client_key_param=creds.client_key_param,
            drop_query=creds.drop_query,
            stored_key="STORED",
        )
    except BadRequest:
        return
    assert TOKEN not in repr((req.url, req.headers, req.subprotocols))
