"""``voxgate bench speech``: the unified speech protocol on the local engines.

Starts an echo upstream and voxgate (engines preloaded) as separate processes and
measures from this process, in one run:

1. TTS (piper): time from ``flush`` to the first ``audio_chunk`` for 12-word sentences,
   and the real-time factor (synthesis time / audio duration), one session;
2. the same first-audio figure with 4 concurrent sessions, while the relay benchmark's
   1 KiB round trip runs through the same server — its p99 is compared with the idle
   p99 measured just before (the baseline of this run);
3. STT per engine (pocketsphinx, whisper): the Harvard sentences, synthesized by piper,
   streamed in real time; time from ``finalize`` to ``final_transcript`` and word error
   rate against the text;
4. the same through Deepgram's protocol on the default engines (``voxgate.bench.deepgram``):
   ``/v1/speak`` ``Flush`` → first audio, ``/v1/listen`` ``Finalize`` → its final result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from voxgate.bench.deepgram import listen_final, speak_first_audio
from voxgate.bench.relay import Proc, _config, _mode_argv, latency, pct, voxgate_proc
from voxgate.bench.sentences import HARVARD, TWELVE_WORDS
from voxgate.speech_client import speak, transcribe


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
            prev, row[j] = row[j], cur
    return row[-1], len(ref)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.0f} ms"


async def tts_single(http: aiohttp.ClientSession, base: str) -> tuple[list[float], float]:
    firsts, synth, audio = [], 0.0, 0.0
    for text in TWELVE_WORDS:
        t0 = time.perf_counter()
        spoken = await speak(http, base, text, sample_rate=24000)
        total = time.perf_counter() - t0
        firsts.append(spoken.first_audio_seconds)
        synth += total
        audio += len(spoken.pcm) / (2 * spoken.sample_rate)
    return firsts, synth / audio


async def tts_concurrent(http: aiohttp.ClientSession, base: str, sessions: int) -> list[float]:
    async def one(offset: int) -> list[float]:
        out = []
        for i in range(len(TWELVE_WORDS)):
            text = TWELVE_WORDS[(i + offset) % len(TWELVE_WORDS)]
            out.append((await speak(http, base, text)).first_audio_seconds)
        return out

    results = await asyncio.gather(*(one(k * 3) for k in range(sessions)))
    return [x for r in results for x in r]


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-speech-"))
    echo = Proc("echo upstream", _mode_argv("--echo-server"))
    cfg = tmp / "voxgate.toml"
    cfg.write_text(
        _config(echo.port, tmp / "usage.db")
        + '\n[speech]\npreload = ["piper", "pocketsphinx", "whisper"]\n'
    )
    gateway = voxgate_proc(cfg)
    base = f"ws://127.0.0.1:{gateway.port}"
    relay_url = {"voxgate": f"{base}/v1/local/default/echo"}
    try:
        print(f"# voxgate bench speech — {os.cpu_count()} cores, python {sys.version.split()[0]}")
        async with aiohttp.ClientSession() as http:
            await speak(http, base, "Warming up the voice.")  # first call allocates buffers
            print("## TTS piper: flush → first audio_chunk, 12-word sentences")
            firsts, rtf = await tts_single(http, base)
            print(
                f"1 session   p50 {ms(statistics.median(firsts))}  p95 {ms(pct(firsts, 0.95))}"
                f"  real-time factor {rtf:.3f}  (n={len(firsts)})"
            )
            idle = await latency(relay_url, 1024, args.rounds, 100)
            idle_p50, idle_p99 = pct(idle["voxgate"], 0.5), pct(idle["voxgate"], 0.99)
            conc_task = asyncio.create_task(tts_concurrent(http, base, 4))
            loaded: list[float] = []
            while not conc_task.done():
                res = await latency(relay_url, 1024, 500, 100)
                loaded.extend(res["voxgate"])
            conc = await conc_task
            print(
                f"4 sessions  p50 {ms(statistics.median(conc))}  p95 {ms(pct(conc, 0.95))}"
                f"  (n={len(conc)})"
            )
            print(
                f"relay 1 KiB round trip via voxgate: idle p50 {idle_p50 * 1e6:.0f} µs "
                f"p99 {idle_p99 * 1e6:.0f} µs; during 4 TTS sessions p50 "
                f"{pct(loaded, 0.5) * 1e6:.0f} µs p99 {pct(loaded, 0.99) * 1e6:.0f} µs "
                f"({pct(loaded, 0.99) / idle_p99:.2f}× idle p99, n={len(loaded)})"
            )

            print(f"## STT: {len(HARVARD)} Harvard sentences (piper voice), streamed in real time")
            clips = []
            for text in HARVARD:
                spoken = await speak(http, base, text, sample_rate=16000)
                clips.append((text, b"\0" * 9600 + spoken.pcm + b"\0" * 3200))
            for engine in args.engines:
                errors = ref_words = 0
                final_times = []
                for text, pcm in clips:
                    heard = await transcribe(http, base, pcm, 16000, engine=engine, realtime=True)
                    e, n = word_errors(text, heard.text)
                    errors, ref_words = errors + e, ref_words + n
                    final_times.append(heard.finalize_seconds)
                    if args.verbose:
                        print(f"  {engine}: {heard.text!r}  ({e}/{n})")
                print(
                    f"{engine:<12} finalize → final p50 {ms(statistics.median(final_times))}"
                    f"  p95 {ms(pct(final_times, 0.95))}  WER {100 * errors / ref_words:5.1f} %"
                    f"  ({errors}/{ref_words} words)"
                )

            print("## Deepgram protocol on the default engines (aura-2 → piper, nova-3 → STT)")
            dg_firsts = [(await speak_first_audio(http, base, t))[0] for t in TWELVE_WORDS]
            print(
                f"speak  Flush → first audio  p50 {ms(statistics.median(dg_firsts))}"
                f"  p95 {ms(pct(dg_firsts, 0.95))}  (n={len(dg_firsts)})"
            )
            errors = ref_words = 0
            dg_finals = []
            for text, pcm in clips:
                dg_heard = await listen_final(http, base, pcm)
                e, n = word_errors(text, dg_heard.text)
                errors, ref_words = errors + e, ref_words + n
                dg_finals.append(dg_heard.finalize_seconds)
            print(
                f"listen Finalize → final     p50 {ms(statistics.median(dg_finals))}"
                f"  p95 {ms(pct(dg_finals, 0.95))}  WER {100 * errors / ref_words:5.1f} %"
            )
    finally:
        gateway.stop()
        echo.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench speech", description=__doc__)
    p.add_argument("--rounds", type=int, default=3000, help="idle relay round trips")
    p.add_argument("--engines", nargs="+", default=["pocketsphinx", "whisper"])
    p.add_argument("-v", "--verbose", action="store_true", help="print every transcript")
    args = p.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
