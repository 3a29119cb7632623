"""What the media server's routes share (``/v1/apps/{appId}/…``, spec/sfu.md): app
authentication, the spec's error bodies, and the JSON body reader. The SFU and agent
route modules import this, never each other."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from voxgate.errors import SfuError
from voxgate.protocols.relay.auth import bearer, token_matches
from voxgate.server.services import SERVICES, Services, json_response

log = logging.getLogger("voxgate.sfu")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 256 * 1024


def sfu_error(status: int, code: str, description: str) -> web.Response:
    return json_response({"errorCode": code, "errorDescription": description}, status=status)


def sfu_handler(
    fn: Callable[[web.Request, Services, str], Awaitable[web.StreamResponse]],
) -> Handler:
    """Authenticate the app, map SfuError to the spec's error body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        s = request.app[SERVICES]
        app_id = request.match_info["app"]
        if s.media.cluster is not None and s.media.cluster.listing.here is None:
            s.media.cluster.listing.locate_here(_node_url(request))
        try:
            _authenticate(s, app_id, request)
            return await fn(request, s, app_id)
        except SfuError as exc:
            return sfu_error(exc.status, exc.code, exc.public_message)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("media server: %s %s failed", request.method, request.path)
            return sfu_error(500, "internal_error", "internal error")

    return handle


def _node_url(request: web.Request) -> str:
    """This node's URL as the address ``request`` came in on: what other nodes are told
    when no ``server.advertise_url`` is set and the port was chosen at start (port 0)."""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    host, port = (sock[0], sock[1]) if isinstance(sock, tuple) else (request.host, None)
    host = f"[{host}]" if ":" in host and port is not None else host
    scheme = "https" if request.secure else "http"
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


def _authenticate(s: Services, app_id: str, request: web.Request) -> None:
    app = s.settings.apps.get(app_id)
    if app is None:
        raise SfuError(404, "not_found", f"no app {app_id!r}")
    if app.open:
        return
    expected = app.secret.value
    presented = bearer(request.headers.get("Authorization", ""))
    if not expected or not presented or not token_matches(presented, expected):
        raise SfuError(401, "unauthorized", "missing or wrong app secret")


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise SfuError(413, "payload_too_large", f"body over {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise SfuError(413, "payload_too_large", f"body over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SfuError(400, "decoding_error", f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SfuError(400, "invalid_params", "body must be a JSON object")
    return body
