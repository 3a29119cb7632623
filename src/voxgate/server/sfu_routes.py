"""The media server's HTTP API (spec/sfu.md): sessions, tracks, WebSocket adapters, agents.

Every route is under ``/v1/apps/{appId}`` and takes ``Authorization: Bearer <app
secret>``. Errors are ``{errorCode, errorDescription}`` bodies, as Cloudflare's API
answers, never the gateway's ``{error: …}`` shape. Whatever a client sends is answered
with a 4xx that names the problem; a 5xx (``internal_error``) is a fault of the server
and is logged with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from voxgate.core.sfu.adapters import IngestAdapter, StreamAdapter
from voxgate.core.sfu.session import TrackRequest
from voxgate.errors import SfuError
from voxgate.server.services import Services, json_response
from voxgate.server.sfu_service import read_json, sfu_handler
from voxgate.transports.dial import DialError

log = logging.getLogger("voxgate.sfu")


def session_description(body: dict[str, Any], want: str | None = None) -> str | None:
    sd = body.get("sessionDescription")
    if sd is None:
        return None
    if (
        not isinstance(sd, dict)
        or sd.get("type") not in ("offer", "answer")
        or not isinstance(sd.get("sdp"), str)
    ):
        raise SfuError(400, "invalid_session_description", "sessionDescription must be {type, sdp}")
    if want is not None and sd["type"] != want:
        raise SfuError(400, "invalid_session_description", f"sessionDescription must be an {want}")
    return str(sd["sdp"])


def _track_requests(body: dict[str, Any], *, allow_empty: bool) -> list[TrackRequest]:
    tracks = body.get("tracks", [])
    if not isinstance(tracks, list) or (not tracks and not allow_empty):
        raise SfuError(400, "invalid_params", "tracks must be a non-empty list")
    out = []
    for i, t in enumerate(tracks):
        if not isinstance(t, dict):
            raise SfuError(400, "invalid_params", f"tracks[{i}] must be an object")
        loc, name = t.get("location"), t.get("trackName")
        if loc not in ("local", "remote"):
            raise SfuError(400, "invalid_params", f"tracks[{i}].location must be local or remote")
        if not isinstance(name, str) or not name or len(name) > 256:
            raise SfuError(400, "invalid_params", f"tracks[{i}].trackName must be a string")
        mid, sid = t.get("mid"), t.get("sessionId")
        if mid is not None and not isinstance(mid, str):
            raise SfuError(400, "invalid_params", f"tracks[{i}].mid must be a string")
        if loc == "remote" and not isinstance(sid, str):
            raise SfuError(400, "invalid_params", f"tracks[{i}].sessionId is required")
        if loc == "local" and mid is None and not body.get("autoDiscover"):
            raise SfuError(400, "invalid_params", f"tracks[{i}].mid is required")
        out.append(TrackRequest(loc, name, mid, sid if loc == "remote" else None))
    return out


@sfu_handler
async def new_session(request: web.Request, s: Services, app_id: str) -> web.Response:
    body = await read_json(request)
    offer = session_description(body, "offer")
    session = s.media.new_session(app_id)
    out: dict[str, Any] = {"sessionId": session.id}
    if offer is not None:
        try:
            answer = await session.answer(offer)
        except BaseException:  # a session whose offer failed is not kept, half-built
            await s.media.close_session(session.id)
            raise
        out["sessionDescription"] = {"type": "answer", "sdp": answer}
    return json_response(out, status=201)


@sfu_handler
async def new_tracks(request: web.Request, s: Services, app_id: str) -> web.Response:
    session = s.media.session(app_id, request.match_info["sid"])
    body = await read_json(request)
    offer = session_description(body, "offer")
    auto = bool(body.get("autoDiscover"))
    reqs = _track_requests(body, allow_empty=auto)
    local = [r for r in reqs if r.location == "local"]
    remote = [r for r in reqs if r.location == "remote"]
    if (local or auto) and remote:
        raise SfuError(400, "invalid_params", "push local and pull remote tracks in two requests")
    if local or auto:
        if offer is None:
            raise SfuError(400, "invalid_params", "local tracks need a sessionDescription offer")
        answer, results = await session.push(offer, local, auto)
        return json_response(
            {
                "requiresImmediateRenegotiation": False,
                "sessionDescription": {"type": "answer", "sdp": answer},
                "tracks": [r.render() for r in results],
            }
        )
    if offer is not None:
        raise SfuError(400, "invalid_params", "pulling remote tracks takes no offer")
    # a session on another node: one shared feed of each track, held while pulling
    wanted = [(r.session_id or "", r.track_name) for r in remote]
    async with s.media.reach(app_id, wanted) as refused:
        server_offer, results = await session.pull(remote, refused)
    out: dict[str, Any] = {
        "requiresImmediateRenegotiation": server_offer is not None,
        "tracks": [r.render() for r in results],
    }
    if server_offer is not None:
        out["sessionDescription"] = {"type": "offer", "sdp": server_offer}
    return json_response(out)


@sfu_handler
async def renegotiate(request: web.Request, s: Services, app_id: str) -> web.Response:
    session = s.media.session(app_id, request.match_info["sid"])
    answer = session_description(await read_json(request), "answer")
    if answer is None:
        raise SfuError(400, "invalid_session_description", "sessionDescription is required")
    await session.renegotiate(answer)
    return json_response({})


def _ids(body: dict[str, Any], key: str) -> list[str]:
    """``tracks: [{<key>: str}, …]``, non-empty, as the close requests take."""
    tracks = body.get("tracks")
    if not isinstance(tracks, list) or not tracks:
        raise SfuError(400, "invalid_params", f"tracks must be a non-empty list of {{{key}}}")
    for i, t in enumerate(tracks):
        if not isinstance(t, dict) or not isinstance(t.get(key), str):
            raise SfuError(400, "invalid_params", f"tracks[{i}].{key} must be a string")
    return [t[key] for t in tracks]


@sfu_handler
async def close_tracks(request: web.Request, s: Services, app_id: str) -> web.Response:
    session = s.media.session(app_id, request.match_info["sid"])
    body = await read_json(request)
    mids = _ids(body, "mid")
    offer = session_description(body, "offer")
    answer, results = await session.close_tracks(mids, offer)
    out: dict[str, Any] = {"requiresImmediateRenegotiation": False, "tracks": results}
    if answer is not None:
        out["sessionDescription"] = {"type": "answer", "sdp": answer}
    return json_response(out)


@sfu_handler
async def get_session(request: web.Request, s: Services, app_id: str) -> web.Response:
    session = s.media.session(app_id, request.match_info["sid"])
    return json_response(
        {
            "tracks": session.status(s.media.settings.stale_seconds),
            "connectionState": session.connection_state,
        }
    )


# -- adapters ---------------------------------------------------------------------------


@sfu_handler
async def new_adapters(request: web.Request, s: Services, app_id: str) -> web.Response:
    body = await read_json(request)
    items = body.get("tracks")
    if not isinstance(items, list) or not 1 <= len(items) <= 4:
        raise SfuError(400, "invalid_params", "tracks must list 1 to 4 adapters")
    checked = [_adapter_item(i, t) for i, t in enumerate(items)]
    streams = [(t["sessionId"], t["trackName"]) for t in checked if t["location"] == "remote"]
    async with s.media.reach(app_id, streams) as refused:  # tracks on other nodes too
        # A stream adapter of a track that does not exist is the request's 404 (spec).
        for sid, name in streams:
            if (sid, name) not in refused:
                s.media.track(app_id, sid, name)
        results = [await _open_adapter(s, app_id, item, refused) for item in checked]
    ok = any("errorCode" not in r for r in results)
    return json_response({"tracks": results}, status=200 if ok else 503)


def _adapter_item(i: int, t: object) -> dict[str, Any]:
    if not isinstance(t, dict):
        raise SfuError(400, "invalid_params", f"tracks[{i}] must be an object")
    loc, name, endpoint = t.get("location"), t.get("trackName"), t.get("endpoint")
    if loc not in ("local", "remote"):
        raise SfuError(400, "invalid_params", f"tracks[{i}].location must be local or remote")
    if not isinstance(name, str) or not name:
        raise SfuError(400, "invalid_params", f"tracks[{i}].trackName must be a string")
    if not isinstance(endpoint, str) or not endpoint.startswith(("ws://", "wss://")):
        raise SfuError(400, "invalid_params", f"tracks[{i}].endpoint must be a ws:// or wss:// URL")
    if loc == "local":
        if t.get("inputCodec", "pcm") != "pcm" or t.get("mode", "buffer") != "buffer":
            why = f"tracks[{i}]: ingest takes inputCodec pcm and mode buffer"
            raise SfuError(400, "invalid_params", why)
    else:
        if t.get("outputCodec", "pcm") != "pcm":
            raise SfuError(400, "invalid_params", f"tracks[{i}].outputCodec must be pcm")
        if not isinstance(t.get("sessionId"), str):
            raise SfuError(400, "invalid_params", f"tracks[{i}].sessionId is required")
    return t


async def _open_adapter(
    s: Services, app_id: str, item: dict[str, Any], refused: Mapping[tuple[str, str], SfuError]
) -> dict[str, Any]:
    endpoint: str = item["endpoint"]
    name: str = item["trackName"]
    out: dict[str, Any] = {"trackName": name, "endpoint": endpoint}
    no = refused.get((item["sessionId"], name)) if item["location"] == "remote" else None
    if no is not None:  # on a node that cannot be reached, or that refused this one
        return out | {"errorCode": no.code, "errorDescription": no.public_message}
    adapter: IngestAdapter | StreamAdapter
    try:
        if item["location"] == "local":
            adapter = await s.media.open_ingest(s.dial, app_id, name, endpoint)
        else:
            adapter = await s.media.open_stream(s.dial, app_id, item["sessionId"], name, endpoint)
    except DialError as exc:
        return out | {"errorCode": exc.code, "errorDescription": exc.public_message}
    return out | {"adapterId": adapter.id, "sessionId": adapter.session_id}


@sfu_handler
async def close_adapters(request: web.Request, s: Services, app_id: str) -> web.Response:
    out = []
    for aid in _ids(await read_json(request), "adapterId"):
        adapter = s.media.adapters.get(aid)
        if adapter is not None and adapter.app_id == app_id:
            processed = await adapter.close()
            out.append({"adapterId": aid, "bytesProcessed": processed or 0})
        elif aid in s.media.closed_ids:
            out.append({"adapterId": aid})
        else:
            out.append(
                {
                    "adapterId": aid,
                    "errorCode": "adapter_not_found",
                    "errorDescription": f"no adapter {aid!r}",
                }
            )
    return json_response({"tracks": out})


def add_routes(app: web.Application) -> None:
    base = "/v1/apps/{app}"
    app.router.add_post(base + "/sessions/new", new_session)
    app.router.add_post(base + "/sessions/{sid}/tracks/new", new_tracks)
    app.router.add_put(base + "/sessions/{sid}/renegotiate", renegotiate)
    app.router.add_put(base + "/sessions/{sid}/tracks/close", close_tracks)
    app.router.add_get(base + "/sessions/{sid}", get_session)
    app.router.add_post(base + "/adapters/websocket/new", new_adapters)
    app.router.add_post(base + "/adapters/websocket/close", close_adapters)
