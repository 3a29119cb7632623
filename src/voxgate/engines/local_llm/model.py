"""``voxgate/local`` as a session's :class:`~voxgate.engines.llm.LanguageModel`: prompts,
preparation ahead of turns, and answers that are words or calls."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import orjson

from voxgate.engines.base import EngineError
from voxgate.engines.llm import LanguageModel, LLMError
from voxgate.engines.local_llm.calls import (
    Alone,
    CallOrWords,
    FirstTokens,
    Opening,
    answered_calls,
    call_verdict,
)
from voxgate.engines.local_llm.contexts import joined, log
from voxgate.engines.local_llm.engine import DEFAULT_TEMPERATURE, LocalLLM
from voxgate.engines.local_llm.files import NAME
from voxgate.engines.local_llm.gate import Job
from voxgate.engines.workers import Priority
from voxgate.protocols.chat import ChatDone, ChatEvent, ChatRequest, TextDelta, ToolCallDelta
from voxgate.protocols.chatml import (
    CALL_OPEN,
    END,
    GOING_ON_GBNF,
    WORDS_ONLY_GBNF,
    OutputReader,
    Prompt,
    call_schema,
    grounded,
    render_prompt,
)


@dataclass(frozen=True)
class Held:
    """The words an answer had decoded when it started again as a call (see
    :meth:`LocalModel._in_words`): whether they were all of it, and how it ended."""

    text: str
    ended: bool
    finish: str


class LocalModel(LanguageModel):
    """``voxgate/local`` as one session sees it (resolved per response: holds nothing)."""

    name = NAME

    def __init__(self, engine: LocalLLM) -> None:
        self._engine = engine

    def _prompt(self, request: ChatRequest) -> Prompt:
        return render_prompt(request, default_instructions=self._engine.settings.instructions)

    async def _fit(self, prompt: Prompt, room: int) -> tuple[list[int], int]:
        """The prompt's tokens with the oldest turns dropped until ``room`` tokens are
        left for the answer in the context; and the turns dropped."""
        limit = self._engine.settings.context_tokens - room
        turns = list(prompt.turns)
        dropped = 0
        while True:
            tokens = await self._engine.tokenize(
                Prompt(prompt.system, tuple(turns), prompt.tail).text
            )
            if len(tokens) <= limit:
                return tokens, dropped
            if not turns:
                raise LLMError(
                    f"{NAME}: the instructions and tools alone are {len(tokens)} tokens, "
                    f"over the {limit} the context leaves for them ([local_llm] context_tokens)"
                )
            # drop whole exchanges, not a tool result without its call
            turns.pop(0)
            dropped += 1

    async def _start(self, prompt: Prompt, tokens: list[int]) -> int:
        """How many of ``tokens`` are the session's start (``prompt``'s system turn)."""
        system = await self._engine.tokenize(prompt.system)
        return len(system) if tokens[: len(system)] == system else 0

    def _judged(self, request: ChatRequest) -> bool:
        """Whether ``request``'s session judges requests alone: tools offered with
        ``tool_choice`` ``auto``, and ``[local_llm] judge_alone`` on."""
        return (
            self._engine.settings.judge_alone
            and bool(request.tools)
            and request.tool_choice == "auto"
        )

    async def _alone(self, request: ChatRequest, prompt: Prompt) -> Alone | None:
        """``request`` asked alone — its start and the user's last turn — when a call
        is judged on it (:class:`CallOrWords`): tools offered with ``tool_choice``
        ``auto``, the user spoke last, and there is conversation before."""
        if (
            not self._judged(request)
            or not request.messages
            or request.messages[-1].role != "user"
            or len(prompt.turns) < 2
        ):
            return None
        tokens = await self._engine.tokenize(Prompt(prompt.system, prompt.turns[-1:]).text)
        start = await self._start(prompt, tokens)
        if not start:
            return None
        naming = await self._engine.naming(tuple(t.name for t in request.tools))
        return Alone(tokens, start, naming)

    async def warm(self, request: ChatRequest, *, whole: bool = False) -> None:
        """Evaluate what every turn of ``request``'s session starts with — the system
        prompt and tools, the history, and a user message still being spoken (a partial
        transcript) — so the turn evaluates only what is new. A user message is also
        judged alone (:meth:`_alone`), as if it were the turn's. A ``whole`` one, while
        no other conversation's turn is being answered, is evaluated to where the answer
        starts, and both at normal priority (beside speech work, before other work ahead
        of a turn)."""
        prompt = self._prompt(request)
        text = prompt.system + "".join(prompt.turns)
        await self._engine.first_tokens()  # once per process: not in the first answer
        speaking = bool(prompt.turns and request.messages and request.messages[-1].role == "user")
        engine, owner = self._engine, request.conversation
        priority = Priority.BACKGROUND
        if speaking and whole and not engine.answering(owner):
            # only while no other conversation's turn is being answered: the cores are
            # then that turn's, and tiny.en ends most partials with "?", so the answer's
            # start would be evaluated again and again for words that go on
            text, priority = prompt.text, Priority.NORMAL
        elif speaking:
            text = text.removesuffix(f"{END}\n")
        alone = await self._alone(request, prompt) if speaking else None
        # a session's start may open a context; what follows goes only where it is
        prepared = await engine.prepare(
            await engine.tokenize(text), grow=not prompt.turns, owner=owner, priority=priority
        )
        # after, not beside it (each would take twice as long); not once the turn runs
        if alone is not None and prepared:
            await engine.alone.judge(
                alone.tokens,
                alone.start,
                owner=owner,
                ahead=True,
                priority=priority,
                naming=alone.naming,
            )
        elif not prompt.turns and prepared and self._judged(request):
            await engine.alone.open(owner)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        engine = self._engine
        max_tokens = request.max_tokens or 512
        room = min(max_tokens, engine.settings.context_tokens // 2)
        prompt = self._prompt(request)
        tokens, _ = await self._fit(prompt, room)
        first = await engine.first_tokens()
        auto = bool(request.tools) and request.tool_choice == "auto"
        job = Job(
            tokens=tokens,
            max_tokens=min(max_tokens, engine.settings.context_tokens - len(tokens)),
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            grammar=await self._grammar(call_schema(request)),
            owner=request.conversation,
            start=await self._start(prompt, tokens),
            opening=CallOrWords(first) if auto and not _results_last(request) else Opening(first),
        )
        judging: asyncio.Future[float | None] | None = None
        if auto and (alone := await self._alone(request, prompt)) is not None:
            evaluated = asyncio.Event()
            loop = asyncio.get_running_loop()
            job.evaluated = functools.partial(loop.call_soon_threadsafe, evaluated.set)
            # with other conversations' turns under way the cores are theirs: only a
            # judgment made ahead counts (4 sessions: p95 5.8 s → 8.9–11.6 s)
            busy = engine.answering(request.conversation)
            judging = asyncio.ensure_future(self._judge(alone, request, evaluated, busy, job.since))
        try:
            answer = self._answer(request, job, tokens, first, judging)
            async with contextlib.aclosing(answer) as events:
                async for event in events:
                    yield event
        finally:
            if judging is not None:
                judging.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await judging

    async def _judge(
        self,
        alone: Alone,
        request: ChatRequest,
        evaluated: asyncio.Event,
        judged_only: bool,
        since: float,
    ) -> float | None:
        """How the request ``alone`` opens, judged once the turn's prompt is
        ``evaluated`` (see :meth:`AloneJudge.judge`); ``None`` when it cannot be."""
        try:
            return await self._engine.alone.judge(
                alone.tokens,
                alone.start,
                owner=request.conversation,
                after=evaluated,
                judged_only=judged_only,
                naming=alone.naming,
                since=since,
            )
        except (ValueError, RuntimeError) as exc:
            log.warning("%s: the request alone could not be judged: %s", NAME, exc)
            return None

    async def _answer(
        self,
        request: ChatRequest,
        job: Job,
        tokens: list[int],
        first: FirstTokens,
        judging: asyncio.Future[float | None] | None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """The answer's events. Its first words wait for ``judging`` (the request judged
        alone: :class:`CallOrWords`), decoding on meanwhile; when that says call, the
        words are held and the answer starts again as a call. A call that is not made
        after all (made up, of a function it does not have, or nothing) is answered in
        words: the held ones, and what follows them (see :meth:`_in_words`)."""
        callable_tools = request.tools if request.tool_choice != "none" else ()
        produced = 0
        said = False
        held: Held | None = None
        while True:
            reader = OutputReader(tools=frozenset(t.name for t in callable_tools))
            again: float | None = None
            async with contextlib.aclosing(self._decode(job)) as pieces:
                async for piece in pieces:
                    if not (text := reader.feed(piece)):
                        if reader.foreign:
                            break  # a function it does not have: its arguments do not matter
                        continue
                    if judging is not None:
                        again, judging = await call_verdict(judging, self._engine.alone.wait), None
                        if again is not None:
                            break
                    said = True
                    yield TextDelta(text)
            produced += job.produced
            if again is None and judging is not None and not said and reader.blank:
                # it ended with nothing said: was it a call after all?
                again, judging = await call_verdict(judging, self._engine.alone.wait), None
            if again is None:
                break
            log.debug("alone: the answer starts again as a call (%.3f)", again)
            # the words it had decoded (the decode has stopped: all of them are here)
            text = "".join(job.text)
            words = text.split(CALL_OPEN)[0]
            if words.strip():
                held = Held(words, job.ended and words == text, job.finish)
            job = replace(job, opening=CallOrWords(first, alone=again))
        rest, calls = reader.end()
        repeated = made_up = False
        if calls and request.tool_choice == "auto":
            done = answered_calls(request)
            fresh = [c for c in calls if (c.name, c.arguments) not in done]
            repeated = not fresh
            calls = [c for c in fresh if grounded(c, request)]
            made_up = not calls
        silent = not (said or rest.strip() or calls)
        if reader.looked_like_call or made_up or silent:
            # a call of a function it does not have, one it has the result of, one with
            # made-up arguments, or nothing said: answered in words (the same prompt:
            # what the context holds is used again)
            log.debug(
                "answered in words%s: %s",
                ", from the words it had begun" if held is not None else " again",
                "a call of no function it has"
                if reader.looked_like_call
                else "a call it has the result of"
                if repeated
                else "a call with made-up arguments"
                if made_up
                else "nothing said",
            )
            rest = ""
            if held is not None:
                yield TextDelta(held.text)
            going = await self._in_words(job, first, held)
            if going is None:
                assert held is not None
                job = replace(job, finish=held.finish)
            else:
                job = going
                async with contextlib.aclosing(self._decode(job)) as pieces:
                    async for piece in pieces:
                        yield TextDelta(piece)
                produced += job.produced
        if rest:
            yield TextDelta(rest)
        stamp = int(time.time() * 1000)
        for i, call in enumerate(calls):
            yield ToolCallDelta(i, f"call_local_{stamp}_{i}", call.name, call.arguments)
        finish = "tool_calls" if calls else job.finish
        yield ChatDone(finish, len(tokens), produced)

    async def _in_words(self, job: Job, first: FirstTokens, held: Held | None) -> Job | None:
        """The decode of an answer in words to ``job``'s prompt: one that goes on from
        the words ``held`` from before the answer started again as a call (``None`` when
        they were all of it), else a new answer that opens with words. A false call
        judged on the request alone ("Which planet is known as the red planet?" 0.28 on
        the Xeon) cost a call decoded for nothing and then a new answer's first clause:
        4.4 s to its first audio there."""
        if held is None:
            grammar = await self._grammar(None, WORDS_ONLY_GBNF)
            return replace(job, grammar=grammar, opening=Opening(first))
        if held.ended:
            return None
        said = await self._engine.tokenize(held.text)
        return replace(
            job,
            tokens=[*job.tokens, *said],
            max_tokens=max(1, job.max_tokens - len(said)),
            grammar=await self._grammar(None, GOING_ON_GBNF),
            opening=None,  # it may end at once: the words held may be all but the end
        )

    async def _decode(self, job: Job) -> AsyncGenerator[str, None]:
        """The pieces of text ``job`` decodes in a free context (the one that shares most
        of its prompt). Closing the iteration stops the decode at its next token."""
        engine = self._engine
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        await engine.started(tuple(job.tokens[: job.start]))
        context = await engine.acquire(job.tokens, owner=job.owner)
        assert context is not None
        job.produced, job.finish, job.text, job.ended = 0, "stop", [], False
        cancel = threading.Event()

        def emit(text: str) -> None:
            job.text.append(text)
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        def run() -> None:
            try:
                engine.decode(context, job, cancel, emit)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, None)

        done = engine.run(run)
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
            await asyncio.shield(done)
        except (ValueError, RuntimeError) as exc:
            raise LLMError(f"{NAME}: decoding failed: {exc}") from exc
        finally:
            cancel.set()
            try:
                await joined(done)
            finally:
                await engine.release(context)

    async def _grammar(self, schema: dict[str, Any] | None, gbnf: str | None = None) -> Any:
        """A grammar for the answer: a JSON schema's, or GBNF text; ``None`` for neither."""
        if schema is None and gbnf is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        text = orjson.dumps(schema).decode() if schema is not None else ""

        def build() -> Any:
            if gbnf is not None:
                return LlamaGrammar.from_string(gbnf, verbose=False)
            return LlamaGrammar.from_json_schema(text, verbose=False)

        try:
            return await self._engine.run(build)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise EngineError(f"{NAME}: cannot constrain the call to these tools: {exc}") from exc


def _results_last(request: ChatRequest) -> bool:
    """Whether ``request`` ends with the results of calls: the answer is not pushed
    toward a call (:class:`CallOrWords`), though it may make one (a call that needs
    another's result). Pushed, Qwen 1.5B made the call it had the result of again after
    5 of ``bench agent``'s 8 tool requests, each asked in a new conversation (2 of 9 in
    a bench session); dropped as answered, the answer in words came after it: its first
    words 2.37 s (median) after the result instead of 1.01 s on a 2-vCPU Xeon."""
    return bool(request.messages) and request.messages[-1].role == "tool"
