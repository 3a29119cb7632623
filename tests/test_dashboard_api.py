"""The page's files, the JSON index, and the dashboard APIs (live sessions, config)."""

from __future__ import annotations

import aiohttp
import orjson
from tests.conftest import GatewayFactory, wait_for

TOKEN = "dash-token-0123456789"


async def test_page_and_its_files(gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    gw = await gateway()
    async with http.get(gw.base + "/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert '<script type="module" src="/ui/js/main.js">' in await resp.text()
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert f"ws://127.0.0.1:{gw.port}" in csp
    for name, kind in (
        ("js/main.js", "text/javascript"),
        ("js/capture-worklet.js", "text/javascript"),
        ("style.css", "text/css"),
    ):
        async with http.get(f"{gw.base}/ui/{name}") as resp:
            assert resp.status == 200, name
            assert resp.content_type == kind
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # only the page's own files: no path reaches the file system
    for bad in ("/ui/nope.js", "/ui/../server/page.py", "/ui/%2e%2e/__init__.py", "/ui/"):
        async with http.get(gw.base + bad) as resp:
            assert resp.status == 404, bad
            assert (await resp.json())["error"]["code"] == "not_found"


async def test_index(gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    gw = await gateway()
    async with http.get(gw.base + "/v1") as resp:
        index = await resp.json()
    assert index["name"] == "voxgate"
    assert index["gateway"] == {"account": "local", "name": "default"}


async def test_live_sessions_list_what_is_running(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    url = gw.base + "/v1/local/default/sessions"
    async with http.get(url) as resp:
        assert (await resp.json())["sessions"] == []
    async with http.ws_connect(gw.ws("/v1/realtime"), protocols=("realtime",)) as ws:
        created = await ws.receive_json()
        sid = created["session"]["id"]
        await ws.send_str(orjson.dumps({"type": "input_audio_buffer.append", "audio": ""}).decode())
        await wait_for(lambda: any(c.counters.client_frames for c in gw.services.live_speech))
        async with http.get(url) as resp:
            body = await resp.json()
        (live,) = body["sessions"]
        assert live["id"] == sid
        assert (live["kind"], live["provider"], live["model"]) == (
            "realtime",
            "voxgate",
            "voxgate/echo",
        )
        assert live["client_messages"] == 1
        assert live["upstream_bytes"] > 0
        assert live["duration_seconds"] >= 0
        assert body["media"] == {"sessions": 0, "adapters": 0, "agents": 0}


async def test_dashboard_apis_need_the_gateway_token(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        "[accounts.local.gateways.default]\n"
        'tokens = [{ name = "ops", env = "DASH_TOKEN" }]\n'
        'keys = { openai = { env = "K_OPENAI" } }\n',
        env={"DASH_TOKEN": TOKEN, "K_OPENAI": "sk-secret-stored-key"},
    )
    for path in ("sessions", "config"):
        url = f"{gw.base}/v1/local/default/{path}"
        async with http.get(url) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        async with http.get(f"{gw.base}/v1/nobody/none/{path}") as resp:
            assert resp.status == 404

    async with http.get(
        f"{gw.base}/v1/local/default/config", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        raw = await resp.text()
    assert "sk-secret-stored-key" not in raw
    assert TOKEN not in raw
    config = orjson.loads(raw)
    assert config["gateway"]["tokens"] == ["ops"]
    assert config["gateway"]["keys"] == ["openai"]
    openai = next(p for p in config["providers"] if p["name"] == "openai")
    assert openai == {"name": "openai", "url": "wss://api.openai.com/v1/realtime", "key": True}
    piper = next(e for e in config["engines"]["tts"] if e["name"] == "piper")
    assert piper["available"]
    assert {"id": "en_US-joe-medium"}.items() <= piper["voices"][0].items()
    assert config["engines"]["default_tts"] == "piper"
    assert config["realtime"]["default_model"] == "voxgate/echo"
    assert config["gateway"]["limits"]["max_connections"] == 100
    assert {"name": "default", "open": True} in config["apps"]
