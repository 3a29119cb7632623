"""``voxgate bench page``: turn latency as the browser page measures it, in every talk mode.

Starts voxgate as its own process and the system Chromium (Playwright, headless) with a
fake microphone that loops a spoken question (``tests/data/arctic_a0007.wav``, 4 s)
followed by silence. The page's Talk view runs in the WebSocket mode, the media-server
mode (an agent in an SFU call) and the OpenAI WebRTC mode (``POST /v1/realtime/calls``);
each turn's figure is the one the page shows: from the end of the person's speech (the
last microphone level above −40 dBFS before ``speech_stopped``) to the first answer
audio heard. It includes the server's 500 ms silence window. The modes run one after the
other in the same run, against the same server and agent (``voxgate/echo``, piper,
pocketsphinx), so a WebRTC path's cost is the difference. ``--baseline TREE`` runs the
WebSocket and media-server modes against a second server from another checkout too.

Needs the test extra (Playwright) and Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from voxgate.audio import read_wav, write_wav
from voxgate.bench.relay import Proc, _config, add_baseline_option, baseline_proc, pct, voxgate_proc

QUESTION = Path(__file__).resolve().parents[3] / "tests" / "data" / "arctic_a0007.wav"


def question_wav(path: Path, *, silence_s: float, interrupt_after: float | None = None) -> Path:
    """Write the spoken question, half a second of silence before it and ``silence_s``
    after it (Chromium loops a fake microphone's file). With ``interrupt_after``, the
    question is asked again that many seconds after it ended: over the answer."""
    wav = read_wav(QUESTION)
    rate, speech = wav.sample_rate, wav.pcm

    def silence(seconds: float) -> bytes:
        return bytes(2 * int(rate * seconds))

    pcm = silence(0.5) + speech
    if interrupt_after is not None:
        pcm += silence(interrupt_after) + speech
    write_wav(path, pcm + silence(silence_s), rate)
    return path


async def measure(base: str, chromium: str, wav: Path, mode: str, turns: int) -> list[float]:
    from playwright.async_api import async_playwright

    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=args)
        try:
            context = await browser.new_context()
            await context.grant_permissions(["microphone"], origin=base)
            page = await context.new_page()
            await page.goto(base + "/")
            await page.wait_for_selector(
                "#talk-voice option[value='en_US-joe-medium']", state="attached"
            )
            await page.check(f"input[name=mode][value={mode}]")
            await page.click("#talk-start")
            values: list[float] = []
            async with asyncio.timeout(30 + turns * 20):
                while len(values) < turns:
                    await asyncio.sleep(0.5)
                    values = await page.evaluate(
                        "() => [...document.querySelectorAll('#transcript .latency')]"
                        ".map(e => Number(e.dataset.ms))"
                    )
                    error = await page.evaluate(
                        "() => { const e = document.querySelector('#talk-error');"
                        " return e.hidden ? null : e.textContent; }"
                    )
                    if error:
                        raise RuntimeError(f"{mode}: the page says {error.strip()!r}")
            await page.click("#talk-stop")
            return values[:turns]
        finally:
            await browser.close()


def line(label: str, values: list[float]) -> str:
    return (
        f"{label:<16} end of speech → first audio heard: p50 {statistics.median(values):.0f} ms"
        f"  p95 {pct(values, 0.95):.0f} ms  min {min(values):.0f}  max {max(values):.0f}"
        f"  (n={len(values)})"
    )


MODES = (("ws", "WebSocket"), ("rtc", "WebRTC SFU"), ("openai-rtc", "WebRTC call"))


async def run(args: argparse.Namespace) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("voxgate bench page: no system Chromium (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-page-"))
    cfg = tmp / "voxgate.toml"
    preload = '\n[speech]\npreload = ["piper", "pocketsphinx"]\n'
    cfg.write_text(_config(9, tmp / "usage.db") + preload)
    wav = question_wav(tmp / "question.wav", silence_s=args.silence)
    servers: list[tuple[str, Proc, tuple[tuple[str, str], ...]]] = [("", voxgate_proc(cfg), MODES)]
    if args.baseline is not None:  # the same turns against another source tree's server
        other = tmp / "baseline.toml"
        other.write_text(_config(9, tmp / "baseline.db") + preload)
        proc = baseline_proc(args.baseline, other)
        servers.append(("base ", proc, MODES[:2]))  # the modes every version's page has
    try:
        print(f"# voxgate bench page — {os.cpu_count()} cores, headless {chromium}")
        print(f"## {args.turns} turns per mode: a 4 s question, then {args.silence:g} s of silence")
        for tag, server, modes in servers:
            base = f"http://127.0.0.1:{server.port}"
            for mode, label in modes:
                turns = await measure(base, chromium, wav, mode, args.turns)
                print(line(tag + label, turns), flush=True)
    finally:
        for _tag, server, _modes in servers:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench page", description=__doc__)
    p.add_argument("--turns", type=int, default=5, help="turns measured per mode")
    p.add_argument("--silence", type=float, default=7.0, help="seconds after each question")
    add_baseline_option(p, "the WebSocket and media-server modes")
    args = p.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
