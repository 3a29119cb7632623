"""``voxgate bench agent``: the voice agent's answers — right or wrong, and how soon.

Starts voxgate as its own process (the same generated config as ``bench realtime``) and
holds realtime sessions over ``/v1/realtime?model=MODEL`` that stream speech in real time
(20 ms chunks, paced, then silence; server VAD). The session's ``instructions`` ask for a
short spoken answer and its ``tools`` (``tool_choice`` ``auto``) are those of
:mod:`voxgate.bench.agent_questions`, whose evaluation set is spoken by piper (24 kHz):

- 20 questions, judged right when the spoken answer's transcript holds one of the
  question's keywords (:func:`~voxgate.bench.agent_questions.says`);
- 8 requests for a tool, judged right when the first function call is the one expected,
  with the argument values expected. The client answers every call with a
  ``function_call_output`` item and ``response.create``, as a Realtime client must for
  the model to go on (at most :data:`TOOL_ROUNDS` rounds a turn).

Latency, per turn, as ``bench realtime`` measures it: from the end of the speech in the
input stream to the first ``response.output_audio.delta``, split into the *silence
window* (the audio the turn detector waited after the speech) and the *processing* (from
the moment the client sent the audio at ``speech_stopped.audio_end_ms``). Stages of the
processing, from the same moment: ``response.created`` and the input transcript
(``conversation.item.input_audio_transcription.completed``); for a tool request, the
function call (``response.function_call_arguments.done``), and from sending the call's
result (``response.create``) to the first audio of the answer to it.

One session over the questions and the tool requests (after one untimed warm-up turn),
then N concurrent sessions (4 by default) that each ask the questions, each starting at
a different one. A session asks its next question once the answer's audio would have
played to its end, as a person who listens to the answer does (``--no-listen``: as soon
as the answer is generated, talking over it; the sessions then load the server more).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pybase64

from voxgate.audio import resample
from voxgate.bench.agent_questions import (
    INSTRUCTIONS,
    QUESTIONS,
    TOOL_PROMPTS,
    TOOL_RESULTS,
    TOOLS,
    WARM_UP,
    Question,
    ToolPrompt,
    call_matches,
    says,
    word_errors,
)
from voxgate.bench.realtime import (
    CHUNK,
    RATE,
    TURN_DETECTION,
    Session,
    ms,
    open_session,
    speech_bounds_ms,
    until,
)
from voxgate.bench.relay import _config, pct, voxgate_proc
from voxgate.config import load_settings
from voxgate.settings import SpeechSettings
from voxgate.speech_client import speak

#: Rounds of function calls the client answers in one turn.
TOOL_ROUNDS = 3
#: The embedded model, whose speed on this CPU the bench measures first.
LOCAL = "voxgate/local"
#: The issue's acceptance targets.
TARGET_RIGHT = 0.80
TARGET_TOOLS = 6 / 8
TARGET_P50 = 0.700
TARGET_P95 = 1.200
TARGET_P95_LOADED = 2.000


@dataclass
class Turn:
    """One spoken prompt and what came of it; times in seconds from the moment the client
    sent the audio at ``speech_stopped.audio_end_ms``."""

    said: str
    heard: str = ""
    answer: str = ""
    #: (name, arguments) of each function call, in order.
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    window: float | None = None
    processing: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    #: From sending the results of the first calls (``response.create``) to the first
    #: audio of the answer to them.
    after_results: float | None = None
    items: list[str] = field(default_factory=list)
    error: str = ""
    right: bool = False


@dataclass
class _Marks:
    """Wall times seen in a turn's events."""

    stopped: tuple[float, float] | None = None  # (wall time, audio_end_ms)
    at: dict[str, float] = field(default_factory=dict)
    #: When the answer's audio would have finished playing: each delta plays from when
    #: it arrived or the one before it ended, whichever is later (wall time).
    played: float = 0.0
    #: When the results of the first calls were sent, and the first audio after them.
    results: float | None = None
    results_audio: float | None = None


async def _response(s: Session, t: Turn, marks: _Marks) -> list[dict[str, Any]]:
    """The turn's events until a response ends that no barge-in cut (a question the
    VAD split in two is answered once, after its second part); its function calls."""
    rate = float(s.config.get("audio", {}).get("output", {}).get("format", {}).get("rate", RATE))
    while True:
        at, ev = await s.events.get()
        kind = ev["type"]
        if kind == "input_audio_buffer.speech_stopped":
            marks.stopped = (at, float(ev["audio_end_ms"]))
        elif kind == "conversation.item.input_audio_transcription.completed":
            t.heard = f"{t.heard} {ev['transcript']}".strip()
            marks.at.setdefault("transcript", at)
        elif kind == "conversation.item.added":
            t.items.append(ev["item"]["id"])
        elif kind in ("response.created", "response.function_call_arguments.done"):
            marks.at.setdefault(kind, at)
        elif kind == "response.output_audio.delta":
            marks.at.setdefault("audio", at)
            if marks.results is not None and marks.results_audio is None:
                marks.results_audio = at
            seconds = len(pybase64.b64decode(ev["delta"])) / 2 / rate
            marks.played = max(marks.played, at) + seconds
        elif kind == "error":
            t.error = str(ev["error"].get("message", ev["error"]))
        elif kind == "response.done":
            r = ev["response"]
            if r["status"] == "cancelled":
                for k in ("response.created", "audio", "response.function_call_arguments.done"):
                    marks.at.pop(k, None)
                marks.played = 0.0  # cut off: not heard to its end
                continue
            calls = []
            for out in r.get("output") or ():
                if out.get("type") == "function_call":
                    calls.append(out)
                for part in out.get("content") or ():
                    spoken = part.get("transcript") or part.get("text") or ""
                    t.answer = f"{t.answer} {spoken}".strip()
            if r["status"] == "failed" and not t.error:
                t.error = f"response failed: {r.get('status_details')}"
            return calls


async def _answer_calls(s: Session, t: Turn, calls: list[dict[str, Any]]) -> None:
    """Record ``calls``, give each its output and ask the model to go on."""
    for call in calls:
        try:
            arguments = orjson.loads(call.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {"(not JSON)": call.get("arguments")}
        t.calls.append((call["name"], arguments if isinstance(arguments, dict) else {}))
        output = TOOL_RESULTS.get(call["name"], '{"status": "done"}')
        item = {"type": "function_call_output", "call_id": call["call_id"], "output": output}
        await s.send("conversation.item.create", item=item)
    await s.send("response.create")


async def turn(s: Session, clip: bytes, said: str, *, within: float, listen: bool = True) -> Turn:
    """Speak ``clip`` (then silence) until the agent has answered it, and with ``listen``
    until its answer's audio would have played to the end (a user who hears the answer
    before asking again); raises TimeoutError when the answer takes longer than
    ``within`` seconds."""
    t = Turn(said)
    marks = _Marks()
    speech_end = s.position_ms + speech_bounds_ms(clip)[1]
    done = asyncio.Event()
    sender = asyncio.create_task(s.stream(clip, done))
    try:
        async with asyncio.timeout(within):
            calls = await _response(s, t, marks)
            for _ in range(TOOL_ROUNDS):
                if not calls:
                    break
                if marks.results is None:
                    marks.results = time.perf_counter()
                await _answer_calls(s, t, calls)
                calls = await _response(s, t, marks)
        if listen:  # the sender streams silence meanwhile
            await asyncio.sleep(max(0.0, marks.played - time.perf_counter()))
    finally:
        done.set()
        await sender
    if marks.stopped is not None:
        _at, audio_end = marks.stopped
        sent = s.sent_time(audio_end)
        t.window = (audio_end - speech_end) / 1000
        t.stages = {k: v - sent for k, v in marks.at.items()}
        t.processing = t.stages.get("audio")
    if marks.results is not None and marks.results_audio is not None:
        t.after_results = marks.results_audio - marks.results
    return t


async def _forget(s: Session, t: Turn) -> None:
    """Delete the turn's items, so that the next turn starts a new conversation."""
    for item_id in t.items:
        await s.send("conversation.item.delete", item_id=item_id)
    for _ in t.items:
        await until(s.events, "conversation.item.deleted", 10)


def session_update(args: argparse.Namespace) -> dict[str, Any]:
    td = {**TURN_DETECTION, "silence_duration_ms": args.silence_ms}
    return {
        "instructions": INSTRUCTIONS,
        "tools": list(TOOLS),
        "tool_choice": args.tool_choice,
        "audio": {"input": {"turn_detection": td}},
    }


async def conversation(
    http: aiohttp.ClientSession,
    base: str,
    args: argparse.Namespace,
    prompts: Sequence[tuple[str, bytes]],
    *,
    warm_up: bytes | None = None,
    config: dict[str, Any] | None = None,
) -> list[Turn]:
    """One session speaking each (text, clip) of ``prompts`` in turn; the session object
    in force into ``config``. A turn that gets no answer ends the session (its remaining
    prompts are left out)."""
    async with asyncio.timeout(60):
        s, reader = await open_session(http, base, model=args.model, session=session_update(args))
    if config is not None:
        config.update(s.config)
    out: list[Turn] = []
    try:
        await s.stream(bytes(CHUNK * 25))  # half a second of room tone first
        if warm_up is not None:
            await turn(s, warm_up, WARM_UP, within=args.turn_timeout, listen=args.listen)
        for said, clip in prompts:
            try:
                t = await turn(s, clip, said, within=args.turn_timeout, listen=args.listen)
            except TimeoutError:
                out.append(Turn(said, error=f"no answer within {args.turn_timeout:.0f} s"))
                print(f"  session ended: no answer to {said!r}", file=sys.stderr)
                break
            out.append(t)
            if args.fresh:
                await _forget(s, t)
    finally:
        await s.ws.close()
        await reader
    return out


# ------------------------------------------------------------------------------- report


def judge(turns: Sequence[Turn], asked: Sequence[Question | ToolPrompt]) -> int:
    """Mark each turn right or not; how many are right."""
    by_text = {p.text: p for p in asked}
    for t in turns:
        p = by_text[t.said]
        if isinstance(p, Question):
            t.right = says(t.answer, p.keywords)
        else:
            t.right = bool(t.calls) and call_matches(p, *t.calls[0])
    return sum(t.right for t in turns)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def show(label: str, turns: Sequence[Turn], verbose: bool) -> None:
    for i, t in enumerate(turns, 1):
        if not verbose and not t.error:
            continue
        calls = " ".join(f"{n}({orjson.dumps(a).decode()})" for n, a in t.calls)
        took = ""
        if t.window is not None and t.processing is not None:
            took = f"window {ms(t.window).strip()} processing {ms(t.processing).strip()}"
        print(
            f"  {label} {i:2}. {'right' if t.right else 'WRONG'}  said {t.said!r}"
            f" · heard {t.heard!r}{' · calls ' + calls if calls else ''} · answer"
            f" {t.answer!r}  {took}{'  error: ' + t.error if t.error else ''}"
        )


def latency(label: str, turns: Sequence[Turn], p95_target: float | None) -> list[str]:
    """Print the processing and silence window of ``turns``; the targets missed."""
    timed = [t for t in turns if t.processing is not None and t.window is not None]
    if not timed:
        print(f"{label:<11} no answer had audio")
        return [f"{label} latency"]
    proc = [t.processing for t in timed if t.processing is not None]
    windows = [t.window for t in timed if t.window is not None]
    p50, p95 = statistics.median(proc), pct(proc, 0.95)
    missed = []
    if p95_target is None:  # one session: both figures have targets
        targets = (
            f" (≤ {_ms(TARGET_P50)}: {_met(p50 <= TARGET_P50)})",
            f" (≤ {_ms(TARGET_P95)}: {_met(p95 <= TARGET_P95)})",
        )
        if p50 > TARGET_P50:
            missed.append(f"{label} p50")
    else:
        targets = ("", f" (≤ {_ms(p95_target)}: {_met(p95 <= p95_target)})")
    if p95 > (p95_target or TARGET_P95):
        missed.append(f"{label} p95")
    print(
        f"{label:<11} processing p50 {ms(p50)}{targets[0]} p95 {ms(p95)}{targets[1]}"
        f" · silence window p50 {ms(statistics.median(windows))}  (n={len(timed)})"
    )
    stages = []
    for key, name in (("response.created", "response.created"), ("transcript", "transcript")):
        values = [t.stages[key] for t in timed if key in t.stages]
        if values:
            stages.append(f"{name} p50 {ms(statistics.median(values)).strip()}")
    print(f"{'':<11}   of which: {', '.join(stages)}; first audio p50 {ms(p50).strip()}")
    return missed


def right(label: str, n: int, total: int, target: float | None) -> list[str]:
    share = n / total if total else 0.0
    goal = f" (≥ {target:.0%}: {_met(share >= target)})" if target is not None else ""
    print(f"{label:<11} answers right {n}/{total} ({share:.0%}){goal}")
    return [f"{label} answers"] if target is not None and share < target else []


def tools_row(turns: Sequence[Turn], prompts: Sequence[ToolPrompt]) -> list[str]:
    n, total = sum(t.right for t in turns), len(prompts)
    need = math.ceil(TARGET_TOOLS * total)
    when = [t.stages.get("response.function_call_arguments.done") for t in turns]
    called = [w for w in when if w is not None]
    took = f" · processing to the call p50 {ms(statistics.median(called))}" if called else ""
    answered = [t.after_results for t in turns if t.after_results is not None]
    if answered:
        took += (  # max: a slow round (a call made again after its result) the median hides
            f" · results to first audio p50 {ms(statistics.median(answered))}"
            f" max {ms(max(answered))}"
        )
    print(
        f"{'1 session':<11} tool calls right {n}/{total} (≥ {need}/{total}:"
        f" {_met(n >= need)}){took}"
    )
    return ["1 session tools"] if n < need else []


def recognition(label: str, turns: Sequence[Turn]) -> None:
    errors = [word_errors(t.heard, t.said) for t in turns]
    wrong, said = sum(e for e, _ in errors), sum(n for _, n in errors)
    exact = sum(e == 0 for e, _ in errors)
    print(
        f"{label:<11} recogniser word error rate {wrong / max(said, 1):.0%}"
        f" ({exact}/{len(turns)} prompts heard exactly)"
    )


def engines(config: dict[str, Any]) -> str:
    audio = config.get("audio", {})
    stt = (audio.get("input", {}).get("transcription") or {}).get("model", "none")
    out = audio.get("output", {})
    return f"STT {stt} · TTS {out.get('model')} (voice {out.get('voice')})"


def server_config(args: argparse.Namespace, tmp: Path) -> str:
    """``--toml`` first (top-level dotted keys must come before any table), then the
    generated config."""
    stt = args.stt or SpeechSettings().default_stt
    speech = f'\n[speech]\npreload = ["piper", "{stt}"]\n'
    if args.stt:
        speech += f'default_stt = "{stt}"\n'
    return "\n".join(args.toml) + "\n" + _config(9, tmp / "usage.db") + speech


async def measure(http: aiohttp.ClientSession, base: str, args: argparse.Namespace) -> None:
    questions, prompts = QUESTIONS[: args.questions], TOOL_PROMPTS[: args.tool_prompts]
    clips: dict[str, bytes] = {}
    for text in [WARM_UP, *(q.text for q in questions), *(p.text for p in prompts)]:
        spoken = await speak(http, base, text, sample_rate=RATE)
        clips[text] = resample(spoken.pcm, spoken.sample_rate, RATE)
    config: dict[str, Any] = {}
    asked = [(q.text, clips[q.text]) for q in questions]
    requests = [(p.text, clips[p.text]) for p in prompts]
    warm_up = clips[WARM_UP] if args.warm_up else None
    if not args.one_session:
        print(f"## model {args.model} · questions: {len(questions)} (piper, 24 kHz, real time)")
        if warm_up is not None:  # the sessions' shared start evaluated, as it is below
            await conversation(http, base, args, [], warm_up=warm_up)
        missed = await loaded(http, base, args, asked) if args.sessions > 0 else []
        print(f"targets: {'all met' if not missed else 'MISSED ' + ', '.join(missed)}")
        return
    turns = await conversation(
        http, base, args, [*asked, *requests], warm_up=warm_up, config=config
    )
    one, tools = turns[: len(asked)], turns[len(asked) :]
    print(
        f"## model {args.model} · {engines(config)} · server_vad {args.silence_ms} ms ·"
        f" questions: {len(questions)}, tool requests: {len(prompts)} (piper, 24 kHz, real time)"
    )
    missed = right("1 session", judge(one, questions), len(questions), TARGET_RIGHT)
    judge(tools, prompts)
    show("1 session", turns, args.verbose)
    missed += tools_row(tools, prompts)
    missed += latency("1 session", one, None)
    recognition("1 session", turns)
    if args.sessions > 0:
        missed += await loaded(http, base, args, asked)
    print(f"targets: {'all met' if not missed else 'MISSED ' + ', '.join(missed)}")


async def loaded(
    http: aiohttp.ClientSession,
    base: str,
    args: argparse.Namespace,
    asked: Sequence[tuple[str, bytes]],
) -> list[str]:
    """The questions in ``--sessions`` concurrent sessions, each starting at a different
    one; the targets missed."""
    n = args.sessions
    rotated = [[*asked[k * len(asked) // n :], *asked[: k * len(asked) // n]] for k in range(n)]
    runs = await asyncio.gather(*(conversation(http, base, args, r) for r in rotated))
    turns = [t for r in runs for t in r]
    label = f"{n} sessions"
    questions = QUESTIONS[: args.questions]
    missed = right(label, judge(turns, questions), len(questions) * n, None)
    show(label, turns, args.verbose)
    return missed + latency(label, turns, TARGET_P95_LOADED)


async def model_speed(cfg: Path, *, label: str = "this CPU") -> str:
    """A line saying how fast this CPU runs the model the server loads (timed here while
    no server runs; see :mod:`voxgate.engines.local_llm.speed`)."""
    from voxgate.engines.base import EngineUnavailable
    from voxgate.engines.local_llm.files import installed, model_file
    from voxgate.engines.local_llm.probe import check_runs
    from voxgate.engines.local_llm.speed import measure

    settings = load_settings(cfg, os.environ)
    llm = settings.local_llm
    if not installed(llm):
        return f"# {LOCAL} is not installed: no model speed"
    cache = settings.speech.cache_dir
    try:
        path = await asyncio.to_thread(lambda: model_file(llm, Path(cache).expanduser() / "llm"))
        await asyncio.to_thread(check_runs, path)  # a build this CPU faults on: not here
        speed = await asyncio.to_thread(measure, path, threads=llm.threads)
    except (EngineUnavailable, ValueError, RuntimeError) as exc:
        return f"# the model could not be timed: {exc}"
    return f"# {label}, {path.name}: {speed.describe()}"


async def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-agent-"))
    cfg = tmp / "voxgate.toml"
    cfg.write_text(server_config(args, tmp))
    log = tmp / "voxgate.log"
    print(f"# voxgate bench agent — {os.cpu_count()} cores, python {sys.version.split()[0]}")
    if args.model == LOCAL and args.speed:
        print(await model_speed(cfg))
    gateway = voxgate_proc(cfg, stderr=log, log_level=args.server_log)
    try:
        async with aiohttp.ClientSession() as http:
            await measure(http, f"ws://127.0.0.1:{gateway.port}", args)
    except aiohttp.WSServerHandshakeError as exc:  # an unknown model is refused at connect
        print(
            f"the server refused a session of {args.model} ({exc.status}): is it a model it knows?",
            file=sys.stderr,
        )
        print(f"(the server's log: {log})", file=sys.stderr)
        return 1
    except Exception:
        died = gateway.p.poll()
        if died is None:
            print(f"(the server's log: {log})", file=sys.stderr)
            raise
        how = f"was killed by {signal.Signals(-died).name}" if died < 0 else f"exited {died}"
        print(f"the server {how} during the run; its log: {log}", file=sys.stderr)
        return 1
    finally:
        gateway.stop()
    if args.model == LOCAL and args.speed:  # a shared machine's speed drifts within a run
        print(await model_speed(cfg, label="this CPU after the run"))
    if args.server_log != "warning":
        print(f"(the server's log: {log})", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxgate bench agent", description=__doc__)
    p.add_argument("--model", default=LOCAL, help="the session's model")
    p.add_argument("--sessions", type=int, default=4, help="sessions at once, 2nd run (0: none)")
    p.add_argument(
        "--no-one-session",
        dest="one_session",
        action="store_false",
        help="only the concurrent sessions (not the single session and its tool requests)",
    )
    p.add_argument("--questions", type=int, default=len(QUESTIONS), help="the first N questions")
    p.add_argument("--tool-prompts", type=int, default=len(TOOL_PROMPTS), metavar="N")
    p.add_argument("--silence-ms", type=int, default=500, help="server VAD silence_duration_ms")
    p.add_argument(
        "--server-log",
        default="warning",
        choices=("debug", "info", "warning"),
        help="the server's log level (its log file is named at the end)",
    )
    p.add_argument("--tool-choice", default="auto", help="auto, required or none")
    p.add_argument("--stt", help="the server's default STT engine (default: the built-in one)")
    p.add_argument(
        "--toml",
        action="append",
        default=[],
        help="TOML put before the generated config (repeatable), e.g. 'local_llm.model = \"0.5b\"'",
    )
    p.add_argument("--fresh", action="store_true", help="delete each turn's items after it")
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false")
    p.add_argument(
        "--no-listen",
        dest="listen",
        action="store_false",
        help="ask the next question as soon as an answer is generated, not once its audio"
        " would have played (a user who talks over every answer: more load at once)",
    )
    p.add_argument(
        "--no-speed",
        dest="speed",
        action="store_false",
        help=f"do not time {LOCAL}'s model on this CPU before and after (seconds each)",
    )
    p.add_argument("--turn-timeout", type=float, default=60.0, help="seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="every prompt, heard, answer")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
