"""A healthy relay session beside a load, in a process of its own: the canary.

Hostile-input tests and ``voxgate bench soak`` load one voxgate server and ask whether a
well-behaved client beside the load still gets its answers at once. The canary is that
client. It runs in its own process, so neither the load generator's work nor the test's
event loop shows up in what it measures, and it brings its own echo upstream:

1. :meth:`Canary.start` spawns ``python -m voxgate.testing.canary``, which starts an echo
   WebSocket server on 127.0.0.1 and prints its address (:attr:`Canary.upstream_url`).
2. The caller starts voxgate with a provider pointing there (:meth:`Canary.provider_toml`).
3. :meth:`Canary.begin` gives it the relay address; every ``interval`` seconds it sends a
   64-byte text frame through the gateway and times the echo.
4. :meth:`Canary.finish` stops it and returns a :class:`CanaryResult` (round trips in ms,
   and each error the session met: a close, a refused connection, a lost echo).

Line protocol on stdin/stdout: ``upstream URL`` out; ``begin URL INTERVAL [TOKEN]`` in; ``stop``
in; one JSON line ``{"rtts_ms": [...], "errors": [...]}`` out.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from voxgate.runner import run_main
from voxgate.testing.upstream import echo_handler

#: How long the canary waits for one echo before it counts it as lost.
ECHO_TIMEOUT = 5.0


@dataclass(frozen=True)
class CanaryResult:
    rtts_ms: tuple[float, ...]
    errors: tuple[str, ...] = field(default_factory=tuple)

    def pct(self, q: float) -> float:
        """The ``q`` quantile (0–1) of the round trips, in ms (``inf`` with none)."""
        if not self.rtts_ms:
            return float("inf")
        s = sorted(self.rtts_ms)
        return s[min(len(s) - 1, int(q * len(s)))]

    @property
    def p50(self) -> float:
        return self.pct(0.5)

    @property
    def p99(self) -> float:
        return self.pct(0.99)

    def summary(self) -> str:
        return (
            f"canary: {len(self.rtts_ms)} round trips, p50 {self.p50:.1f} ms, "
            f"p99 {self.p99:.1f} ms, max {max(self.rtts_ms, default=0):.1f} ms, "
            f"{len(self.errors)} errors {list(self.errors[:5])}"
        )


class Canary:
    """The canary process; use ``async with await Canary.start() as canary:``."""

    def __init__(self, proc: asyncio.subprocess.Process, upstream_url: str) -> None:
        self._proc = proc
        self.upstream_url = upstream_url

    @classmethod
    async def start(cls) -> Canary:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voxgate.testing.canary",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # the result is one JSON line: ~20 bytes a round trip, 50 round trips a second
            limit=1 << 28,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        if not line.startswith("upstream "):
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"the canary process did not start: {line!r}")
        return cls(proc, line.split()[1])

    def provider_toml(self, name: str = "canary") -> str:
        """TOML declaring the provider ``name`` that relays to the canary's echo server."""
        return f'[providers.{name}]\nurl = "{self.upstream_url}"\n'

    async def begin(
        self, relay_url: str, *, interval: float = 0.02, token: str | None = None
    ) -> None:
        """Start the round trips through ``relay_url`` (a relay address to the provider),
        with the gateway ``token`` when the gateway has tokens."""
        await self._write(f"begin {relay_url} {interval} {token or ''}\n".rstrip() + "\n")

    async def finish(self) -> CanaryResult:
        await self._write("stop\n")
        assert self._proc.stdout is not None
        async with asyncio.timeout(30):
            line = await self._proc.stdout.readline()
        data = orjson.loads(line)
        return CanaryResult(tuple(data["rtts_ms"]), tuple(data["errors"]))

    async def _write(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line.encode())
        await self._proc.stdin.drain()

    async def close(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()
        await self._proc.wait()

    async def __aenter__(self) -> Canary:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --- the canary process ------------------------------------------------------------------


async def _measure(
    url: str, interval: float, token: str | None, stop: asyncio.Event, out: dict[str, Any]
) -> None:
    rtts: list[float] = out["rtts_ms"]
    errors: list[str] = out["errors"]
    payload = "c" * 56
    headers = {"voxgate-authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as cs:
        while not stop.is_set():
            try:
                async with cs.ws_connect(url, max_msg_size=0, autoping=True, headers=headers) as ws:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        await ws.send_str(payload)
                        async with asyncio.timeout(ECHO_TIMEOUT):
                            msg = await ws.receive()
                        if msg.type is not WSMsgType.TEXT or msg.data != payload:
                            errors.append(f"session ended: {msg.type.name} {msg.data!r}"[:200])
                            break
                        rtts.append((time.perf_counter() - t0) * 1000)
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(interval):
                                await stop.wait()
            except TimeoutError:
                errors.append(f"no echo within {ECHO_TIMEOUT} s")
            except (aiohttp.ClientError, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.2)


async def _main() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", echo_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"upstream ws://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    out: dict[str, Any] = {"rtts_ms": [], "errors": []}
    task: asyncio.Task[None] | None = None
    while True:
        words = (await reader.readline()).decode().split()
        if not words or words[0] == "stop":
            break
        if words[0] == "begin" and task is None:
            token = words[3] if len(words) > 3 else None
            task = asyncio.create_task(_measure(words[1], float(words[2]), token, stop, out))
    stop.set()
    if task is not None:
        await task
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    sys.stdout.flush()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    run_main(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
