"""``voxgate bench relay``: what the gateway adds over a direct connection.

Starts three server processes on 127.0.0.1 — an echo upstream, a bare aiohttp relay
(the baseline: a relay with no auth, limits or metering) and voxgate itself — and
measures from this process, in one run:

1. round-trip latency, 1 KiB and 8 KiB frames, one connection: direct to the echo
   server, through the bare relay, through voxgate (blocks interleaved so that noise
   falls on all three alike); the figure is the added p50/p99 over direct;
2. throughput with 100 connections, each keeping a window of frames in flight;
3. RSS per idle relayed session with 2,000 idle sessions open.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from voxgate.runner import run_main
from voxgate.testing.upstream import echo_handler

# ----------------------------------------------------------------------- server modes


async def _echo_server() -> None:
    await _serve_forever(echo_handler)


async def _bare_relay(upstream: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def handle(request: web.Request) -> web.WebSocketResponse:
        up = await session.ws_connect(upstream, max_msg_size=0)
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)

        async def pump(src: object, dst: object) -> None:
            async for msg in src:  # type: ignore[attr-defined]
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)  # type: ignore[attr-defined]
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)  # type: ignore[attr-defined]
            await dst.close()  # type: ignore[attr-defined]

        await asyncio.gather(pump(ws, up), pump(up, ws))
        return ws

    await _serve_forever(handle)


async def _serve_forever(handler: object) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


# ----------------------------------------------------------------------- processes


class Proc:
    """A server process that prints ``listening on http://HOST:PORT``; its stderr goes to
    ``stderr`` (a file, created or truncated) when given, else nowhere."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        stderr: Path | None = None,
    ) -> None:
        self.name = name
        self._stderr = stderr.open("w") if stderr is not None else None
        self.p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr if self._stderr is not None else subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.p.stdout is not None
        deadline = time.monotonic() + 30
        self.port = 0
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on https?://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.p.kill()
            raise RuntimeError(f"{name} did not start")

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.p.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.p.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
        if self._stderr is not None:
            self._stderr.close()


def voxgate_proc(cfg: Path, *, stderr: Path | None = None, log_level: str = "warning") -> Proc:
    """``voxgate serve`` with ``cfg`` on a free port, as its own process (its log, at
    ``log_level``, to the file ``stderr`` if given)."""
    argv = [sys.executable, "-m", "voxgate", "serve", "--config", str(cfg), "--port", "0"]
    return Proc("voxgate", [*argv, "--log-level", log_level], stderr=stderr)


def baseline_proc(tree: str, cfg: Path) -> Proc:
    """``voxgate serve`` as :func:`voxgate_proc` does it, but the code of another source
    tree (an absolute path; a checkout of another commit), to compare in the same run."""
    argv = [sys.executable, "-m", "voxgate", "serve", "--config", str(cfg), "--port", "0"]
    return Proc("baseline", [*argv, "--log-level", "warning"], {"PYTHONPATH": f"{tree}/src"})


def add_baseline_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--baseline TREE``: ``what`` also runs against :func:`baseline_proc`'s server."""
    p.add_argument(
        "--baseline",
        metavar="TREE",
        type=lambda tree: str(Path(tree).resolve()),
        help=f"also run {what} against a server from this source tree (a checkout of "
        "another commit), in the same run",
    )


def _mode_argv(*mode: str) -> list[str]:
    return [sys.executable, "-m", "voxgate.bench.relay", *mode]


# ----------------------------------------------------------------------- measurements


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def latency(
    urls: dict[str, str], size: int, rounds: int, block: int
) -> dict[str, list[float]]:
    payload = os.urandom(size)
    out: dict[str, list[float]] = {k: [] for k in urls}
    async with aiohttp.ClientSession() as cs:
        conns = {k: await cs.ws_connect(u, max_msg_size=0) for k, u in urls.items()}
        for ws in conns.values():  # warm up
            for _ in range(200):
                await ws.send_bytes(payload)
                await ws.receive()
        done = 0
        clock = time.perf_counter
        while done < rounds:
            for k, ws in conns.items():
                samples = out[k]
                for _ in range(block):
                    t0 = clock()
                    await ws.send_bytes(payload)
                    msg = await ws.receive()
                    samples.append(clock() - t0)
                    if msg.type is not WSMsgType.BINARY or len(msg.data) != size:
                        raise RuntimeError(f"{k}: echo did not come back intact")
            done += block
        for ws in conns.values():
            await ws.close()
    return out


async def throughput(url: str, conns: int, window: int, seconds: float, size: int) -> float:
    payload = os.urandom(size)
    count = 0
    stop_at = 0.0

    async def one(cs: aiohttp.ClientSession) -> None:
        nonlocal count
        ws = await cs.ws_connect(url, max_msg_size=0)
        for _ in range(window):
            await ws.send_bytes(payload)
        while True:
            msg = await ws.receive()
            if msg.type is not WSMsgType.BINARY:
                break
            if time.perf_counter() < stop_at:
                count += 1
                await ws.send_bytes(payload)
            else:
                break
        await ws.close()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as cs:
        stop_at = time.perf_counter() + 1.0 + seconds  # one warm-up second
        tasks = [asyncio.create_task(one(cs)) for _ in range(conns)]
        await asyncio.sleep(1.0)
        start_count = count
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        done = count - start_count
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*tasks)
    return done / elapsed


async def idle_rss(proc: Proc, url: str, sessions: int) -> float:
    """Bytes of RSS the server process gains per idle relayed session."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as cs:
        warm = [await cs.ws_connect(url) for _ in range(50)]  # pools, first-use allocations
        for ws in warm:
            await ws.send_str("x")
            await ws.receive()
        await asyncio.sleep(0.5)
        before = proc.rss()
        conns = []
        sem = asyncio.Semaphore(100)

        async def open_one() -> None:
            async with sem:
                ws = await cs.ws_connect(url)
                await ws.send_str("x")
                await ws.receive()
                conns.append(ws)

        await asyncio.gather(*(open_one() for _ in range(sessions)))
        await asyncio.sleep(1.0)
        after = proc.rss()
        await asyncio.gather(*(ws.close() for ws in conns + warm))
    return (after - before) / sessions


def _config(upstream_port: int, store: Path) -> str:
    return f"""
[store]
url = "sqlite:///{store}"

[providers.echo]
url = "ws://127.0.0.1:{upstream_port}/echo"

[accounts.local.gateways.default]
limits.max_connections = 100000
limits.messages_per_minute = 100000000
limits.max_session_seconds = 86400
limits.idle_seconds = 3600
"""


async def run(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
    cfg = tmp / "voxgate.toml"
    started: list[Proc] = []  # stopped at the end, also when a later one does not start
    try:
        started.append(echo := Proc("echo upstream", _mode_argv("--echo-server")))
        cfg.write_text(_config(echo.port, tmp / "usage.db"))
        upstream_url = f"ws://127.0.0.1:{echo.port}/echo"
        started.append(bare := Proc("bare relay", _mode_argv("--bare-relay", upstream_url)))
        started.append(gateway := voxgate_proc(cfg))
        urls = {
            "direct": upstream_url,
            "bare relay": f"ws://127.0.0.1:{bare.port}/",
            "voxgate": f"ws://127.0.0.1:{gateway.port}/v1/local/default/echo",
        }
        print(f"# voxgate bench relay — {os.cpu_count()} cores, python {sys.version.split()[0]}")
        sections = set(args.only or ("latency", "throughput", "idle"))
        if "latency" in sections:
            print("## round trip, one connection (µs; added = over direct)")
        for size in (1024, 8192) if "latency" in sections else ():
            res = await latency(urls, size, args.rounds, args.block)
            d50, d99 = pct(res["direct"], 0.5), pct(res["direct"], 0.99)
            for name, samples in res.items():
                p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
                line = f"{size // 1024} KiB {name:<11} p50 {p50 * 1e6:6.1f}  p99 {p99 * 1e6:6.1f}"
                if name != "direct":
                    line += f"  added p50 {(p50 - d50) * 1e6:6.1f}"
                    line += f"  added p99 {(p99 - d99) * 1e6:6.1f}"
                print(line)
        if "throughput" in sections:
            print(f"## throughput, {args.conns} connections, window {args.window}, 1 KiB frames")
        for name in ("bare relay", "voxgate") if "throughput" in sections else ():
            runs = [
                await throughput(urls[name], args.conns, args.window, args.seconds, 1024)
                for _ in range(args.repeat)
            ]
            rt = statistics.median(runs)
            print(
                f"{name:<11} round trips/s {rt:9.0f}  frames relayed/s (both ways) {2 * rt:9.0f}"
                f"  (median of {args.repeat}: {', '.join(f'{r:.0f}' for r in runs)})"
            )
        if "idle" in sections:
            print(f"## idle relayed sessions: {args.idle} open")
        for name, proc in (
            (("bare relay", bare), ("voxgate", gateway)) if "idle" in sections else ()
        ):
            per = await idle_rss(proc, urls[name], args.idle)
            print(f"{name:<11} RSS per idle session {per / 1024:6.1f} KiB")
    finally:
        for p in reversed(started):
            p.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="voxgate bench relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=5000, help="round trips per target and size")
    p.add_argument("--block", type=int, default=250, help="round trips per interleaved block")
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--window", type=int, default=4, help="frames in flight per connection")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument(
        "--only",
        action="append",
        choices=("latency", "throughput", "idle"),
        help="run only this section (repeatable)",
    )
    p.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bare-relay", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.echo_server:
        run_main(_echo_server())
    elif args.bare_relay:
        run_main(_bare_relay(args.bare_relay))
    else:
        run_main(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
