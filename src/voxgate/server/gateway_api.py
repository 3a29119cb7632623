"""What a gateway is doing, for its dashboard (token protected, like the logs API).

``GET /v1/{account}/{gateway}/sessions``: the gateway's live sessions (relay, speech,
realtime, call agents) with their provider, duration and bytes, plus media-server counts.
``GET /v1/{account}/{gateway}/config``: the providers, engines (with TTS voices), language
models, media apps and this gateway's limits: names and addresses, never a secret.
"""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import urlsplit

from aiohttp import web

from voxgate import __version__
from voxgate.core.relay import RelaySession
from voxgate.core.sfu.agent import CallAgent
from voxgate.engines.base import EngineError
from voxgate.errors import NotFound
from voxgate.server.app import SERVICES, Services, json_response
from voxgate.server.auth import authenticate, token_from_headers
from voxgate.server.speech_service import cloud_tts
from voxgate.settings import GatewaySettings


def request_gateway(request: web.Request) -> GatewaySettings:
    """The gateway named in the path, after checking the request's token.

    Raises NotFound (404) for an unknown one, AuthenticationFailed (401)."""
    s = request.app[SERVICES]
    account, gateway = request.match_info["account"], request.match_info["gateway"]
    gw = s.settings.gateway(account, gateway)
    if gw is None:
        raise NotFound(f"unknown account or gateway {account}/{gateway}")
    authenticate(gw, token_from_headers(request.headers, allow_authorization=True))
    return gw


def _session(counters: RelaySession, now: float) -> dict[str, object]:
    info = counters.info
    return {
        "id": info.session_id,
        "kind": info.kind,
        "provider": info.provider,
        "model": info.model,
        "token": info.token_name,
        "started_at": counters.started_wall,
        "duration_seconds": round(max(0.0, now - counters.started_wall), 3),
        "client_bytes": counters.client_bytes,
        "upstream_bytes": counters.upstream_bytes,
        "client_messages": counters.client_frames,
        "upstream_messages": counters.upstream_frames,
        "audio_seconds": round(counters.audio_seconds, 3),
        "characters": counters.characters,
    }


def live_counters(s: Services) -> list[RelaySession]:
    """The meters of every live session of every kind, oldest first."""
    out = [c.session for c in s.live] + [c.counters for c in s.live_speech]
    out += [a.counters for a in s.media.agents.values() if isinstance(a, CallAgent) and a.counters]
    return sorted(out, key=lambda c: c.started_wall)


async def list_sessions(request: web.Request) -> web.Response:
    gw = request_gateway(request)
    s = request.app[SERVICES]
    now = s.clock.wall()
    sessions = [
        _session(c, now)
        for c in live_counters(s)
        if (c.info.account, c.info.gateway) == (gw.account, gw.name)
    ]
    media = s.media
    return json_response(
        {
            "sessions": sessions,
            "count": len(sessions),
            "media": {
                "sessions": len(media.sessions),
                "adapters": len(media.adapters),
                "agents": len(media.agents),
            },
        }
    )


def _address(url: str) -> str:
    """A provider address without user info or query, which may carry keys."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _tts(s: Services, name: str) -> dict[str, object]:
    entry: dict[str, object] = {"name": name, "type": s.engines.type_of(name)}
    provider = s.engines.provider_of(name)
    try:
        engine = cloud_tts(s, name) if provider else s.engines.describe_tts(name)
    except EngineError as exc:
        return {**entry, "available": False, "reason": exc.public_message, "voices": []}
    caps = engine.capabilities
    voices = [{"id": v.id, "name": v.name, "language": v.language} for v in caps.voices]
    return {**entry, "available": True, "local": caps.local, "voices": voices}


async def gateway_config(request: web.Request) -> web.Response:
    gw = request_gateway(request)
    s = request.app[SERVICES]
    sp = s.settings.speech
    loaded = s.engines.loaded()
    stt = [
        {"name": n, "type": s.engines.type_of(n), "local": not s.engines.provider_of(n)}
        for n in s.engines.stt_names()
    ]
    return json_response(
        {
            "version": __version__,
            "gateway": {
                "account": gw.account,
                "name": gw.name,
                "tokens": [t.name for t in gw.tokens],
                "keys": sorted(name for name, key in gw.keys.items() if key.value),
                "limits": asdict(gw.limits),
                "capture_payloads": gw.capture_payloads,
            },
            "providers": [
                {
                    "name": p.name,
                    "url": _address(p.base_url),
                    "key": bool(p.name in gw.keys and gw.keys[p.name].value),
                }
                for p in sorted(s.providers.values(), key=lambda p: p.name)
            ],
            "engines": {
                "default_tts": sp.default_tts,
                "default_stt": sp.default_stt,
                "loaded": loaded,
                "tts": [_tts(s, n) for n in s.engines.tts_names()],
                "stt": stt,
            },
            "llm": [{"name": n, "url": _address(c.base_url)} for n, c in s.settings.llm.items()],
            "realtime": {
                "default_model": s.settings.realtime.default_model,
                "openai_names": s.settings.realtime.openai_names,
            },
            "apps": [{"name": a.name, "open": a.open} for a in s.settings.apps.values()],
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/{account}/{gateway}/sessions", list_sessions)
    app.router.add_get("/v1/{account}/{gateway}/config", gateway_config)
