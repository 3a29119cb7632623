"""``voxgate bench soak``: does the server hold steady under a long mixed load?

Starts an echo upstream, voxgate (``voxgate serve``, SQLite store, stderr to a file) and
the canary (:mod:`voxgate.testing.canary`) as processes, and holds for ``--minutes``:

- ``--idle`` (1,000) idle relay sessions (provider ``idle``), opened first, left open;
- ``--active`` (50) relay sessions (provider ``active``) sending 1 KiB every 100 ms and
  reading the echo; each lives 20–60 s, then a new one takes its place (churn);
- ``--realtime`` (4) voice sessions (``/v1/realtime``, ``voxgate/echo``, server VAD)
  streaming real speech (``tests/data``'s ARCTIC clips, else piper) in real time in 20 ms
  chunks; the silence after an utterance alternately lets the answer play out (7 s) and
  cuts into it (2 s: barge-in, the answer truncated where heard); every event is read;
  each lives 45–90 s, then a new one opens;
- the canary's own relay session (a 64-byte round trip every 20 ms).

Every ``--sample-seconds`` it samples the server's RSS and open fds (psutil). Warm-up is
the first 20 % of the run, but at least a minute (at most half the run). Figures: RSS and
fd slopes (least squares over the samples after warm-up, per minute); RSS at the end of
warm-up, and once every client has closed and the server has had 5 s to settle; records
vs sessions (every session opened, churned ones included, against the usage records in
the SQLite file, read once they stop coming, ≤ 30 s); the canary's p50/p99 and errors;
"Traceback" lines in the server's stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from aiohttp import WSMsgType

from voxgate.audio import read_wav, resample
from voxgate.bench.page import QUESTION
from voxgate.bench.realtime import CHUNK, RATE, Session
from voxgate.bench.relay import Proc, _config, _mode_argv, pct, voxgate_proc
from voxgate.bench.sentences import HARVARD
from voxgate.runner import run_main
from voxgate.speech_client import speak
from voxgate.testing.canary import Canary, CanaryResult

FRAME = 1024
ACTIVE_EVERY = 0.1
ACTIVE_LIFE = (20.0, 60.0)
REALTIME_LIFE = (45.0, 90.0)
#: Silence after each utterance, in turn: the answer plays out; the next question cuts in.
GAPS = (7.0, 2.0)
TURN_DETECTION = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}
SESSION = {"audio": {"input": {"turn_detection": TURN_DETECTION}}}
SETTLE = 5.0
RECORDS_WAIT = 30.0
MiB = 1024 * 1024
TARGET_RSS_SLOPE_KIB = 256.0
TARGET_CLOSE_MIB = 64.0
CANARY_P99_MS = 50.0
KINDS = ("idle", "active", "realtime")

ClientWS = aiohttp.ClientWebSocketResponse


@dataclass
class Load:
    """What the load did, shared by its tasks (all on one event loop)."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: Sessions whose handshake succeeded, by kind, and those of them closed (by churn or
    #: an error) before the load stopped.
    opened: Counter[str] = field(default_factory=Counter)
    ended_early: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: Realtime events received, by type (``response.done`` also by status).
    events: Counter[str] = field(default_factory=Counter)
    realtime_ids: list[str] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors[what[:160]] += 1


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    rss: int
    fds: int
    cpu: float  # CPU seconds of the server so far
    own_cpu: float  # and of this process


def take_sample(server: psutil.Process, t0: float) -> Sample:
    """The server's figures with its worker processes' (pocketsphinx decoders) added."""
    rss = fds = 0
    cpu = 0.0
    for proc in [server, *server.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            rss, fds = rss + proc.memory_info().rss, fds + proc.num_fds()
            cpu += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return Sample(time.monotonic() - t0, rss, fds, cpu, time.process_time())


def warmup_seconds(total: float) -> float:
    """20 % of the run, but at least a minute, and at most half of it."""
    return max(0.2 * total, min(60.0, total / 2))


def slope_per_minute(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope * 60


async def connect(http: aiohttp.ClientSession, url: str, load: Load, kind: str) -> ClientWS | None:
    try:
        ws = await http.ws_connect(url, max_msg_size=0)
    except (aiohttp.ClientError, OSError) as exc:
        load.error(f"{kind}: connect failed: {type(exc).__name__}: {exc}")
        return None
    load.opened[kind] += 1
    return ws


async def open_idle(http: aiohttp.ClientSession, url: str, n: int, load: Load) -> list[ClientWS]:
    sem = asyncio.Semaphore(50)

    async def one() -> ClientWS | None:
        async with sem:
            return await connect(http, url, load, "idle")

    return [ws for ws in await asyncio.gather(*(one() for _ in range(n))) if ws is not None]


async def hold_idle(ws: ClientWS, load: Load) -> None:
    """Read (so pings are answered) until the bench closes ``ws``."""
    async for _msg in ws:
        pass
    if not load.stop.is_set():
        load.ended_early["idle"] += 1
        load.error(f"idle: closed by the server, code {ws.close_code}")


async def active(http: aiohttp.ClientSession, url: str, load: Load, rng: random.Random) -> None:
    """One active slot: a session round-tripping 1 KiB every 100 ms for its lifetime, then
    the next session, until the load stops."""
    payload = os.urandom(FRAME)
    await asyncio.sleep(rng.uniform(0, ACTIVE_EVERY))
    while not load.stop.is_set():
        ws = await connect(http, url, load, "active")
        if ws is None:
            await asyncio.sleep(1.0)
            continue
        try:
            await exchange(ws, payload, load, time.monotonic() + rng.uniform(*ACTIVE_LIFE))
        except TimeoutError:
            load.error("active: no echo within 5 s")
        except (aiohttp.ClientError, OSError) as exc:
            load.error(f"active: {exc!r}")
        finally:
            if not load.stop.is_set():
                load.ended_early["active"] += 1
            await ws.close()


async def exchange(ws: ClientWS, payload: bytes, load: Load, end: float) -> None:
    due = time.monotonic()
    while not load.stop.is_set() and due < end:
        t0 = time.perf_counter()
        await ws.send_bytes(payload)
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type is not WSMsgType.BINARY or msg.data != payload:
            load.error(f"active: session ended: {msg.type.name} code {ws.close_code}")
            return
        load.rtts.append(time.perf_counter() - t0)
        due += ACTIVE_EVERY
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def speech_clips(http: aiohttp.ClientSession, base: str) -> list[bytes]:
    """Real speech at 24 kHz: the ARCTIC recordings of a checkout, else piper's voice."""
    wavs = [read_wav(p) for p in sorted(QUESTION.parent.glob("arctic_*.wav"))]
    if wavs:
        return [resample(w.mono(), w.sample_rate, RATE) for w in wavs]
    spoken = [await speak(http, base, text, sample_rate=RATE) for text in HARVARD[:4]]
    return [resample(s.pcm, s.sample_rate, RATE) for s in spoken]


async def realtime(
    http: aiohttp.ClientSession, base: str, clips: list[bytes], load: Load, rng: random.Random
) -> None:
    """One realtime slot: a talking session for its lifetime, then the next one."""
    url = f"{base}/v1/realtime?model=voxgate/echo"
    while not load.stop.is_set():
        ws = await connect(http, url, load, "realtime")
        if ws is None:
            await asyncio.sleep(1.0)
            continue
        try:
            await converse(Session(ws), clips, load, rng)
        except (aiohttp.ClientError, OSError, TimeoutError, KeyError, ValueError) as exc:
            load.error(f"realtime: {exc!r}")
        finally:
            if not load.stop.is_set():
                load.ended_early["realtime"] += 1


async def converse(s: Session, clips: list[bytes], load: Load, rng: random.Random) -> None:
    created: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(read_events(s, load, created))
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(30):
            load.realtime_ids.append(await created)
        await s.send("session.update", session=SESSION)
        mic = asyncio.create_task(microphone(s, clips, rng))
        tasks = [mic, asyncio.create_task(load.stop.wait())]
        done, _ = await asyncio.wait(
            {*tasks, reader}, timeout=rng.uniform(*REALTIME_LIFE), return_when="FIRST_COMPLETED"
        )
        if reader in done and not load.stop.is_set():
            load.error(f"realtime: closed by the server, code {s.ws.close_code}")
        if mic in done and mic.exception() is not None:
            load.error(f"realtime: sending failed: {mic.exception()!r}")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await s.ws.close()
        await reader


async def read_events(s: Session, load: Load, created: asyncio.Future[str]) -> None:
    """Read every event the server sends (``created`` gets the session id), playing the
    answer audio in real time like a client: speech that starts while an answer is still
    playing truncates the answer where it was heard (barge-in)."""
    item, started, audio_ms = "", 0.0, 0.0
    try:
        async for msg in s.ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            ev, now = orjson.loads(msg.data), time.monotonic()
            kind = ev.get("type", "?")
            load.events[kind] += 1
            if kind == "session.created" and not created.done():
                created.set_result(ev["session"]["id"])
            elif kind == "response.output_audio.delta":
                if ev["item_id"] != item:
                    item, started, audio_ms = ev["item_id"], now, 0.0
                audio_ms += len(ev["delta"]) * 3 / 4 / (2 * RATE / 1000)
            elif kind == "input_audio_buffer.speech_started" and item:
                heard = (now - started) * 1000
                if heard < audio_ms:
                    load.events["barge-in"] += 1
                    end = {"item_id": item, "content_index": 0, "audio_end_ms": int(heard)}
                    await s.send("conversation.item.truncate", **end)
                item = ""
            elif kind == "response.done":
                load.events[f"response.done {ev['response'].get('status')}"] += 1
            elif kind == "error":
                err = ev["error"]
                load.error(f"realtime: error event {err.get('code')}: {err.get('message')}")
    finally:
        if not created.done():
            created.set_exception(ConnectionError("closed before session.created"))


async def microphone(s: Session, clips: list[bytes], rng: random.Random) -> None:
    """A microphone that never stops: room tone, then utterances with silences between."""
    await s.stream(bytes(CHUNK * 25))
    first = rng.randrange(len(clips))
    for i in itertools.count():
        silence = bytes(2 * int(RATE * GAPS[i % len(GAPS)]))
        await s.stream(clips[(first + i) % len(clips)] + silence)


@dataclass
class Outcome:
    samples: list[Sample]
    after_close: Sample
    load: Load
    canary: CanaryResult
    #: (session_id, kind, ended_at) of every usage record; kind as in ``KINDS``.
    records: list[tuple[str, str, float]]
    stop_wall: float


def soak_config(echo_port: int, db: Path, canary: Canary) -> str:
    providers = "".join(
        f'\n[providers.{kind}]\nurl = "ws://127.0.0.1:{echo_port}/{kind}"\n'
        for kind in ("idle", "active")
    )
    speech = '\n[speech]\npreload = ["piper", "pocketsphinx"]\n'
    return _config(echo_port, db) + providers + "\n" + canary.provider_toml() + speech


def read_records(db: Path) -> list[tuple[str, str, float]]:
    kind = "CASE WHEN kind = 'realtime' THEN kind ELSE provider END"
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute(f"SELECT session_id, {kind}, ended_at FROM usage_records")
        return [(str(a), str(b), float(c)) for a, b, c in rows]


async def wait_records(db: Path, load: Load) -> list[tuple[str, str, float]]:
    """The records once every session has one, or once none came for 5 s (≤ 30 s)."""
    expected, counts = sum(load.opened.values()), [-1]
    for _ in range(int(RECORDS_WAIT)):
        rows = await asyncio.to_thread(read_records, db)
        counts.append(sum(1 for _, k, _ in rows if k in KINDS))
        if counts[-1] >= expected or counts[-1] == counts[-6:][0]:  # as 5 s ago
            return rows
        await asyncio.sleep(1.0)
    return rows


async def run_load(args: argparse.Namespace, gateway: Proc, canary: Canary, db: Path) -> Outcome:
    base = f"ws://127.0.0.1:{gateway.port}"
    relay = f"{base}/v1/local/default"
    server = psutil.Process(gateway.p.pid)
    load, rng = Load(), random.Random(args.seed)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clips = await speech_clips(http, base)
        t = time.monotonic()
        idle = await open_idle(http, f"{relay}/idle", args.idle, load)
        now = take_sample(server, time.monotonic())
        print(
            f"opened {len(idle)} idle relay sessions in {time.monotonic() - t:.1f} s; "
            f"server RSS {now.rss / MiB:.1f} MiB, fds {now.fds} (with its worker processes)"
        )
        holders = [asyncio.create_task(hold_idle(ws, load)) for ws in idle]
        workers = [active(http, f"{relay}/active", load, rng) for _ in range(args.active)]
        workers += [realtime(http, base, clips, load, rng) for _ in range(args.realtime)]
        tasks = [asyncio.create_task(w) for w in workers]
        try:
            await canary.begin(f"{relay}/canary")
            samples = await sample_run(server, args, load)
            canary_result = await canary.finish()
        finally:
            load.stop.set()
            stop_wall = time.time()
            for res in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(res, BaseException):
                    load.error(f"load task failed: {res!r}")
            await asyncio.gather(*(ws.close() for ws in idle))
            await asyncio.gather(*holders)
    await asyncio.sleep(SETTLE)
    after = take_sample(server, time.monotonic())
    records = await wait_records(db, load)
    return Outcome(samples, after, load, canary_result, records, stop_wall)


async def sample_run(server: psutil.Process, args: argparse.Namespace, load: Load) -> list[Sample]:
    """Sample the server every ``--sample-seconds`` for the run; a line every 30 s."""
    t0 = time.monotonic()
    total = args.minutes * 60
    samples: list[Sample] = []
    next_line = 30.0
    while True:
        s = take_sample(server, t0)
        samples.append(s)
        if s.t >= next_line or s.t >= total:
            next_line += 30.0
            opened = " ".join(f"{k} {load.opened[k]}" for k in KINDS)
            print(
                f"{s.t:6.0f} s  RSS {s.rss / MiB:7.1f} MiB  fds {s.fds:5d}  sessions opened: "
                f"{opened}  turns {load.events['input_audio_buffer.speech_started']}  "
                f"errors {sum(load.errors.values())}",
                flush=True,
            )
        if s.t >= total:
            return samples
        await asyncio.sleep(min(args.sample_seconds, total - s.t))


def tracebacks(text: str) -> tuple[int, Counter[str]]:
    """How many "Traceback" lines a log holds, and each one's log line and exception."""
    lines = text.splitlines()
    seen: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            before = lines[i - 1].strip() if i else ""
            exc = next((x for x in lines[i + 1 :] if x and not x[0].isspace()), "?")
            seen[f"{before[:140]}\n      → {exc[:160]}"] += 1
    return sum(seen.values()), seen


def print_load(load: Load) -> None:
    ev = load.events
    rtts = sorted(load.rtts) or [float("nan")]
    print(
        f"active relay: {len(load.rtts)} round trips, p50 {pct(rtts, 0.5) * 1e3:.1f} ms, "
        f"p99 {pct(rtts, 0.99) * 1e3:.1f} ms"
    )
    statuses = sorted(k.split()[1] for k in ev if k.startswith("response.done "))
    print(
        f"realtime: {ev['input_audio_buffer.speech_started']} turns started, "
        f"{ev['conversation.item.input_audio_transcription.completed']} transcribed, "
        f"{ev['response.output_audio.delta']} audio deltas, responses: "
        + ", ".join(f"{s} {ev[f'response.done {s}']}" for s in statuses)
        + f"; barge-ins {ev['barge-in']} ({ev['conversation.item.truncated']} truncated)"
    )
    print(f"load errors: {sum(load.errors.values())}")
    for what, n in load.errors.most_common(8):
        print(f"  {n:5d} × {what}")


def print_records(out: Outcome) -> tuple[int, int]:
    """Sessions vs records per kind; returns the totals."""
    recs: Counter[str] = Counter()
    during: Counter[str] = Counter()
    for _, k, ended_at in out.records:
        recs[k] += 1
        during[k] += ended_at < out.stop_wall
    load = out.load
    print("records vs sessions:")
    for k in KINDS:
        print(
            f"  {k:<9} sessions {load.opened[k]:5d} ({load.ended_early[k]} closed during the"
            f" run)  records {recs[k]:5d} ({during[k]} ended during the run)"
        )
    ids = {sid for sid, k, _ in out.records if k == "realtime"}
    missing = [sid for sid in load.realtime_ids if sid not in ids]
    if missing:
        print(f"  realtime sessions without a record: {', '.join(missing[:8])}")
    counted = sum(recs[k] for k in KINDS)
    print(f"  (not counted: {len(out.records) - counted} other records, the canary's)")
    return sum(load.opened[k] for k in KINDS), counted


def row(name: str, value: str, target: str = "", met: bool | None = None) -> None:
    verdict = "" if met is None else ("met" if met else "NOT MET")
    print(f"{name:<28} {value:<44} {target:<14} {verdict}".rstrip())


def report(args: argparse.Namespace, out: Outcome, log: Path) -> None:
    warm = warmup_seconds(args.minutes * 60)
    post = [s for s in out.samples if s.t >= warm] or out.samples[-1:]
    ts = [s.t for s in post]
    rss_slope = slope_per_minute(ts, [s.rss / 1024 for s in post])
    fd_slope = slope_per_minute(ts, [float(s.fds) for s in post])
    at_warm, after, c = post[0], out.after_close, out.canary
    grew = (after.rss - at_warm.rss) / MiB
    print("## load")
    print_load(out.load)
    sessions, records = print_records(out)
    text = log.read_text(errors="replace") if log.exists() else ""
    n_tb, seen = tracebacks(text)
    print(f"## figures ({len(post)} samples after a {warm:.0f} s warm-up; target, met)")
    slope = f"{rss_slope:+.1f} KiB/min"
    row("RSS slope after warm-up", slope, "≤ 256 KiB/min", rss_slope <= TARGET_RSS_SLOPE_KIB)
    row("fd slope after warm-up", f"{fd_slope:+.2f} per min")
    row("RSS at end of warm-up", f"{at_warm.rss / MiB:.1f} MiB at {at_warm.t:.0f} s")
    closed = f"{after.rss / MiB:.1f} MiB ({grew:+.1f} MiB)"
    row("RSS after clients closed", closed, "≤ +64 MiB", grew <= TARGET_CLOSE_MIB)
    row("fds after clients closed", f"{after.fds} (end of warm-up {at_warm.fds})")
    row("records vs sessions", f"{records} / {sessions}", "equal", records == sessions)
    canary = f"{c.p50:.1f} / {c.p99:.1f} ms, {len(c.errors)} errors (n={len(c.rtts_ms)})"
    row("canary p50 / p99", canary, "p99 ≤ 50 ms", c.p99 <= CANARY_P99_MS)
    row("tracebacks (server stderr)", str(n_tb), "0", n_tb == 0)
    a, b = out.samples[0], out.samples[-1]
    server, bench = ((b.cpu - a.cpu) / b.t, (b.own_cpu - a.own_cpu) / b.t) if b.t else (0, 0)
    load_avg = os.getloadavg()[0]
    row("CPU, share of one core", f"server {server:.0%}, bench {bench:.0%}; load {load_avg:.1f}")
    for line in c.errors[:5]:
        print(f"  canary error: {line}")
    for what, n in seen.most_common(6):
        print(f"  {n:4d} × {what}")
    print(f"server log: {log} ({text.count(' WARNING ')} warnings, {text.count(' ERROR ')} errors)")


async def run(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-soak-"))
    cfg, db, log = tmp / "voxgate.toml", tmp / "usage.db", tmp / "server.log"
    print(
        f"# voxgate bench soak — {os.cpu_count()} cores, python {sys.version.split()[0]}, "
        f"{args.minutes:g} min (warm-up {warmup_seconds(args.minutes * 60):.0f} s); "
        f"{args.idle} idle + {args.active} active relay, {args.realtime} realtime; in {tmp}",
        flush=True,
    )
    echo = Proc("echo upstream", _mode_argv("--echo-server"))
    try:
        async with await Canary.start() as canary:
            cfg.write_text(soak_config(echo.port, db, canary))
            gateway = voxgate_proc(cfg, stderr=log)
            try:
                out = await run_load(args, gateway, canary, db)
            finally:
                gateway.stop()
    finally:
        echo.stop()
    report(args, out, log)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="voxgate bench soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=15.0, help="length of the load")
    p.add_argument("--idle", type=int, default=1000, help="idle relay sessions")
    p.add_argument("--active", type=int, default=50, help="active relay sessions")
    p.add_argument("--realtime", type=int, default=4, help="realtime voice sessions")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="RSS/fd sampling period")
    p.add_argument("--seed", type=int, default=1, help="seed of the churn and the utterances")
    args = p.parse_args(argv)
    run_main(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
