"""``/``: the browser page (talk to the agent, speak and listen, watch the gateway).

The page is plain HTML, CSS and JavaScript modules in ``voxgate/web``, served as they
are: no build step. The files are read once when the app is built; only those files are
served, so no request path ever reaches the file system. ``GET /v1`` has the JSON index
of the addresses, and tells the page which gateway its sessions belong to.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from voxgate import __version__
from voxgate.server.services import SERVICES, json_response

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
#: Scripts, styles and worklets from this server only; sockets to this server only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' {ws}; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

PageFiles = web.AppKey("voxgate_page_files", dict[str, tuple[bytes, str]])


def load_files(root: Path = WEB_ROOT) -> dict[str, tuple[bytes, str]]:
    """Every servable file under ``root``: its URL path → (body, content type)."""
    files = {}
    for path in sorted(root.rglob("*")):
        kind = TYPES.get(path.suffix)
        if path.is_file() and kind is not None:
            files[path.relative_to(root).as_posix()] = (path.read_bytes(), kind)
    return files


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[PageFiles].get(name)
    if found is None:
        raise web.HTTPNotFound(reason=f"no page file {name!r}")
    body, kind = found
    host = request.host
    return web.Response(
        body=body,
        content_type=kind,
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": CSP.format(ws=f"ws://{host} wss://{host}"),
        },
    )


async def page(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["name"])


async def index(request: web.Request) -> web.Response:
    gw = request.app[SERVICES].settings.speech_gateway()
    return json_response(
        {
            "name": "voxgate",
            "version": __version__,
            "page": "GET /",
            "gateway": {"account": gw.account, "name": gw.name},
            "relay": "ws /v1/{account}/{gateway}/{provider}[/{path}]",
            "logs": "GET /v1/{account}/{gateway}/logs",
            "dashboard": [
                "GET /v1/{account}/{gateway}/sessions",
                "GET /v1/{account}/{gateway}/config",
            ],
            "speech": ["ws /v1/tts/{engine}", "ws /v1/stt/{engine}"],
            "realtime": ["ws /v1/realtime?model=…", "POST /v1/realtime/client_secrets"],
            "media": [
                "/v1/apps/{appId}/sessions/…",
                "/v1/apps/{appId}/adapters/websocket/…",
                "/v1/apps/{appId}/agents/…",
            ],
            "operations": ["/healthz", "/readyz", "/metrics"],
        }
    )


def add_routes(app: web.Application) -> None:
    app[PageFiles] = load_files()
    app.router.add_get("/", page)
    app.router.add_get("/ui/{name:.+}", asset)
    app.router.add_get("/v1", index)
