"""``voxgate bench sfu``: forwarding cost and delivery of the media server.

Three processes on this machine: ``voxgate serve`` (measured), this driver (one Opus
publisher and the adapter endpoint), and a subscriber process holding N PeerConnections.

1. **Fan-out**: the publisher sends 20 ms Opus packets at 50/s; for N = 10, 50, 100, 200
   subscribers, the server's CPU time over the publishing window (as a share of one
   core), per subscriber after the N = 0 baseline taken in the same run, and the
   share of published packets each subscriber received.
2. **Adapter latency**: an ingest adapter reads 20 ms PCM frames from this process's
   WebSocket (a tone burst every 400 ms); a WebRTC subscriber here takes each packet
   as it arrives (no jitter buffer), decodes it, and the burst's arrival minus its
   send time is the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from voxgate.bench.relay import Proc, pct, voxgate_proc
from voxgate.opus import FRAME_BYTES, FRAME_SAMPLES, OpusDecoder, OpusEncoder
from voxgate.protocols.adapter import encode_packet
from voxgate.testing.webrtc import SfuPeer, tone
from voxgate.webrtc import PacketTrack, tap_receiver

APP = "/v1/apps/default"


def opus_packets(seconds: float) -> list[bytes]:
    mono = np.frombuffer(tone(440, seconds), np.int16)
    return OpusEncoder().encode(np.repeat(mono, 2).tobytes())


# --------------------------------------------------------------------- subscriber process


async def _subscribers(base: str, session: str, n: int) -> None:
    """Open ``n`` subscribers, count packets between "count" and "report" on stdin."""
    counts = [0] * n
    counting = False
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        peers = [SfuPeer(http, base) for _ in range(n)]

        async def join(i: int) -> None:
            peer = peers[i]
            await peer.open()

            def on_track(track: Any, i: int = i) -> None:
                for t in peer.pc.getTransceivers():
                    if t.receiver.track is track:

                        def sink(payload: bytes, ts: int) -> None:
                            if counting:
                                counts[i] += 1

                        tap_receiver(t.receiver, sink)

            peer.pc.on("track", on_track)
            await peer.pull((session, "mic"))

        for start in range(0, n, 10):
            await asyncio.gather(*(join(i) for i in range(start, min(n, start + 10))))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(p.pc.connectionState == "connected" for p in peers):
                break
            await asyncio.sleep(0.2)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            if line == "count":
                counting = True
                print("counting", flush=True)
            elif line == "report":
                counting = False
                print("counts " + " ".join(map(str, counts)), flush=True)
                break
        await asyncio.gather(*(p.close() for p in peers))


# ------------------------------------------------------------------------------- driver


class SubProc:
    def __init__(self, base: str, session: str, n: int) -> None:
        import subprocess

        argv = [sys.executable, "-m", "voxgate.bench.sfu", "--subscribers", str(n)]
        self.p = subprocess.Popen(
            [*argv, "--base", base, "--session", session],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def expect(self, word: str) -> str:
        assert self.p.stdout is not None
        while line := self.p.stdout.readline():
            if line.startswith(word):
                return line
        raise RuntimeError(f"subscriber process ended before {word!r}")

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        """Let the process close its PeerConnections itself, so the server's sessions
        end now instead of lingering until ICE consent fails."""
        import subprocess

        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()


async def _publish(track: PacketTrack, packets: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, payload in enumerate(packets):
        await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
        track.push(payload, i * FRAME_SAMPLES)


async def fan_out(server: Proc, base: str, levels: list[int], seconds: float) -> None:
    packets = opus_packets(seconds)
    async with aiohttp.ClientSession() as http:
        pub = SfuPeer(http, base)
        await pub.open()
        track = PacketTrack(backlog=500)
        await pub.publish("mic", track)
        await _publish(track, opus_packets(1.0))  # warm up
        print(f"fan-out: one publisher, {len(packets)} packets at 50/s per level")
        print(" subscribers | server CPU % of a core | per subscriber (over N=0) | delivered")
        baseline = 0.0
        for n in [0, *levels]:
            sub = SubProc(base, pub.session_id, n) if n else None
            if sub is not None:
                await asyncio.to_thread(sub.expect, "ready")
                sub.send("count")
                await asyncio.to_thread(sub.expect, "counting")
                await asyncio.sleep(1.0)
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            await _publish(track, packets)
            await asyncio.sleep(0.5)
            share = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            if sub is None:
                baseline = share
                print(f" {n:>11} | {share * 100:>21.2f} |")
                continue
            sub.send("report")
            counts = [int(c) for c in (await asyncio.to_thread(sub.expect, "counts")).split()[1:]]
            await asyncio.to_thread(sub.stop)
            delivered = sum(counts) / (len(packets) * n)
            per = (share - baseline) / n
            print(
                f" {n:>11} | {share * 100:>21.2f} | {per * 100:>24.3f} % | "
                f"{delivered * 100:.2f} % (worst {min(counts) / len(packets) * 100:.1f} %)"
            )
            await asyncio.sleep(2.0)  # the server collects the closed sessions
        await pub.close()


async def adapter_latency(base: str, bursts: int) -> None:
    sent_at: dict[int, float] = {}
    quiet = b"\0" * FRAME_BYTES
    burst = np.repeat(np.frombuffer(tone(1000, 0.02, 12000), np.int16), 2).tobytes()

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.5
        for i in range(bursts * 20):
            await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
            loud = i % 20 == 10
            if loud:
                sent_at[i // 20] = time.monotonic()
            await ws.send_bytes(encode_packet(i, i * FRAME_SAMPLES, burst if loud else quiet))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/in", endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/in?token=bench"
    arrived: dict[int, float] = {}
    decoder = OpusDecoder()
    async with aiohttp.ClientSession() as http:
        peer = SfuPeer(http, base)
        await peer.open()
        status, body = await peer.call(
            "POST",
            "/adapters/websocket/new",
            {"tracks": [{"location": "local", "trackName": "pcm", "endpoint": url}]},
        )
        assert status == 200, body
        loud_seen = [False]

        def sink(payload: bytes, ts: int) -> None:
            pcm = np.frombuffer(decoder.decode(payload), np.int16)
            loud = pcm.size > 0 and float(np.abs(pcm).max()) > 3000
            if loud and not loud_seen[0]:
                arrived[len(arrived)] = time.monotonic()
            loud_seen[0] = loud

        def on_track(track: Any) -> None:
            for t in peer.pc.getTransceivers():
                if t.receiver.track is track:
                    tap_receiver(t.receiver, sink)

        peer.pc.on("track", on_track)
        await peer.pull((body["tracks"][0]["sessionId"], "pcm"))
        await asyncio.sleep(bursts * 0.4 + 1.5)
        await peer.close()
    await runner.cleanup()
    # bursts sent before the subscriber connected are not heard: align from the end
    lat = [arrived[len(arrived) - 1 - k] - sent_at[bursts - 1 - k] for k in range(len(arrived))]
    lat = [x * 1000 for x in lat if x > 0]
    print(
        f"adapter ingest -> subscriber: n={len(lat)} p50 {statistics.median(lat):.1f} ms, "
        f"p95 {pct(lat, 0.95):.1f} ms"
    )


async def _drive(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "voxgate.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:///{tmp}/usage.db"\n')
        server = voxgate_proc(cfg)
        base = f"http://127.0.0.1:{server.port}{APP}"
        try:
            await fan_out(server, base, args.levels, args.seconds)
            await adapter_latency(base, args.bursts)
        finally:
            server.stop()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench sfu", description=__doc__.split("\n")[0])
    p.add_argument("--levels", type=int, nargs="+", default=[10, 50, 100, 200])
    p.add_argument("--seconds", type=float, default=10.0, help="publishing window per level")
    p.add_argument("--bursts", type=int, default=50)
    p.add_argument("--subscribers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--session", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.subscribers:
        asyncio.run(_subscribers(args.base, args.session, args.subscribers))
    else:
        asyncio.run(_drive(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
