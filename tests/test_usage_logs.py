"""Usage records, the logs API, payload capture, and the ops endpoints."""

from __future__ import annotations

import contextlib
import time

import aiohttp
import orjson
from tests.conftest import GatewayFactory, provider_overrides, settled

from voxgate.testing import RecordingUpstream

TOKEN = "logs-token-abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def toml(up: RecordingUpstream, extra: str = "") -> str:
    return provider_overrides(up.url, "openai") + (
        "[accounts.local.gateways.default]\n"
        'tokens = [{ name = "ops", env = "LOG_TOKEN" }]\n' + extra
    )


ENV = {"LOG_TOKEN": TOKEN}
GW_AUTH = {"voxgate-authorization": f"Bearer {TOKEN}"}


async def openai_session(http, gw) -> None:
    async with http.ws_connect(
        gw.ws("/v1/local/default/openai?model=gpt-realtime"), headers=GW_AUTH
    ) as ws:
        await ws.send_str('{"type":"session.update","session":{"instructions":"hi"}}')
        await ws.receive()
        await ws.send_bytes(b"\x01" * 960)
        await ws.receive()
        done = {
            "type": "response.done",
            "response": {"usage": {"input_tokens": 7, "output_tokens": 9, "total_tokens": 16}},
        }
        # the echo upstream sends it back: that is the upstream → client frame metered
        await ws.send_str(orjson.dumps(done).decode())
        await ws.receive()


async def test_usage_record_fields_and_logs_api(
    gateway: GatewayFactory, upstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream), ENV)
    before = time.time()
    await openai_session(http, gw)
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs", headers=AUTH) as r:
        assert r.status == 200
        body = await r.json()
    assert body["count"] == 1
    rec = body["records"][0]
    assert rec["session_id"].startswith("sess_")
    assert (rec["account"], rec["gateway"], rec["provider"], rec["model"]) == (
        "local",
        "default",
        "openai",
        "gpt-realtime",
    )
    assert rec["token_name"] == "ops"
    assert rec["client_address"] == "127.0.0.1"
    assert before <= rec["started_at"] <= rec["ended_at"] <= time.time()
    assert rec["duration_seconds"] >= 0
    assert rec["client_frames"] == 3
    assert rec["upstream_frames"] == 3
    assert rec["client_bytes"] == rec["upstream_bytes"] > 960
    assert (rec["client_close_code"], rec["upstream_close_code"], rec["error"]) == (
        1000,
        1000,
        None,
    )
    assert (rec["input_tokens"], rec["output_tokens"], rec["total_tokens"]) == (7, 9, 16)
    assert TOKEN not in orjson.dumps(body).decode()
    async with http.get(f"{gw.base}/v1/local/default/logs/{rec['session_id']}", headers=AUTH) as r:
        one = await r.json()
        assert one["record"] == rec
        assert "capture" not in one  # capture is off by default


async def test_logs_api_auth_params_and_errors(
    gateway: GatewayFactory, upstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream), ENV)
    await openai_session(http, gw)
    await openai_session(http, gw)
    await settled(gw)
    base = f"{gw.base}/v1/local/default/logs"
    async with http.get(base) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    async with http.get(base, headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
    async with http.get(base, headers=GW_AUTH, params={"limit": "1"}) as r:
        assert (await r.json())["count"] == 1
    for bad in ("0", "1001", "abc"):
        async with http.get(base, headers=AUTH, params={"limit": bad}) as r:
            assert r.status == 400
            assert "limit" in (await r.json())["error"]["message"]
    async with http.get(base, headers=AUTH, params={"since": "yesterday"}) as r:
        assert r.status == 400
        assert "since" in (await r.json())["error"]["message"]
    async with http.get(base, headers=AUTH, params={"since": str(time.time() + 3600)}) as r:
        assert (await r.json())["count"] == 0
    async with http.get(base, headers=AUTH, params={"since": "2020-01-01T00:00:00Z"}) as r:
        assert (await r.json())["count"] == 2
    async with http.get(f"{gw.base}/v1/local/nope/logs", headers=AUTH) as r:
        assert r.status == 404
    async with http.get(f"{base}/sess_missing", headers=AUTH) as r:
        assert r.status == 404


async def test_payload_capture_redacts_audio(
    gateway: GatewayFactory, upstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream, "capture_payloads = true\n"), ENV)
    audio_b64 = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=" * 40
    async with http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW_AUTH) as ws:
        await ws.send_str(
            orjson.dumps({"type": "input_audio_buffer.append", "audio": audio_b64}).decode()
        )
        await ws.receive()
        await ws.send_str(
            '{"type":"conversation.item.create","item":{"type":"message","content":[{"type":"input_text","text":"hello"}]}}'
        )
        await ws.receive()
        await ws.send_bytes(b"\x00" * 1920)
        await ws.receive()
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs", headers=AUTH) as r:
        sid = (await r.json())["records"][0]["session_id"]
    async with http.get(f"{gw.base}/v1/local/default/logs/{sid}", headers=AUTH) as r:
        cap = (await r.json())["capture"]
    frames = cap["frames"]
    assert [f["direction"] for f in frames] == ["client", "upstream"] * 3
    assert audio_b64 not in orjson.dumps(cap).decode()
    first = orjson.loads(frames[0]["payload"])
    assert first == {
        "type": "input_audio_buffer.append",
        "audio": f"<redacted {len(audio_b64)} bytes>",
    }
    assert "hello" in frames[2]["payload"]
    assert (frames[4]["kind"], frames[4]["size"], frames[4]["payload"]) == ("binary", 1920, "")


async def test_ops_endpoints_and_metrics(
    gateway: GatewayFactory, upstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream), ENV)
    async with http.get(f"{gw.base}/healthz") as r:
        assert (r.status, (await r.json())["status"]) == (200, "ok")
    async with http.get(f"{gw.base}/readyz") as r:
        assert r.status == 200
    ws = await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW_AUTH)
    await ws.send_str("x")
    await ws.receive()
    async with http.get(f"{gw.base}/metrics") as r:
        text = await r.text()
    assert 'voxgate_relay_active_sessions{provider="openai"} 1' in text
    assert 'voxgate_relay_frames_total{provider="openai",direction="client_to_upstream"} 1' in text
    assert 'voxgate_upstream_connect_seconds_count{provider="openai"} 1' in text
    await ws.close(code=4100)
    await settled(gw)
    with contextlib.suppress(aiohttp.WSServerHandshakeError):
        await http.ws_connect(gw.ws("/v1/local/default/openai"))
    async with http.get(f"{gw.base}/metrics") as r:
        text = await r.text()
    assert 'voxgate_relay_close_codes_total{side="client",code="4100"} 1' in text
    assert 'voxgate_handshake_rejections_total{status="401",reason="auth"} 1' in text
    assert 'voxgate_relay_bytes_total{provider="openai",direction="upstream_to_client"} 1' in text
    assert TOKEN not in text
    async with http.get(f"{gw.base}/no/such/route") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"


async def test_shutdown_closes_sessions_1012_and_keeps_records(
    gateway: GatewayFactory, upstream, http
) -> None:
    gw = await gateway(toml(upstream), ENV)
    ws = await http.ws_connect(gw.ws("/v1/local/default/openai"), headers=GW_AUTH)
    await ws.send_str("x")
    await ws.receive()
    store = gw.services.store
    # stop the server while the session is open; read the record through a new store
    from voxgate.store import UsageQuery
    from voxgate.store.sqlite import SQLiteStore

    path = store.path  # type: ignore[attr-defined]
    await gw.stop()
    msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1012  # service restart: reconnect, to a node not draining
    fresh = SQLiteStore(path)
    await fresh.open()
    recs = await fresh.query(UsageQuery("local", "default"))
    await fresh.close()
    assert len(recs) == 1
    assert recs[0].client_close_code == 1012
    assert upstream.connections[0].close_code == 1001  # the gateway, its client, goes away


async def test_internal_errors_do_not_leak_detail(tmp_path, http: aiohttp.ClientSession) -> None:
    from aiohttp import web
    from tests.conftest import make_settings

    from voxgate.server.app import create_app

    app = create_app(make_settings("", tmp_path))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("internal detail: /etc/secret-path")

    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with http.get(f"http://127.0.0.1:{runner.addresses[0][1]}/broken") as r:
            assert r.status == 500
            body = await r.json()
        assert body == {"error": {"code": "internal_error", "message": "internal error"}}
    finally:
        await runner.cleanup()
