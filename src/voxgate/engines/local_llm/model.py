"""``voxgate/local`` as a session's :class:`~voxgate.engines.llm.LanguageModel`: prompts,
preparation ahead of turns, and answers that are words or calls."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace
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
    END,
    WORDS_ONLY_GBNF,
    OutputReader,
    Prompt,
    call_schema,
    grounded,
    render_prompt,
)


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
            opening=CallOrWords(first) if auto else Opening(first),
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
        words are dropped and the answer starts again as a call."""
        callable_tools = request.tools if request.tool_choice != "none" else ()
        produced = 0
        said = False
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
            job = replace(job, opening=CallOrWords(first, alone=again))
        rest, calls = reader.end()
        if calls and request.tool_choice == "auto":
            done = answered_calls(request)
            calls = [c for c in calls if grounded(c, request) and (c.name, c.arguments) not in done]
            made_up = not calls
        else:
            made_up = False
        silent = not (said or rest.strip() or calls)
        if reader.looked_like_call or made_up or silent:
            # a call of a function it does not have, or with made-up arguments, or nothing
            # said: asked again in words (the same prompt: what the context holds is used
            # again)
            log.debug("answered again in words: %s", "silent" if silent else "not a call")
            words = await self._grammar(None, WORDS_ONLY_GBNF)
            job = replace(job, grammar=words, opening=Opening(first))
            rest = ""
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

    async def _decode(self, job: Job) -> AsyncGenerator[str, None]:
        """The pieces of text ``job`` decodes in a free context (the one that shares most
        of its prompt). Closing the iteration stops the decode at its next token."""
        engine = self._engine
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        await engine.started(tuple(job.tokens[: job.start]))
        context = await engine.acquire(job.tokens, owner=job.owner)
        assert context is not None
        job.produced, job.finish = 0, "stop"
        cancel = threading.Event()

        def run() -> None:
            try:
                engine.decode(
                    context, job, cancel, lambda text: _call_soon(loop, pieces.put_nowait, text)
                )
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


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[str], None], text: str) -> None:
    loop.call_soon_threadsafe(fn, text)
