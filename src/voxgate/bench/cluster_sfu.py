"""What a cross-node SFU pull adds over a local pull (part of ``voxgate bench cluster``).

A publisher on node A sends Opus packets of noise at 50/s (noise, so that every packet
is different bytes). At the same time a subscriber on node A pulls the track (local)
and a subscriber on node B pulls it (remote: through B's feed from A). Both take each
packet as it arrives (a tapped receiver: no jitter buffer, no decoding) and note the
time, keyed by the packet's bytes, which both servers forward unchanged. For each
packet both received, B's arrival minus A's is what the node-to-node hop added.

The nodes must share a state backend and a cluster secret; :func:`cross_node_latency`
drives them through the SFU API like any client (``voxgate.testing.webrtc.SfuPeer``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from voxgate.bench.relay import pct
from voxgate.bench.sfu import _publish
from voxgate.opus import FRAME_SAMPLES, OpusEncoder
from voxgate.testing.webrtc import SfuPeer
from voxgate.webrtc import PacketTrack, tap_receiver

TRACK = "bench"


@dataclass(frozen=True)
class AddedLatency:
    """Arrival on node B minus arrival on node A, over the packets both received."""

    sent: int
    compared: int
    lost_local: int
    lost_remote: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    max_ms: float

    def summary(self) -> str:
        return (
            f"cross-node pull adds p50 {self.p50_ms:.3f} ms, p95 {self.p95_ms:.3f} ms "
            f"(mean {self.mean_ms:.3f}, max {self.max_ms:.3f}) over {self.compared} of "
            f"{self.sent} packets; lost {self.lost_local} locally, {self.lost_remote} remotely"
        )


def noise_packets(n: int, seed: int = 7) -> list[bytes]:
    """``n`` 20 ms Opus packets of stereo noise, each one different bytes."""
    rng = np.random.default_rng(seed)
    pcm = rng.integers(-8000, 8000, size=n * FRAME_SAMPLES * 2, dtype=np.int16)
    packets = OpusEncoder().encode(pcm.tobytes())
    if len(set(packets)) != len(packets):
        raise RuntimeError("two noise packets came out alike; try another seed")
    return packets


async def connected(peer: SfuPeer, within: float = 20.0) -> None:
    """Until ``peer``'s PeerConnection is connected."""
    ready = asyncio.Event()

    def check() -> None:
        if peer.pc.connectionState == "connected":
            ready.set()

    peer.pc.on("connectionstatechange", check)
    check()
    async with asyncio.timeout(within):
        await ready.wait()


async def _subscriber(
    http: aiohttp.ClientSession, base: str, secret: str | None, sid: str, into: dict[bytes, float]
) -> SfuPeer:
    """A peer of ``base`` pulling the track, noting when each packet first arrives."""
    peer = SfuPeer(http, base, secret=secret)

    def sink(payload: bytes, _timestamp: int) -> None:
        into.setdefault(payload, time.perf_counter())

    def on_track(track: Any) -> None:
        for t in peer.pc.getTransceivers():
            if t.receiver.track is track:
                tap_receiver(t.receiver, sink)

    peer.pc.on("track", on_track)
    await peer.open()
    body = await peer.pull((sid, TRACK))
    (result,) = body["tracks"]
    if "errorCode" in result:
        raise RuntimeError(f"{base}: {result['errorCode']}: {result['errorDescription']}")
    return peer


async def cross_node_latency(
    node_a: str,
    node_b: str,
    app: str = "default",
    *,
    packets: int = 500,
    app_secret: str | None = None,
    warmup: int = 50,
) -> AddedLatency:
    """Publish on ``node_a`` (a base URL such as ``http://127.0.0.1:8780``), pull on
    ``node_a`` and ``node_b`` at once, and compare the arrivals of ``packets`` packets
    (after ``warmup`` more). Raises RuntimeError when a pull is refused."""
    payloads = noise_packets(warmup + packets)
    local: dict[bytes, float] = {}
    remote: dict[bytes, float] = {}
    async with aiohttp.ClientSession() as http:
        pub = SfuPeer(http, f"{node_a}/v1/apps/{app}", secret=app_secret)
        peers = [pub]
        try:
            await pub.open()
            track = PacketTrack(backlog=500)
            await pub.publish(TRACK, track)
            for node, into in ((node_a, local), (node_b, remote)):
                peers.append(
                    await _subscriber(
                        http, f"{node}/v1/apps/{app}", app_secret, pub.session_id, into
                    )
                )
            for peer in peers:
                await connected(peer)
            await _publish(track, payloads)  # the first ``warmup`` are not compared
            await asyncio.sleep(0.5)  # the last packets arrive
        finally:
            for peer in peers:
                await peer.close()
    measured = payloads[warmup:]
    added = [(remote[p] - local[p]) * 1000 for p in measured if p in local and p in remote]
    if not added:
        raise RuntimeError("no packet reached both subscribers")
    return AddedLatency(
        sent=len(measured),
        compared=len(added),
        lost_local=sum(p not in local for p in measured),
        lost_remote=sum(p not in remote for p in measured),
        p50_ms=statistics.median(added),
        p95_ms=pct(added, 0.95),
        mean_ms=statistics.fmean(added),
        max_ms=max(added),
    )
