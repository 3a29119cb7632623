"""Operations endpoints: /healthz, /readyz, /metrics."""

from __future__ import annotations

from aiohttp import web

from voxgate.server.services import SERVICES, json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: started, not draining, and the shared state answers. A usage store that is
    down does not make the node unready (its records wait: see ``records_pending``)."""
    s = request.app[SERVICES]
    accepting = s.ready and not s.draining.is_set()
    state_ok = await s.state.ping() if accepting else s.state.available
    store_ok = await s.store.ping() if s.ready else False
    ready = accepting and state_ok
    reason = None
    if not s.ready:
        reason = "starting" if not s.stopping.is_set() else "stopping"
    elif s.draining.is_set():
        reason = "draining"
    elif not state_ok:
        reason = f"state_unavailable: {s.state.reason or 'no answer'}"
    body: dict[str, object] = {
        "status": "ready" if ready else "not_ready",
        "accepting": accepting,
        "node": s.state.node,
        "state": state_ok,
        "store": store_ok,
        "records_pending": s.store.pending,
        "sessions": len(s.sessions),
    }
    if reason is not None:
        body["reason"] = reason
    return json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    body = s.metrics.render(
        node={
            "live_sessions": len(s.sessions),
            "state_available": int(s.state.available),
            "usage_records_pending": s.store.pending,
            "draining": int(s.draining.is_set()),
        }
    )
    return web.Response(
        text=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
