"""``GET /v1/{account}/{gateway}/logs``: usage records as JSON (token protected)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from voxgate.errors import BadRequest, NotFound
from voxgate.server.auth import request_gateway
from voxgate.server.services import SERVICES, json_response
from voxgate.store import UsageQuery

MAX_LIMIT = 1000


def parse_since(raw: str) -> float:
    """Unix seconds, or an ISO 8601 time (UTC when it has no offset)."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            "since: expected Unix seconds or an ISO 8601 time such as 2026-11-21T10:00:00Z"
        ) from None
    if dt.tzinfo is None:
        from datetime import UTC

        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return 100
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit: expected an integer from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: expected an integer from 1 to {MAX_LIMIT}")
    return limit


async def list_logs(request: web.Request) -> web.Response:
    gw = request_gateway(request)
    since_raw = request.query.get("since")
    q = UsageQuery(
        account=gw.account,
        gateway=gw.name,
        limit=parse_limit(request.query.get("limit")),
        since=parse_since(since_raw) if since_raw else None,
    )
    records = await request.app[SERVICES].store.query(q)
    return json_response({"records": [r.to_json() for r in records], "count": len(records)})


async def get_log(request: web.Request) -> web.Response:
    gw = request_gateway(request)
    store = request.app[SERVICES].store
    sid = request.match_info["session_id"]
    record = await store.get(gw.account, gw.name, sid)
    if record is None:
        raise NotFound(f"no usage record for session {sid!r}")
    capture = await store.get_capture(sid)
    body: dict[str, object] = {"record": record.to_json()}
    if capture is not None:
        body["capture"] = {
            "frames": [vars(f) for f in capture.frames],
            "dropped": capture.dropped,
        }
    return json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/{account}/{gateway}/logs", list_logs)
    app.router.add_get("/v1/{account}/{gateway}/logs/{session_id}", get_log)
