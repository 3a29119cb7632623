"""The media server across nodes: two voxgate apps in this process, on two 127.0.0.1
ports, sharing one state backend; a track published on one is pulled on the other
through one node-to-node feed of forwarded Opus."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.conftest import UPGRADE_HEADERS, Gateway, make_settings, wait_for
from tests.test_sfu import dominant_hz, heard
from tests.test_sfu_adapters import Endpoint, endpoint  # noqa: F401 (a fixture)

from voxgate.core.sfu.cluster import Cluster
from voxgate.core.sfu.feeds import FeedSender, decode_frame, encode_frame
from voxgate.engines.registry import EngineRegistry
from voxgate.errors import StateUnavailable
from voxgate.server.app import create_app
from voxgate.server.cluster_routes import CLUSTER, ClusterNode
from voxgate.server.services import SERVICES
from voxgate.state import MemoryState
from voxgate.testing.webrtc import PcmTrack, Recorder, SfuPeer, tone
from voxgate.transports.feeds import feed_path

APP = "/v1/apps/default"
SECRET = "cluster-s3cret"
#: Port 0, as the nodes listen: each learns its URL from its first request.
CLUSTER_TOML = '[server]\nport = 0\n[cluster]\nsecret_env = "VOXGATE_CLUSTER_SECRET"\n'

NodeFactory = Callable[..., Awaitable[Gateway]]


class FlakyState(MemoryState):
    """A state server that is down while ``down`` is set (its writes fail)."""

    down = False

    async def put_location(self, key: str, value: str) -> None:
        if self.down:
            raise StateUnavailable("state server down")
        await super().put_location(key, value)


@pytest.fixture
async def state() -> FlakyState:
    return FlakyState()


@pytest.fixture
async def nodes(
    tmp_path: Path, speech_engines: EngineRegistry, state: FlakyState
) -> AsyncIterator[NodeFactory]:
    """``await nodes(secret=…)``: one more voxgate node on 127.0.0.1 (port 0), sharing
    ``state`` with the others; ``secret=None``: no cluster secret set."""
    started: list[Gateway] = []

    async def start(secret: str | None = SECRET) -> Gateway:
        home = tmp_path / f"node{len(started)}"
        home.mkdir()
        env = {"VOXGATE_CLUSTER_SECRET": secret} if secret else {}
        app = create_app(
            make_settings(CLUSTER_TOML, home, env), engines=speech_engines, state=state
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        gw = Gateway(runner.addresses[0][1], app[SERVICES], runner)
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        await gw.stop()


def feeds_of(gw: Gateway) -> Cluster:
    """The node's feeds of other nodes' tracks (and its directory listing)."""
    cluster = gw.services.media.cluster
    assert cluster is not None
    return cluster


def served_by(gw: Gateway) -> ClusterNode:
    """The feeds the node serves to other nodes."""
    return gw.runner.app[CLUSTER]


async def publisher(http: aiohttp.ClientSession, gw: Gateway, hz: float) -> tuple[SfuPeer, str]:
    """A peer of ``gw`` publishing a tone as ``mic``; its mid, once the directory has it."""
    pub = SfuPeer(http, gw.base + APP)
    await pub.open()
    body = await pub.publish("mic", PcmTrack(tone(hz, 30)))
    await wait_for(lambda: feeds_of(gw).listing.pending == 0)
    return pub, body["tracks"][0]["mid"]


async def pull(
    http: aiohttp.ClientSession, gw: Gateway, sid: str
) -> tuple[SfuPeer, dict[str, Any]]:
    """A peer of ``gw`` pulling ``mic`` of ``sid``: it and the track's result."""
    sub = SfuPeer(http, gw.base + APP)
    await sub.open()
    body = await sub.pull((sid, "mic"))
    (track,) = body["tracks"]
    return sub, track


async def listening(sub: SfuPeer, track: dict[str, Any]) -> Recorder:
    assert "errorCode" not in track, track
    await wait_for(lambda: track["mid"] in sub.received)
    return Recorder(sub.received[track["mid"]])


async def close_track(peer: SfuPeer, mid: str) -> None:
    status, body = await peer.call(
        "PUT", f"/sessions/{peer.session_id}/tracks/close", {"tracks": [{"mid": mid}]}
    )
    assert status == 200, body


async def test_a_track_on_another_node_is_heard_through_one_shared_feed(
    nodes: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a, b = await nodes(), await nodes()
    pub, _ = await publisher(http, a, 440)
    subs, recorders = [], []
    # two subscribers at once: they share one dial of node A
    for sub, track in await asyncio.gather(*(pull(http, b, pub.session_id) for _ in range(2))):
        assert track["sessionId"] == pub.session_id
        recorders.append(await listening(sub, track))
        subs.append((sub, track["mid"]))
    for rec in recorders:  # decoded by each client: the tone, not silence
        assert abs(dominant_hz(await heard(rec)) - 440) < 10

    # one feed for both subscribers of node B; node A has one subscriber: that feed
    fed = feeds_of(b)
    assert fed.opened == 1
    (feed,) = fed.feeds.values()
    assert len(feed.source.subscribers) == 2
    assert feed.packets > 0
    assert feed.bad_frames == 0
    published = a.services.media.find_track(pub.session_id, "mic")
    assert published is not None
    assert len(published.subscribers) == 1
    assert served_by(a).served == 1

    status, body = await subs[0][0].call("GET", f"/sessions/{subs[0][0].session_id}")
    assert status == 200
    assert body["tracks"][0] | {"mid": None} == {
        "location": "remote",
        "mid": None,
        "trackName": "mic",
        "sessionId": pub.session_id,
        "status": "active",
    }

    # the first subscriber leaves: the feed stays for the second; the last: it closes
    await close_track(*subs[0])
    assert fed.feeds == {feed.key: feed}
    assert len(feed.source.subscribers) == 1
    await close_track(*subs[1])
    await wait_for(lambda: not fed.feeds and not served_by(a).serving)
    assert not published.subscribers
    assert not published.ended
    assert served_by(a).dropped == 0

    for rec in recorders:
        await rec.stop()
    for peer in (pub, *(s for s, _ in subs)):
        await peer.close()


async def test_the_publisher_leaving_ends_the_feed(
    nodes: NodeFactory, http: aiohttp.ClientSession, state: FlakyState
) -> None:
    a, b = await nodes(), await nodes()
    pub, pub_mid = await publisher(http, a, 550)
    assert await state.get_location(f"sfu:session:{pub.session_id}") is not None
    sub, track = await pull(http, b, pub.session_id)
    rec = await listening(sub, track)
    await heard(rec)
    (feed,) = feeds_of(b).feeds.values()

    await close_track(pub, pub_mid)  # the publisher unpublishes
    await wait_for(lambda: not feeds_of(b).feeds)
    assert feed.source.ended
    assert feed.ended_by is not None
    assert (feed.ended_by.code, feed.ended_by.reason) == (1000, "track ended")
    _, body = await sub.call("GET", f"/sessions/{sub.session_id}")
    assert body["tracks"][0]["status"] == "inactive"

    # the session goes (as collection closes it): it leaves the directory
    await a.services.media.close_session(pub.session_id)
    await wait_for(lambda: feeds_of(a).listing.pending == 0)
    assert await state.get_location(f"sfu:session:{pub.session_id}") is None
    _, again = await pull(http, b, pub.session_id)
    assert again["errorCode"] == "not_found_track_error"
    assert feeds_of(b).opened == 1

    await rec.stop()
    for peer in (pub, sub):
        await peer.close()


async def test_feeds_need_the_shared_cluster_secret(
    nodes: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a, b, c = await nodes("one"), await nodes("two"), await nodes(secret=None)
    pub, _ = await publisher(http, a, 440)

    async def ask(gw: Gateway, token: str | None, name: str = "mic") -> tuple[int, Any]:
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        url = gw.base + feed_path("default", pub.session_id, name)
        async with http.get(url, headers=UPGRADE_HEADERS | auth) as r:
            return r.status, await r.json()

    assert await ask(a, None) == (
        401,
        {"errorCode": "unauthorized", "errorDescription": "missing or wrong cluster secret"},
    )
    assert (await ask(a, "two"))[0] == 401
    assert (await ask(a, "one", "other"))[0] == 404
    assert (await ask(c, "one"))[1]["errorCode"] == "cluster_secret_unset"
    assert (await ask(c, "one"))[0] == 403

    sub_b, refused = await pull(http, b, pub.session_id)  # another secret
    assert refused["errorCode"] == "cluster_unauthorized", refused
    sub_c, unset = await pull(http, c, pub.session_id)  # no secret here
    assert unset["errorCode"] == "cluster_secret_unset", unset
    assert "cluster secret" in unset["errorDescription"]
    assert not feeds_of(b).feeds
    assert feeds_of(b).opened == 0
    assert served_by(a).served == 0
    for peer in (pub, sub_b, sub_c):
        await peer.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_node_that_cannot_be_reached_is_a_clear_track_error(
    nodes: NodeFactory, http: aiohttp.ClientSession, state: FlakyState
) -> None:
    b = await nodes()
    await state.put_location("sfu:session:elsewhere", f"http://127.0.0.1:{closed_port()}")
    sub = SfuPeer(http, b.base + APP)
    await sub.open()
    body = await sub.pull(("elsewhere", "mic"), ("nowhere", "mic"))
    assert body["requiresImmediateRenegotiation"] is False
    gone, unknown = body["tracks"]
    assert gone["errorCode"] == "node_unreachable"
    assert gone["errorDescription"] == (
        "session 'elsewhere' is on another node, which cannot be reached"
    )
    assert unknown["errorCode"] == "not_found_track_error"  # as for one node
    assert unknown["errorDescription"] == "no track 'mic' in session 'nowhere'"
    assert not feeds_of(b).feeds
    await sub.close()


async def test_sessions_are_listed_while_the_state_server_is_down(
    nodes: NodeFactory, http: aiohttp.ClientSession, state: FlakyState
) -> None:
    a = await nodes()
    state.down = True
    peer = SfuPeer(http, a.base + APP)
    async with asyncio.timeout(1):
        await peer.open()  # not slowed, not failed
    assert await state.get_location(f"sfu:session:{peer.session_id}") is None
    await wait_for(lambda: feeds_of(a).listing.failures > 0)
    state.down = False  # back: the entry is written at the next retry
    await wait_for(lambda: feeds_of(a).listing.pending == 0, 3)
    assert await state.get_location(f"sfu:session:{peer.session_id}") == a.base
    await peer.close()


async def test_adapters_and_agents_reach_a_track_on_another_node(
    nodes: NodeFactory,
    http: aiohttp.ClientSession,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    a, b = await nodes(), await nodes()
    pub, _ = await publisher(http, a, 660)
    peer = SfuPeer(http, b.base + APP)
    item = {"location": "remote", "sessionId": pub.session_id, "trackName": "mic"}
    status, body = await peer.call(
        "POST", "/adapters/websocket/new", {"tracks": [item | {"endpoint": endpoint.url}]}
    )
    assert status == 200, body
    adapter_id = body["tracks"][0]["adapterId"]
    await wait_for(lambda: len(endpoint.frames) >= 50, 10)

    listen = [{"sessionId": pub.session_id, "trackName": "mic"}]
    status, agent = await peer.call("POST", "/agents/new", {"listen": listen})
    assert status == 201, agent
    (feed,) = feeds_of(b).feeds.values()
    assert feeds_of(b).opened == 1
    assert len(feed.source.subscribers) == 2

    status, _ = await peer.call("POST", f"/agents/{agent['agentId']}/close")
    assert status == 200
    status, _ = await peer.call(
        "POST", "/adapters/websocket/close", {"tracks": [{"adapterId": adapter_id}]}
    )
    assert status == 200
    await wait_for(lambda: not feeds_of(b).feeds and not served_by(a).serving)

    elsewhere = {"location": "remote", "sessionId": "nowhere", "trackName": "mic"}
    status, body = await peer.call(
        "POST", "/adapters/websocket/new", {"tracks": [elsewhere | {"endpoint": endpoint.url}]}
    )
    assert status == 404, body
    await pub.close()


async def test_feed_frames_and_a_slow_node() -> None:
    frame = encode_frame(2**32 + 5, b"opus")
    assert frame == b"\x00\x00\x00\x05opus"
    assert decode_frame(frame) == (5, b"opus")

    sender = FeedSender(backlog=3)
    for i in range(5):  # the pulling node reads nothing meanwhile
        sender.push(bytes([i]), i * 960)
    sender.end()
    assert sender.dropped == 2

    frames = []
    while (f := await sender.next()) is not None:
        frames.append(f)
    assert [decode_frame(f) for f in frames] == [
        (1920, b"\x02"),
        (2880, b"\x03"),
        (3840, b"\x04"),
    ]
