"""``voxgate bench speech``: the unified speech protocol on the local engines.

Starts an echo upstream and voxgate (engines preloaded) as separate processes and
measures from this process, in one run:

1. TTS (piper): time from ``flush`` to the first ``audio_chunk`` for 12-word sentences,
   and the real-time factor (synthesis time / audio duration), one session;
2. the same first-audio figure with 4 concurrent sessions, while the relay benchmark's
   1 KiB round trip runs through the same server — its p99 is compared with the idle
   p99 measured just before (the baseline of this run);
3. STT per engine: the Harvard sentences, synthesized by piper, streamed in real time;
   time from ``finalize`` to ``final_transcript``, word error rate of the finals against
   the text, word error rate of the partials (the last partial before each final, against
   the same text) and the server's CPU seconds per second of audio. The same for longer
   clips (four sentences in one utterance, ~12–16 s) and for the sentences with white
   noise at 10 dB SNR. The engines include whisper variants on the same clips
   (:data:`WHISPER_VARIANTS`): the 30 s window with pocketsphinx partials as before, the
   short window, and tiny.en partials; and, in this process, what one tiny.en partial
   decode costs for 1–10 s of audio;
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
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from voxgate.audio import AudioFormat, chunks
from voxgate.bench.deepgram import listen_final, speak_first_audio
from voxgate.bench.relay import Proc, _config, _mode_argv, latency, pct, voxgate_proc
from voxgate.bench.sentences import HARVARD, TWELVE_WORDS, edit_distance
from voxgate.engines.whisper import DEFAULT_PARTIALS
from voxgate.speech_client import speak

#: whisper engines compared on the same clips, as ``[speech.engines.NAME]`` entries:
#: the 30 s window as before this change, the short window, and tiny.en partials.
WHISPER_VARIANTS: dict[str, dict[str, str]] = {
    "whisper-full": {"window": "full", "partials": "pocketsphinx"},
    "whisper-short": {"window": "short", "partials": "pocketsphinx"},
    "whisper-tiny": {"window": "short", "partials": "whisper-tiny"},
}
STT_ENGINES = ["pocketsphinx", *WHISPER_VARIANTS]
CLIP_SETS = ("harvard", "long", "noisy")
#: Silence around each clip: a client's pause before speaking, and finalize soon after.
LEAD, TRAIL = b"\0" * 9600, b"\0" * 3200


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words)."""
    ref = words(reference)
    return edit_distance(ref, words(hypothesis)), len(ref)


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


@dataclass
class Listened:
    """One clip through ``/v1/stt/{engine}``: its finals, the last partial before each,
    and the wait from ``finalize`` to ``final_transcript``."""

    finals: list[str]
    last_partials: list[str]
    finalize_seconds: float


async def listen(http: aiohttp.ClientSession, base: str, pcm: bytes, engine: str) -> Listened:
    """Stream ``pcm`` (16 kHz) in real time, as a microphone would, then ``finalize``."""
    fmt = AudioFormat(sample_rate=16000)
    finals: list[str] = []
    last_partials: list[str] = []
    async with http.ws_connect(f"{base}/v1/stt/{engine}") as ws:
        await ws.send_json({"type": "start", "sample_rate": 16000})
        if (ready := await ws.receive_json())["type"] != "ready":
            raise RuntimeError(f"{engine}: {ready}")

        async def read() -> float:
            partial = ""
            async for message in ws:
                event = orjson.loads(message.data)
                if event["type"] == "error":
                    raise RuntimeError(f"{engine}: {event.get('code')}: {event.get('message')}")
                if event["type"] == "transcript" and not event["is_final"]:
                    partial = event["text"]
                elif event["type"] == "transcript":
                    finals.append(event["text"])
                    last_partials.append(partial)
                    partial = ""
                elif event["type"] == "final_transcript":
                    return time.perf_counter()
            raise RuntimeError(f"{engine}: the session closed before final_transcript")

        reader = asyncio.create_task(read())
        try:
            t0 = time.perf_counter()
            sent = 0
            for piece in chunks(pcm, fmt, 100):
                await ws.send_bytes(piece)
                sent += len(piece)
                delay = t0 + fmt.duration_ms(sent) / 1000 - time.perf_counter()
                await asyncio.sleep(max(0.0, delay))
            started = time.perf_counter()
            await ws.send_json({"type": "finalize"})
            async with asyncio.timeout(120):
                answered = await reader
        finally:
            reader.cancel()
    return Listened(finals, last_partials, answered - started)


def with_noise(pcm: bytes, speech: bytes, snr_db: float, seed: int) -> bytes:
    """``pcm`` with white noise ``snr_db`` below the power of ``speech`` (its speech part)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    power = float(np.mean(np.frombuffer(speech, dtype="<i2").astype(np.float64) ** 2))
    noise = np.random.default_rng(seed).normal(
        0.0, (power / 10 ** (snr_db / 10)) ** 0.5, len(samples)
    )
    return np.clip(samples + noise, -32768, 32767).astype("<i2").tobytes()


def make_clips(
    speech: Sequence[tuple[str, bytes]], sets: Sequence[str]
) -> dict[str, list[tuple[str, bytes]]]:
    """The STT clip sets from ``speech`` (text, 16 kHz PCM16): (reference text, audio
    with silence around it)."""
    clips: dict[str, list[tuple[str, bytes]]] = {}
    if "harvard" in sets:
        clips["harvard"] = [(text, LEAD + pcm + TRAIL) for text, pcm in speech]
    if "long" in sets:
        # four sentences 0.2 s apart: one utterance for the VAD (it ends after 0.5 s)
        gap = b"\0" * 6400
        groups = [speech[i : i + 4] for i in range(0, len(speech), 4)]
        clips["long"] = [
            (" ".join(t for t, _ in g), LEAD + gap.join(pcm for _, pcm in g) + TRAIL)
            for g in groups
        ]
    if "noisy" in sets:
        clips["noisy"] = [
            (text, with_noise(LEAD + pcm + TRAIL, pcm, 10.0, seed=i))
            for i, (text, pcm) in enumerate(speech[::2])
        ]
    return clips


def cpu_seconds(proc: Proc) -> float:
    """CPU time of the server and its worker processes (pocketsphinx) so far."""
    import psutil

    root = psutil.Process(proc.p.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


async def stt_figures(
    http: aiohttp.ClientSession,
    base: str,
    gateway: Proc,
    speech: Sequence[tuple[str, bytes]],
    args: argparse.Namespace,
) -> None:
    clip_sets = make_clips(speech, args.sets)
    labels = {
        "harvard": f"{len(HARVARD)} Harvard sentences (piper voice)",
        "long": "4-sentence utterances",
        "noisy": "Harvard sentences + white noise at 10 dB SNR",
    }
    for name, all_clips in clip_sets.items():
        clips = all_clips[: args.limit]
        seconds = [len(pcm) / 32000 for _, pcm in clips]
        print(
            f"## STT: {len(clips)} × {labels[name]}, {statistics.median(seconds):.1f} s median,"
            " streamed in real time"
        )
        for engine in args.engines:
            cpu0 = cpu_seconds(gateway)
            errors = partial_errors = ref_words = 0
            final_times = []
            for text, pcm in clips:
                heard = await listen(http, base, pcm, engine)
                e, n = word_errors(text, " ".join(heard.finals))
                pe, _ = word_errors(text, " ".join(heard.last_partials))
                errors, partial_errors, ref_words = errors + e, partial_errors + pe, ref_words + n
                final_times.append(heard.finalize_seconds)
                if args.verbose:
                    print(f"  {engine}: {' | '.join(heard.finals)!r}  ({e}/{n})")
                    print(f"  {'':{len(engine)}}  partials {' | '.join(heard.last_partials)!r}")
            cpu = (cpu_seconds(gateway) - cpu0) / sum(seconds)
            print(
                f"{engine:<13} finalize → final p50 {ms(statistics.median(final_times))}"
                f"  p95 {ms(pct(final_times, 0.95))}  WER {100 * errors / ref_words:5.1f} %"
                f"  partials WER {100 * partial_errors / ref_words:5.1f} %"
                f"  CPU {cpu:.2f} s/s  ({errors}/{ref_words} words)"
            )


def partial_decode_cost(speech: Sequence[tuple[str, bytes]]) -> None:
    """What one tiny.en partial decode of the first 1–10 s of an utterance costs, in this
    process while the server is idle."""
    from voxgate.engines.base import EngineUnavailable
    from voxgate.engines.whisper import load_window, tiny_model_path
    from voxgate.engines.whisper_window import SAMPLE_RATE

    try:
        model = load_window(tiny_model_path())
    except EngineUnavailable as exc:
        print(f"(no tiny.en: {exc})")
        return
    pcm = (b"\0" * 6400).join(pcm for _, pcm in speech[:4])
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    print("## whisper tiny.en partial decode of an utterance's first seconds (1 thread)")
    for seconds in (1, 3, 5, 7, 10):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            model.decode(samples[: seconds * SAMPLE_RATE], language="en", beam_size=1)
            times.append(time.perf_counter() - t0)
        print(f"{seconds:>2} s of audio  median {ms(statistics.median(times))}")


async def tts_figures(http: aiohttp.ClientSession, base: str, args: argparse.Namespace) -> None:
    relay_url = {"voxgate": f"{base}/v1/local/default/echo"}
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
        f"4 sessions  p50 {ms(statistics.median(conc))}  p95 {ms(pct(conc, 0.95))}  (n={len(conc)})"
    )
    print(
        f"relay 1 KiB round trip via voxgate: idle p50 {idle_p50 * 1e6:.0f} µs "
        f"p99 {idle_p99 * 1e6:.0f} µs; during 4 TTS sessions p50 "
        f"{pct(loaded, 0.5) * 1e6:.0f} µs p99 {pct(loaded, 0.99) * 1e6:.0f} µs "
        f"({pct(loaded, 0.99) / idle_p99:.2f}× idle p99, n={len(loaded)})"
    )


async def deepgram_figures(
    http: aiohttp.ClientSession, base: str, speech: Sequence[tuple[str, bytes]]
) -> None:
    print("## Deepgram protocol on the default engines (aura-2 → piper, nova-3 → STT)")
    dg_firsts = [(await speak_first_audio(http, base, t))[0] for t in TWELVE_WORDS]
    print(
        f"speak  Flush → first audio  p50 {ms(statistics.median(dg_firsts))}"
        f"  p95 {ms(pct(dg_firsts, 0.95))}  (n={len(dg_firsts)})"
    )
    errors = ref_words = 0
    dg_finals = []
    for text, pcm in speech:
        dg_heard = await listen_final(http, base, LEAD + pcm + TRAIL)
        e, n = word_errors(text, dg_heard.text)
        errors, ref_words = errors + e, ref_words + n
        dg_finals.append(dg_heard.finalize_seconds)
    print(
        f"listen Finalize → final     p50 {ms(statistics.median(dg_finals))}"
        f"  p95 {ms(pct(dg_finals, 0.95))}  WER {100 * errors / ref_words:5.1f} %"
    )


def bench_config(engines: Sequence[str]) -> str:
    """``[speech]`` preloading piper and ``engines``, with the whisper variants defined."""
    preload = ", ".join(f'"{e}"' for e in ["piper", *engines])
    out = f"\n[speech]\npreload = [{preload}]\n"
    for name, options in WHISPER_VARIANTS.items():
        out += f'\n[speech.engines.{name}]\ntype = "whisper"\n'
        out += "".join(f'{k} = "{v}"\n' for k, v in options.items())
    return out


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-speech-"))
    cfg = tmp / "voxgate.toml"
    started: list[Proc] = []  # stopped at the end, also when the gateway does not start
    try:
        started.append(echo := Proc("echo upstream", _mode_argv("--echo-server")))
        cfg.write_text(_config(echo.port, tmp / "usage.db") + bench_config(args.engines))
        started.append(gateway := voxgate_proc(cfg))
        base = f"ws://127.0.0.1:{gateway.port}"
        print(f"# voxgate bench speech — {os.cpu_count()} cores, python {sys.version.split()[0]}")
        async with aiohttp.ClientSession() as http:
            await speak(http, base, "Warming up the voice.")  # first call allocates buffers
            if "tts" in args.sections:
                await tts_figures(http, base, args)
            # the Harvard sentences, once: every engine hears the same audio
            speech = []
            for text in HARVARD:
                speech.append((text, (await speak(http, base, text, sample_rate=16000)).pcm))
            if "stt" in args.sections:
                await stt_figures(http, base, gateway, speech, args)
                tiny = {n for n, o in WHISPER_VARIANTS.items() if o["partials"] == "whisper-tiny"}
                if DEFAULT_PARTIALS == "whisper-tiny":
                    tiny.add("whisper")
                if tiny & set(args.engines):
                    partial_decode_cost(speech)
            if "deepgram" in args.sections:
                await deepgram_figures(http, base, speech)
    finally:
        for p in reversed(started):
            p.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench speech", description=__doc__)
    p.add_argument("--rounds", type=int, default=3000, help="idle relay round trips")
    p.add_argument(
        "--engines",
        nargs="+",
        choices=[*STT_ENGINES, "whisper"],
        default=STT_ENGINES,
        help=f"STT engines (default: {' '.join(STT_ENGINES)}; also whisper, its defaults)",
    )
    p.add_argument(
        "--sets", nargs="+", choices=CLIP_SETS, default=list(CLIP_SETS), help="STT clip sets"
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many clips per set")
    p.add_argument(
        "--sections",
        nargs="+",
        choices=("tts", "stt", "deepgram"),
        default=["tts", "stt", "deepgram"],
        help="what to measure",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every transcript")
    args = p.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
