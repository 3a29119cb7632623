"""Operations endpoints: /healthz, /readyz, /metrics."""

from __future__ import annotations

from aiohttp import web

from voxgate.server.app import SERVICES, json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    store_ok = await s.store.ping() if s.ready else False
    ready = s.ready and store_ok
    return json_response(
        {"status": "ready" if ready else "not_ready", "store": store_ok, "accepting": s.ready},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICES].metrics.render()
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
