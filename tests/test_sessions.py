"""The one session lifecycle (``open_session``): refusals before a session begins, the
drain, and the live listing, on one in-process node with no outside services."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson

from conftest import UPGRADE_HEADERS, GatewayFactory, settled, wait_for
from voxgate.server.app import drain
from voxgate.testing import RecordingUpstream

TOKEN = "sessions-test-token"
ENV = {"GW_TOKEN": TOKEN}
AUTH = {"voxgate-authorization": TOKEN}


def toml(upstream: RecordingUpstream, state: str = "memory://") -> str:
    return (
        f'[state]\nurl = "{state}"\n'
        f'[providers.echo]\nurl = "{upstream.url}"\n'
        "[accounts.local.gateways.default]\n"
        'tokens = [{ name = "ci", env = "GW_TOKEN" }]\n'
    )


async def test_state_that_cannot_be_reached_refuses_new_sessions_with_503(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    # nothing listens on port 1: every state operation fails (fast)
    gw = await gateway(toml(upstream, "redis://127.0.0.1:1/0"), ENV)
    started = time.monotonic()
    async with http.get(gw.base + "/v1/local/default/echo", headers=UPGRADE_HEADERS | AUTH) as r:
        body = orjson.loads(await r.read())
        assert r.status == 503
    assert time.monotonic() - started < 5
    assert body["error"]["code"] == "state_unavailable"
    assert "try again" in body["error"]["message"]
    assert "127.0.0.1:1" not in body["error"]["message"]
    async with http.get(gw.base + "/readyz") as r:
        ready = await r.json()
        assert r.status == 503
    assert ready["reason"].startswith("state_unavailable")
    assert ready["state"] is False
    assert not upstream.handshakes  # nothing was dialled
    await settled(gw)
    async with http.get(gw.base + "/v1/local/default/logs", headers=AUTH) as r:
        assert (await r.json())["count"] == 0  # refused before it began: no record
    async with http.get(gw.base + "/metrics") as r:
        text = await r.text()
    assert 'voxgate_handshake_rejections_total{status="503",reason="state_unavailable"} 1' in text


async def test_a_draining_node_refuses_new_sessions_and_lets_live_ones_finish(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream), ENV)
    app = gw.runner.app
    live = await http.ws_connect(gw.ws("/v1/local/default/echo"), headers=AUTH)
    cut = asyncio.Event()
    draining = asyncio.create_task(drain(app, seconds=30, cut=cut))
    await wait_for(lambda: gw.services.draining.is_set())
    async with http.get(gw.base + "/readyz") as r:
        assert r.status == 503
        assert (await r.json())["reason"] == "draining"
    async with http.get(gw.base + "/v1/local/default/echo", headers=UPGRADE_HEADERS | AUTH) as r:
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "draining"
    await live.send_str("still here")
    assert (await live.receive()).data == "still here"
    assert not draining.done()
    await live.close()  # the last live session ends: the drain is over before its time
    assert await asyncio.wait_for(draining, 5) == 0


async def test_a_cut_drain_reports_the_sessions_left(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream), ENV)
    live = await http.ws_connect(gw.ws("/v1/local/default/echo"), headers=AUTH)
    cut = asyncio.Event()
    draining = asyncio.create_task(drain(gw.runner.app, seconds=30, cut=cut))
    await asyncio.sleep(0.1)
    cut.set()  # a second SIGTERM
    assert await asyncio.wait_for(draining, 2) == 1
    await gw.stop()  # what the server does next: the rest close with 1012
    msg = await live.receive()
    assert msg.data == 1012


async def test_the_sessions_api_lists_every_kind_with_its_node_and_transport(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(toml(upstream) + '[server]\nnode = "node-x"\n', ENV)
    relay = await http.ws_connect(gw.ws("/v1/local/default/echo"), headers=AUTH)
    rt = await http.ws_connect(
        gw.ws("/v1/realtime?model=voxgate/echo"), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert (await rt.receive_json())["type"] == "session.created"
    async with http.get(gw.base + "/v1/local/default/sessions", headers=AUTH) as r:
        listed = await r.json()
    assert listed["node"] == "node-x"
    assert listed["state"] == "ok"
    kinds = {(row["kind"], row["transport"], row["node"]) for row in listed["sessions"]}
    assert kinds == {("relay", "websocket", "node-x"), ("realtime", "websocket", "node-x")}
    await relay.close()
    await rt.close()
    await settled(gw)
    assert not gw.services.sessions
    async with http.get(gw.base + "/v1/local/default/logs", headers=AUTH) as r:
        records = (await r.json())["records"]
    assert sorted(r["kind"] for r in records) == ["realtime", "relay"]
    assert {r["node"] for r in records} == {"node-x"}


async def test_a_node_whose_postgresql_is_down_serves_and_keeps_its_records(
    gateway: GatewayFactory,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    env = ENV | {
        "VOXGATE_STORE__URL": '"postgresql://postgres@127.0.0.1:1/voxgate"',
        "VOXGATE_STORE__SPILL_PATH": f'"{tmp_path / "spill.jsonl"}"',
    }
    gw = await gateway(toml(upstream), env)  # nothing listens on port 1: it starts anyway
    ws = await http.ws_connect(gw.ws("/v1/local/default/echo"), headers=AUTH)
    await ws.send_str("hello")
    assert (await ws.receive()).data == "hello"
    await ws.close()
    await settled(gw)
    async with http.get(gw.base + "/readyz") as r:
        ready = await r.json()
        assert r.status == 200  # the records wait; the node still serves
    assert ready["store"] is False
    assert ready["records_pending"] == 1
    async with http.get(gw.base + "/metrics") as r:
        text = await r.text()
    assert "\nvoxgate_usage_records_pending 1\n" in text
    assert "\nvoxgate_state_available 1\n" in text
    async with http.get(gw.base + "/v1/local/default/logs", headers=AUTH) as r:
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "store_unavailable"
    await gw.stop()  # what could not be written waits in the spill file for the next start
    assert (tmp_path / "spill.jsonl").read_text().count("\n") == 1
