"""The address side of Deepgram's live protocols, sans-I/O: model names, the credentials
of a handshake, and the query strings of ``listen`` and ``speak``.

What is wrong in a query string raises :class:`BadRequest` (HTTP 400, before the
upgrade), naming the parameter. Parameters for features voxgate's engines do not have
are accepted and ignored. Sources: ``deepgram-sdk`` 7.17 (``listen/v1/client.py``,
``speak/v1/client.py``: the query parameters and the ``Authorization: Token`` header its
client sends), Deepgram's documentation (the ``token, <key>`` subprotocol pair for
browsers), Cloudflare AI Gateway's realtime WebSockets page (``@cf/deepgram/…`` models).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from voxgate.audio import Encoding
from voxgate.errors import BadRequest
from voxgate.protocols.relay.auth import read_credentials
from voxgate.protocols.relay.providers import BUILTIN_PROVIDERS
from voxgate.protocols.speech.unified import MAX_RATE, MIN_RATE, STTConfig, TTSConfig

#: Workers AI's names for Deepgram's models (``@cf/deepgram/nova-3``).
WORKERS_AI_PREFIX = "@cf/deepgram/"
ENCODINGS = {"linear16": Encoding.PCM16, "mulaw": Encoding.MULAW, "alaw": Encoding.ALAW}
_NAMESPACE = uuid.UUID("6f1c5cf4-4b4e-4e59-9d0b-3f0f3b1a7e21")


def model_candidates(model: str) -> list[str]:
    """The names under which ``model`` may be known, most specific first: Deepgram's and
    Workers AI's names carry a voice, language or domain after the family
    (``aura-2-thalia-en`` → ``aura-2-thalia``, ``aura-2``; ``@cf/deepgram/nova-3`` →
    ``nova-3``), so each shorter prefix is tried in turn, down to the version: a part
    with a digit is never dropped (``nova-9`` is not ``nova``)."""
    name = model.removeprefix(WORKERS_AI_PREFIX)
    out = [model] if name != model else []
    while name:
        out.append(name)
        name, _, part = name.rpartition("-")
        if any(c.isdigit() for c in part):
            break
    return out


def derived_uuid(*parts: str) -> str:
    """A stable UUID for a name (Deepgram's ids are UUIDs; ours derive from session ids)."""
    return str(uuid.uuid5(_NAMESPACE, "\0".join(parts)))


# --- handshake ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """The gateway token a Deepgram client presented, and the subprotocol to answer."""

    token: str | None
    subprotocol: str | None


def read_handshake(headers: Mapping[str, str], offered: tuple[str, ...]) -> Handshake:
    """Deepgram's ways to present a key, here the gateway token: ``Authorization: Token
    <t>`` or ``Bearer <t>`` (what its SDKs send), or the subprotocol pair ``token, <t>``
    (browsers); also the gateway headers and subprotocol entries. Read as the relay reads
    a Deepgram client (:func:`~voxgate.protocols.relay.auth.read_credentials`): no engine
    here has an upstream, so the key is the token. ``headers`` must be case-insensitive.
    The answer to a pair is ``token``, never the secret."""
    creds = read_credentials(BUILTIN_PROVIDERS["deepgram"], headers, offered, {})
    if "token" in creds.key_entries:
        answer: str | None = "token"
    else:
        answer = creds.gateway_entry or (offered[0] if offered else None)
    return Handshake(creds.gateway_token or creds.client_key, answer)


# --- the query string --------------------------------------------------------------------


def _flag(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false, got {value[:40]!r}")


def _int(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(
            f"query parameter {name!r} must be an integer, got {value[:40]!r}"
        ) from None
    if not low <= number <= high:
        raise BadRequest(f"query parameter {name!r} must be {low}–{high}, got {number}")
    return number


def _encoding(query: Mapping[str, str], default: str | None) -> Encoding:
    value = query.get("encoding", default)
    if value is None:
        raise BadRequest(
            "query parameter 'encoding' is required: voxgate takes raw audio "
            "(linear16, mulaw or alaw, with sample_rate), not containers"
        )
    if value not in ENCODINGS:
        raise BadRequest(f"encoding {value[:40]!r} is not supported (linear16, mulaw, alaw)")
    return ENCODINGS[value]


def _text(query: Mapping[str, str], name: str, max_len: int) -> str | None:
    value = query.get(name)
    if value is not None and len(value) > max_len:
        raise BadRequest(f"query parameter {name!r} is longer than {max_len} characters")
    return value


@dataclass(frozen=True)
class ListenOptions:
    model: str | None
    config: STTConfig
    punctuate: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None


def listen_options(query: Mapping[str, str]) -> ListenOptions:
    """The options of a ``listen`` query string; raises :class:`BadRequest` naming a bad one.
    Parameters for features voxgate's engines do not have (``diarize``, ``keyterm``,
    ``endpointing``, ``numerals`` …) are accepted and ignored."""
    encoding = _encoding(query, None)
    rate = _int(query, "sample_rate", MIN_RATE, MAX_RATE)
    if rate is None:
        raise BadRequest(
            f"query parameter 'sample_rate' is required with encoding={query['encoding']}"
        )
    channels = _int(query, "channels", 1, 16)
    if channels not in (None, 1):
        raise BadRequest(f"channels={channels} is not supported: send mono audio (channels=1)")
    _int(query, "utterance_end_ms", 0, 60_000)
    endpointing = query.get("endpointing")
    if endpointing is not None and endpointing.lower() != "false":
        _int(query, "endpointing", 0, 60_000)
    return ListenOptions(
        model=_text(query, "model", 128),
        config=STTConfig(
            sample_rate=rate,
            encoding=encoding,
            language=_text(query, "language", 32),
            interim_results=_flag(query, "interim_results"),
            binary=True,
        ),
        punctuate=_flag(query, "punctuate") or _flag(query, "smart_format"),
        vad_events=_flag(query, "vad_events"),
        utterance_end_ms=_int(query, "utterance_end_ms", 0, 60_000),
    )


@dataclass(frozen=True)
class SpeakOptions:
    model: str | None
    config: TTSConfig


def speak_options(query: Mapping[str, str]) -> SpeakOptions:
    """The options of a ``speak`` query string: ``encoding`` (``linear16`` default,
    ``mulaw``, ``alaw``), ``sample_rate`` (24000 for linear16, else 8000), ``speed``."""
    encoding = _encoding(query, "linear16")
    default_rate = 24000 if encoding is Encoding.PCM16 else 8000
    rate = _int(query, "sample_rate", MIN_RATE, MAX_RATE) or default_rate
    speed = 1.0
    if "speed" in query:
        try:
            speed = float(query["speed"])
        except ValueError:
            raise BadRequest(
                f"query parameter 'speed' must be a number, got {query['speed'][:40]!r}"
            ) from None
        if not 0.25 <= speed <= 4.0:
            raise BadRequest(f"query parameter 'speed' must be 0.25–4.0, got {speed:g}")
    return SpeakOptions(
        model=_text(query, "model", 128),
        config=TTSConfig(sample_rate=rate, encoding=encoding, speed=speed, binary=True),
    )
