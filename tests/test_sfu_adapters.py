"""WebSocket adapters against real WebSocket servers, every frame decoded with packet.proto."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from tests.conftest import GatewayFactory, wait_for
from tests.test_sfu import dominant_hz, heard

import voxgate.protocols.adapter as adapter_proto
from voxgate.protocols.adapter import encode_packet
from voxgate.testing.webrtc import PcmTrack, Recorder, SfuPeer, tone

APP = "/v1/apps/default"


@pytest.fixture(scope="module")
def packet_pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """packet.proto compiled by protoc (grpcio-tools), as a user's program would."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("proto")
    proto_dir = Path(adapter_proto.__file__).parent
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", "packet.proto"])
    assert rc == 0
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("packet_pb2")
    finally:
        sys.path.remove(str(out))


class Endpoint:
    """A WebSocket server the adapters dial: it records, or plays, Packet frames."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.connections = 0
        self.send: list[bytes] = []  # frames to send to an ingest adapter
        self.send_interval = 0.02
        self.drop_after: int | None = None
        self.refuse = False
        self.hang = False
        self.connected = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.refuse:
            raise web.HTTPForbidden()
        if self.hang:
            await asyncio.sleep(3600)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.connections += 1
        self.connected.set()
        if self.send:
            for frame in self.send:
                await ws.send_bytes(frame)
                await asyncio.sleep(self.send_interval)
            await ws.close()
            return ws
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(msg.data)
                if self.drop_after is not None and len(self.frames) >= self.drop_after:
                    self.drop_after = None
                    await ws.close()
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/ws", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}/ws?token=t0k"
        return self.url


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint()
    await ep.start()
    yield ep
    assert ep.runner is not None
    await ep.runner.cleanup()


def stereo(mono: bytes) -> bytes:
    return np.repeat(np.frombuffer(mono, np.int16), 2).tobytes()


async def test_stream_adapter_sends_track_as_packets(
    gateway: GatewayFactory, http: aiohttp.ClientSession, endpoint: Endpoint, packet_pb2: ModuleType
) -> None:
    gw = await gateway()
    pub = SfuPeer(http, gw.base + APP)
    await pub.open()
    await pub.publish("mic", PcmTrack(tone(660, 30)))
    endpoint.drop_after = 40  # the endpoint drops once; the adapter redials
    status, body = await pub.call(
        "POST",
        "/adapters/websocket/new",
        {
            "tracks": [
                {
                    "location": "remote",
                    "sessionId": pub.session_id,
                    "trackName": "mic",
                    "endpoint": endpoint.url,
                    "outputCodec": "pcm",
                }
            ]
        },
    )
    assert status == 200, body
    (item,) = body["tracks"]
    assert item["trackName"] == "mic"
    assert item["sessionId"] == pub.session_id
    assert item["endpoint"] == endpoint.url
    assert item["adapterId"]
    await wait_for(lambda: len(endpoint.frames) >= 100 and endpoint.connections == 2, 10)

    packets = []
    for raw in endpoint.frames:
        p = packet_pb2.Packet()
        p.ParseFromString(raw)
        packets.append(p)
    seqs = [p.sequenceNumber for p in packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost across the redial
    stamps = [p.timestamp for p in packets]
    assert all(b - a == 960 for a, b in itertools.pairwise(stamps))
    assert all(len(p.payload) == 960 * 4 for p in packets)
    pcm = np.frombuffer(b"".join(p.payload for p in packets[-25:]), np.int16).reshape(-1, 2)
    assert abs(dominant_hz(pcm[:, 0].tobytes()) - 660) < 10
    assert np.array_equal(pcm[:, 0], pcm[:, 1])  # mono source, both channels

    status, body = await pub.call(
        "POST", "/adapters/websocket/close", {"tracks": [{"adapterId": item["adapterId"]}]}
    )
    assert status == 200
    assert body["tracks"][0]["bytesProcessed"] > 100 * 3840
    status, again = await pub.call(
        "POST", "/adapters/websocket/close", {"tracks": [{"adapterId": item["adapterId"]}]}
    )
    assert status == 200
    assert again == {"tracks": [{"adapterId": item["adapterId"]}]}
    await pub.close()


async def test_ingest_adapter_publishes_a_track(
    gateway: GatewayFactory, http: aiohttp.ClientSession, endpoint: Endpoint
) -> None:
    gw = await gateway()
    pcm = stereo(tone(550, 4))
    endpoint.send = [
        encode_packet(i, i * 960, pcm[o : o + 3840]) for i, o in enumerate(range(0, len(pcm), 3840))
    ]
    sub = SfuPeer(http, gw.base + APP)
    await sub.open()
    status, body = await sub.call(
        "POST",
        "/adapters/websocket/new",
        {
            "tracks": [
                {
                    "location": "local",
                    "trackName": "tts",
                    "endpoint": endpoint.url,
                    "inputCodec": "pcm",
                    "mode": "buffer",
                }
            ]
        },
    )
    assert status == 200, body
    (item,) = body["tracks"]
    await sub.pull((item["sessionId"], "tts"))
    await wait_for(lambda: len(sub.received) == 1)
    rec = Recorder(next(iter(sub.received.values())))
    assert abs(dominant_hz(await heard(rec)) - 550) < 10
    # the endpoint closes after 4 s of audio: the adapter plays out its buffer and closes
    await wait_for(lambda: item["adapterId"] not in gw.services.media.adapters, 10)
    await rec.stop()
    await sub.close()
