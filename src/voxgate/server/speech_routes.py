"""``ws /v1/tts/{engine}`` and ``ws /v1/stt/{engine}``: the unified speech protocol.

Aliases ``…/{engine}-websocket-stream``. The gateway is ``server.default_gateway``;
its token comes by header (``voxgate-authorization``, ``cf-aig-authorization`` or
``Authorization: Bearer``) or by a ``voxgate-authorization.<token>`` subprotocol entry.
Unknown engines get 404, a bad token 401, a full gateway 429 — all before the upgrade.

``{engine}`` is an engine, a ``[speech.aliases]`` name or a built-in alias (SLNG's
``orpheus``, ``kokoro``… → ``speech.default_tts``, ``kyutai`` → ``speech.default_stt``;
see ``EngineRegistry.resolve``); the usage record names the engine, and the alias as
its ``model``.

For a cloud engine named as itself the first message decides: a unified
``init``/``start`` runs the unified protocol; anything else is the provider's own
protocol, and the session becomes a relay to that provider (with the stored key), the
first message relayed first. On any other TTS address a first message in SLNG's native
form (plain text, ``{"type": "control", …}``, a settings object; see
``protocols/speech/orpheus.py``) runs that form on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from aiohttp import hdrs, web

from voxgate.core.limits import CloseCode
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.core.speech import STTSession, TTSSession
from voxgate.core.speech_wire import TTSWire
from voxgate.engines.cloud import DEFAULTS
from voxgate.errors import NotFound, UpstreamError
from voxgate.protocols.relay.auth import (
    Credentials,
    bearer,
    parse_subprotocols,
    read_credentials,
)
from voxgate.protocols.relay.providers import Provider, build_upstream_request
from voxgate.protocols.speech import orpheus
from voxgate.protocols.speech.unified import STTProtocol, TTSProtocol
from voxgate.server.auth import authenticate, own_credential
from voxgate.server.live import Live
from voxgate.server.services import SERVICES, Services
from voxgate.server.sessions import (
    UpgradeRequired,
    accept_client,
    open_session,
    run_live,
)
from voxgate.server.speech_service import stt_engine, tts_engine
from voxgate.settings import Limits, ProviderAuth
from voxgate.transports.relay import Ending, RelayConnection
from voxgate.transports.speech import SpeechConnection, SpeechEnding
from voxgate.transports.ws import AiohttpChannel, Closed, GatewayWebSocketResponse

log = logging.getLogger("voxgate.speech")

_SUFFIX = "-websocket-stream"
#: Credentials of a local engine: the gateway token only, no provider key.
_LOCAL = Provider(name="local", base_url="", auth=ProviderAuth())


def _engine_name(request: web.Request) -> str:
    name = request.match_info["engine"]
    return name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name


async def tts(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "tts")


async def stt(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "stt")


async def _serve(request: web.Request, kind: str) -> web.StreamResponse:
    s = request.app[SERVICES]
    requested = _engine_name(request)
    # an engine, a [speech.aliases] name, or another catalogue's (SLNG's orpheus, kyutai…)
    found = s.engines.resolve(requested, kind)
    if found is None:
        names = s.engines.tts_names() if kind == "tts" else s.engines.stt_names()
        raise NotFound(
            f"unknown {kind.upper()} engine {requested[:128]!r} (engines: {', '.join(names)}; "
            "or a name of [speech.aliases] or of the built-in aliases)"
        )
    name = found
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        raise UpgradeRequired()
    gw = s.settings.speech_gateway()
    provider = s.providers.get(s.engines.provider_of(name)) or _LOCAL
    offered = parse_subprotocols(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ()))
    creds = read_credentials(
        provider,
        request.headers,
        offered,
        request.query,
        is_gateway_token=await own_credential(s, request),
    )
    presented = creds.gateway_token
    auth_header = request.headers.get(hdrs.AUTHORIZATION, "")
    if presented is None and auth_header[:7].lower() == "bearer ":
        presented = bearer(auth_header)
    try:
        token = authenticate(gw, presented)
    except Exception:
        s.metrics.handshake_rejections[(401, "auth")] += 1
        raise
    limits = token.limits if token is not None and token.limits is not None else gw.limits
    info = SessionInfo(
        session_id=s.ids("sess"),
        account=gw.account,
        gateway=gw.name,
        provider=name,
        model=requested if requested != name else None,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
        kind=kind,
    )
    stored_key = gw.keys[provider.name].value if provider.name in gw.keys else None
    asked = _Asked(kind, name, requested, provider, creds, stored_key)
    async with open_session(s, info, gw=gw, token=token, limits=limits) as live:
        subprotocol = creds.gateway_entry or (offered[0] if offered else None)
        ws = await accept_client(request, s, limits, subprotocol)
        await _run(request, s, live, ws, asked)
        return ws


@dataclass(frozen=True)
class _Asked:
    """What a speech client asked for, as its handshake said."""

    kind: str  # tts or stt
    name: str  # the engine that runs
    requested: str  # the engine or alias the client named
    provider: Provider
    creds: Credentials
    stored_key: str | None  # the gateway's key for the provider

    @property
    def key(self) -> str | None:
        """The provider key the session uses: the client's own, else the stored one."""
        return self.creds.client_key if self.creds.client_key is not None else self.stored_key


async def _run(
    request: web.Request, s: Services, live: Live, ws: GatewayWebSocketResponse, asked: _Asked
) -> None:
    """Run an accepted speech session: a provider's own protocol relayed, or ours."""
    kind, name, requested, provider = asked.kind, asked.name, asked.requested, asked.provider
    creds, key, stored_key = asked.creds, asked.key, asked.stored_key
    counters, limits = live.counters, live.counters.limits
    client = AiohttpChannel(ws)
    first: str | bytes | None = None
    native = False
    if provider is not _LOCAL or kind == "tts":
        got = await _first_message(client, limits, s.stopping)
        if isinstance(got, SpeechEnding):  # the server shuts down: not a session yet
            live.end.set(got.code, None, got.error)
            return
        first = got
        # a cloud engine named as itself relays its provider's own protocol; any other
        # TTS address takes SLNG's native form (plain text, control messages)
        if (
            first is not None
            and provider is not _LOCAL
            and requested == name
            and not is_unified_first_message(first, kind)
        ):
            relayed = await _relay_native(
                request, s, counters, client, provider, creds, stored_key, first
            )
            live.end.set(relayed.client_code, relayed.upstream_code, relayed.error)
            return
        native = first is not None and kind == "tts" and orpheus.looks_native(first)
    conn = SpeechConnection(
        counters, client, close_timeout=s.settings.server.shutdown_timeout_seconds
    )
    query = request.query if native else None
    ending = await run_live(
        s,
        ws,
        conn,
        lambda: _make_session(s, kind, name, counters, conn, limits, key, query),
        first=first,
    )
    live.end.set(ending.code, None, ending.error)


#: The close for a client whose first message is still awaited when the server shuts down.
_DRAINED = SpeechEnding(CloseCode.SERVICE_RESTART, "server shutting down")


async def _first_message(
    client: AiohttpChannel, limits: Limits, draining: asyncio.Event
) -> str | bytes | SpeechEnding | None:
    """The client's first frame (``None`` if it closed or stayed silent past the idle limit).

    If the server begins to shut down meanwhile, the client is closed with 1012 and that
    ending is returned: no session is live yet for the shutdown to stop."""
    receiving = asyncio.ensure_future(client.receive())
    drained = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait(
            (receiving, drained), timeout=limits.idle_seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in (receiving, drained):
            waiter.cancel()
        await asyncio.gather(receiving, drained, return_exceptions=True)
    if draining.is_set():
        with contextlib.suppress(ConnectionError, RuntimeError):  # a client already gone
            await client.close(_DRAINED.code, _DRAINED.reason)
        return _DRAINED
    if receiving.cancelled():  # silent past the idle limit
        return None
    data = receiving.result()
    return None if isinstance(data, Closed) else data


async def _relay_native(
    request: web.Request,
    s: Services,
    counters: RelaySession,
    client: AiohttpChannel,
    provider: Provider,
    creds: Credentials,
    stored_key: str | None,
    first: str | bytes,
) -> Ending:
    """Relay a client that speaks the provider's own protocol, ``first`` relayed first."""
    kind = counters.info.kind
    path = {"deepgram": "speak" if kind == "tts" else "listen", "cartesia": "tts/websocket"}.get(
        provider.name, ""
    )
    if provider.name == "elevenlabs":
        voice = request.query.get("voice_id") or _engine_option(s, provider.name, "voice_id")
        path = f"text-to-speech/{voice}/stream-input"
    req = build_upstream_request(
        provider,
        path=path,
        query_string=request.raw_path.partition("?")[2],
        client_headers=request.headers.items(),
        upstream_subprotocols=creds.upstream_subprotocols,
        client_key=creds.client_key,
        client_key_param=creds.client_key_param,
        drop_query=creds.drop_query,
        stored_key=stored_key,
    )
    try:
        upstream = await s.connector.connect(req, heartbeat=counters.limits.heartbeat_seconds)
    except UpstreamError as exc:
        s.metrics.upstream_failures[(provider.name, exc.reason)] += 1
        code = _refusal_code(exc)
        await client.close(code, exc.public_message)
        return Ending(code, exc.public_message, 1006, "", error=f"upstream_{exc.reason}")
    counters.client_frame(asyncio.get_running_loop().time(), first)
    up = AiohttpChannel(upstream)
    if isinstance(first, str):
        await up.send_text(first)
    else:
        await up.send_bytes(first)
    conn = RelayConnection(
        counters, client, up, close_timeout=s.settings.server.shutdown_timeout_seconds
    )
    s.live.add(conn)
    if s.stopping.is_set():  # the server began to shut down during the dial
        conn.stop()
    s.metrics.speech_opened(counters)
    try:
        ending = await conn.run()
    finally:
        s.live.discard(conn)
        s.metrics.speech_closed(counters, 0)
    return ending


def _refusal_code(exc: UpstreamError) -> int:
    """The client's close code when the provider refused or could not be reached.

    A 4xx refusal (a wrong key, a rate limit, an unknown voice) would only be repeated:
    1008, which clients do not reconnect after. Unreachable, a timeout or a 5xx: 1011,
    worth a retry."""
    status = exc.upstream_status
    if status is not None and 400 <= status < 500 and status != 408:
        return CloseCode.POLICY_VIOLATION
    return CloseCode.INTERNAL_ERROR


def _engine_option(s: Services, provider: str, option: str) -> str:
    for engine in s.settings.speech.engines.values():
        if engine.type == provider and option in engine.options:
            return str(engine.options[option])
    return DEFAULTS[provider][option]


def _make_session(
    s: Services,
    kind: str,
    name: str,
    counters: RelaySession,
    conn: SpeechConnection,
    limits: Limits,
    key: str | None,
    native: Mapping[str, str] | None = None,
) -> TTSSession | STTSession:
    """``native``: the query of a TTS client that speaks SLNG's native form."""
    if kind == "tts":
        protocol: TTSWire = (
            TTSProtocol(max_text_chars=limits.max_text_chars)
            if native is None
            else orpheus.OrpheusProtocol(max_text_chars=limits.max_text_chars, query=native)
        )
        return TTSSession(
            protocol=protocol,
            engine_name=name,
            get_engine=lambda: tts_engine(s, name),
            counters=counters,
            send=conn.send,
            workers=s.engines.workers,
            ids=s.ids,
            api_key=key,
            finish=conn.finish,
        )
    return STTSession(
        protocol=STTProtocol(max_audio_bytes=limits.max_audio_chunk_bytes),
        get_engine=lambda: stt_engine(s, name),
        counters=counters,
        send=conn.send,
        workers=s.engines.workers,
        ids=s.ids,
        fail=conn.fail,
        api_key=key,
    )


def is_unified_first_message(data: str | bytes, kind: str) -> bool:
    """Whether a cloud engine's first client message speaks the unified protocol."""
    if not isinstance(data, str):
        return False
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        return True  # not the provider's either: let the unified protocol name the problem
    return isinstance(msg, dict) and msg.get("type") in (
        ("init", "ping") if kind == "tts" else ("start", "ping")
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/tts/{engine}", tts)
    app.router.add_get("/v1/stt/{engine}", stt)
