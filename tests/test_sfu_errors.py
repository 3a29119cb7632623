"""Bad input to the media server: each gets the documented error, nothing else is disturbed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from tests.conftest import GatewayFactory, wait_for
from tests.test_sfu import dominant_hz, heard, start_call
from tests.test_sfu_adapters import Endpoint, endpoint  # noqa: F401 - fixture

from voxgate.core.sfu.media import MediaSettings
from voxgate.protocols.adapter import MAX_INGEST_MESSAGE, encode_packet
from voxgate.testing.webrtc import PcmTrack, SfuPeer
from voxgate.transports.dial import WebSocketDialer

APP = "/v1/apps/default"


async def test_bad_requests(gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    gw = await gateway()
    peer = SfuPeer(http, gw.base + APP)
    sid = await peer.open()

    async def call(method: str, path: str, **kw: object) -> tuple[int, dict[str, object]]:
        async with http.request(method, gw.base + APP + path, **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.json()

    offer = {"sessionDescription": {"type": "offer", "sdp": "v=0\r\nthis is not sdp\r\n"}}
    status, body = await call("POST", "/sessions/new", json=offer)
    assert (status, body["errorCode"]) == (400, "invalid_session_description"), body
    status, body = await call("POST", "/sessions/new", json={"sessionDescription": "sdp"})
    assert (status, body["errorCode"]) == (400, "invalid_session_description")
    status, body = await call("POST", "/sessions/new", data=b"{not json")
    assert (status, body["errorCode"]) == (400, "decoding_error")
    status, body = await call("POST", "/sessions/new", data=b"[1]")
    assert (status, body["errorCode"]) == (400, "invalid_params")
    status, body = await call("POST", "/sessions/new", data=b"x" * 300_000)
    assert (status, body["errorCode"]) == (413, "payload_too_large")
    status, body = await call("GET", "/sessions/nosuchsession")
    assert (status, body["errorCode"]) == (404, "not_found")
    async with http.post(gw.base + "/v1/apps/nosuchapp/sessions/new") as r:
        assert r.status == 404
        assert (await r.json())["errorCode"] == "not_found"

    # per-track errors: an unknown remote track, a local track without an offer
    status, body = await call(
        "POST",
        f"/sessions/{sid}/tracks/new",
        json={"tracks": [{"location": "remote", "sessionId": "nope", "trackName": "mic"}]},
    )
    assert status == 200
    assert body["requiresImmediateRenegotiation"] is False
    assert body["tracks"][0]["errorCode"] == "not_found_track_error"
    status, body = await call(
        "POST",
        f"/sessions/{sid}/tracks/new",
        json={"tracks": [{"location": "local", "mid": "0", "trackName": "mic"}]},
    )
    assert (status, body["errorCode"]) == (400, "invalid_params")
    status, body = await call(
        "POST", f"/sessions/{sid}/tracks/new", json={"tracks": [{"location": "upstairs"}]}
    )
    assert (status, body["errorCode"]) == (400, "invalid_params")
    status, body = await call(
        "PUT",
        f"/sessions/{sid}/renegotiate",
        json={"sessionDescription": {"type": "answer", "sdp": "v=0\r\n"}},
    )
    assert (status, body["errorCode"]) == (400, "invalid_session_description")
    status, body = await call(
        "PUT", f"/sessions/{sid}/tracks/close", json={"tracks": [{"mid": "7"}]}
    )
    assert status == 200
    assert body["tracks"] == [
        {
            "mid": "7",
            "errorCode": "close_track_error",
            "errorDescription": "no open track with mid '7'",
        }
    ]

    # a repeated local track name
    await peer.publish("mic", PcmTrack())
    tr = peer.pc.addTransceiver("audio", direction="sendonly")
    await peer.pc.setLocalDescription(await peer.pc.createOffer())
    status, body = await call(
        "POST",
        f"/sessions/{sid}/tracks/new",
        json={
            "sessionDescription": {"type": "offer", "sdp": peer.pc.localDescription.sdp},
            "tracks": [{"location": "local", "mid": tr.mid, "trackName": "mic"}],
        },
    )
    assert status == 200
    assert body["tracks"][0]["errorCode"] == "repeated_local_track_error"
    await peer.close()


async def test_app_secret_is_required(gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    gw = await gateway('[apps.calls]\nsecret_env = "CALLS_SECRET"\n', {"CALLS_SECRET": "s3cret"})
    base = gw.base + "/v1/apps/calls/sessions/new"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.post(base, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["errorCode"] == "unauthorized"
    async with http.post(base, headers={"Authorization": "Bearer s3cret"}) as r:
        assert r.status == 201
    # a configured app replaces the open built-in one
    async with http.post(gw.base + APP + "/sessions/new") as r:
        assert r.status == 404


async def test_adapter_errors(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    gw = await gateway()
    gw.services.dial = WebSocketDialer(timeout=0.5, max_message_bytes=MAX_INGEST_MESSAGE)
    peer = SfuPeer(http, gw.base + APP)

    def ingest(url: str, name: str = "in") -> dict[str, str]:
        return {
            "location": "local",
            "trackName": name,
            "endpoint": url,
            "inputCodec": "pcm",
            "mode": "buffer",
        }

    refusing, hanging = Endpoint(), Endpoint()
    refusing.refuse, hanging.hang = True, True
    await refusing.start()
    await hanging.start()
    status, body = await peer.call(
        "POST", "/adapters/websocket/new", {"tracks": [ingest(refusing.url)]}
    )
    assert status == 503
    assert body["tracks"][0]["errorCode"] == "websocket_handshake_failed"
    assert "t0k" not in body["tracks"][0]["errorDescription"]  # the URL's token is not echoed
    status, body = await peer.call(
        "POST",
        "/adapters/websocket/new",
        {"tracks": [ingest(hanging.url), ingest(endpoint.url, "ok")]},
    )
    assert status == 200  # one item succeeded
    assert body["tracks"][0]["errorCode"] == "websocket_connection_timeout"
    good = body["tracks"][1]["adapterId"]
    for bad in (
        {"tracks": []},
        {"tracks": [ingest(endpoint.url)] * 5},
        {"tracks": [ingest("http://example.com/")]},
        {"tracks": [ingest(endpoint.url) | {"inputCodec": "opus"}]},
    ):
        status, body = await peer.call("POST", "/adapters/websocket/new", bad)
        assert (status, body["errorCode"]) == (400, "invalid_params"), bad
    status, body = await peer.call(
        "POST",
        "/adapters/websocket/new",
        {
            "tracks": [
                {
                    "location": "remote",
                    "sessionId": "nope",
                    "trackName": "x",
                    "endpoint": endpoint.url,
                }
            ]
        },
    )
    assert (status, body["errorCode"]) == (404, "not_found")
    status, body = await peer.call(
        "POST", "/adapters/websocket/close", {"tracks": [{"adapterId": "nope"}]}
    )
    assert status == 200
    assert body["tracks"][0]["errorCode"] == "adapter_not_found"
    status, body = await peer.call(
        "POST", "/adapters/websocket/close", {"tracks": [{"adapterId": good}]}
    )
    assert status == 200
    assert "bytesProcessed" in body["tracks"][0]
    for ep in (refusing, hanging):
        assert ep.runner is not None
        await ep.runner.cleanup()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xff\xff\xff", 1007),
        (b"\x2a" + b"\xff\xff\x02" + b"\0" * 10, 1007),
        (encode_packet(1, 1, b"\0" * MAX_INGEST_MESSAGE), 1009),
    ],
    ids=["not-protobuf", "truncated-payload", "oversize"],
)
async def test_bad_ingest_frames_close_only_their_adapter(
    gateway: GatewayFactory, http: aiohttp.ClientSession, frame: bytes, code: int
) -> None:
    gw = await gateway()
    peer = SfuPeer(http, gw.base + APP)
    pub, sub, rec = await start_call(http, gw.base + APP, 440)  # must not be disturbed

    closed: list[int] = []

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.WebSocketResponse:
        ws = aiohttp.web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(encode_packet(0, 0, b"\0" * 3840))
        await ws.send_bytes(frame)
        async for _ in ws:
            pass
        closed.append(ws.close_code or 0)
        return ws

    app = aiohttp.web.Application()
    app.router.add_get("/ws", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    status, body = await peer.call(
        "POST",
        "/adapters/websocket/new",
        {"tracks": [{"location": "local", "trackName": "in", "endpoint": url}]},
    )
    assert status == 200
    adapter_id = body["tracks"][0]["adapterId"]
    await wait_for(lambda: bool(closed))
    assert closed == [code]
    await wait_for(lambda: adapter_id not in gw.services.media.adapters)
    assert abs(dominant_hz(await heard(rec)) - 440) < 10  # the call went on
    await rec.stop()
    for p in (pub, sub):
        await p.close()
    await runner.cleanup()


async def test_vanished_publisher_is_collected(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    media = gw.services.media
    media.settings = MediaSettings(stale_seconds=0.5)
    pub, sub, rec = await start_call(http, gw.base + APP, 440)
    await heard(rec, 0.2)
    await pub.pc.close()  # gone without closing anything through the API
    await asyncio.sleep(1.0)
    await media.collect()
    assert media.find_track(pub.session_id, "mic") is None
    status, body = await sub.call("GET", f"/sessions/{sub.session_id}")
    assert status == 200
    assert [t["status"] for t in body["tracks"]] == ["inactive"]
    await wait_for(lambda: pub.session_id not in media.sessions, 5)
    await rec.stop()
    await sub.close()
