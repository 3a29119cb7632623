"""Requests judged alone: whether the user's last turn, asked with only the session's
start before it, opens a call (see :class:`~voxgate.engines.local_llm.calls.CallOrWords`)."""

from __future__ import annotations

import asyncio
import collections
import functools
import statistics
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from voxgate.engines.local_llm.calls import (
    ALONE_WAIT_MAX_SECONDS,
    ALONE_WAIT_SECONDS,
    CALL_RATIO,
    FirstTokens,
    Naming,
    call_ratio,
    named_share,
)
from voxgate.engines.local_llm.contexts import Context, log
from voxgate.engines.local_llm.gate import PREPARE_CHUNK, PROMPT_CHUNK
from voxgate.engines.workers import Priority

if TYPE_CHECKING:
    from voxgate.engines.local_llm.engine import LocalLLM

#: Tokens a context that judges a request alone holds (a session's start, ~470 tokens
#: with six tools, and the user's last turn: see :meth:`AloneJudge.judge`).
ALONE_TOKENS = 1024
#: The turns' judgments whose durations set :attr:`AloneJudge.wait`: the latest ones.
TIMED_JUDGMENTS = 16


class AloneJudge:
    """The small contexts, one a conversation, that judge requests alone for
    :class:`~voxgate.engines.local_llm.engine.LocalLLM` (its :attr:`alone`)."""

    def __init__(self, engine: LocalLLM) -> None:
        self._engine = engine
        self.contexts: list[Context] = []
        self._growing = 0
        self._took: collections.deque[float] = collections.deque(maxlen=TIMED_JUDGMENTS)

    @property
    def wait(self) -> float:
        """How long an answer's first words wait for its turn's judgment (see
        :func:`~voxgate.engines.local_llm.calls.call_verdict`): 2.5 times the median
        time the latest turns' judgments took on this machine, within
        :data:`ALONE_WAIT_SECONDS` and :data:`ALONE_WAIT_MAX_SECONDS`; the most before
        any was timed (a cold first judgment on that Xeon took over a second, and the
        server's first request of a tool was answered in words). A judgment that
        says call evaluates the call's opening too, about twice the tokens. A fixed
        second fitted the machine it was measured on (judgments 0.3–0.7 s); on a
        2-vCPU Xeon 2–2.5× slower they took 0.24–1.7 s (median 0.6–0.85 s, those that
        said call 0.6–1.7 s), and ``voxgate bench agent`` lost 3 to 5 of its 8 calls
        to answers in words ("I will add milk to your shopping list.")."""
        if not self._took:
            return ALONE_WAIT_MAX_SECONDS
        seconds = 2.5 * statistics.median(self._took)
        return min(max(seconds, ALONE_WAIT_SECONDS), ALONE_WAIT_MAX_SECONDS)

    @property
    def took(self) -> tuple[float, ...]:
        """How long the latest turns' judgments took, in seconds, oldest first."""
        return tuple(self._took)

    def timed(self, seconds: float) -> None:
        """Record that a turn's judgment took ``seconds`` (see :attr:`wait`)."""
        self._took.append(seconds)

    @property
    def size(self) -> int:
        """The tokens of a small context: :data:`ALONE_TOKENS`, or fewer when a
        session's context is smaller."""
        return min(ALONE_TOKENS, self._engine.settings.context_tokens)

    async def judge(
        self,
        tokens: list[int],
        start: int,
        *,
        owner: str | None,
        ahead: bool = False,
        after: asyncio.Event | None = None,
        judged_only: bool = False,
        priority: Priority = Priority.BACKGROUND,
        naming: Naming | None = None,
        since: float | None = None,
    ) -> float | None:
        """:func:`call_ratio` at the end of ``tokens``: a request asked alone, its
        session's start (the first ``start`` tokens, a kept one: :class:`Prefixes`) and
        the user's last turn without the conversation between (see
        :class:`CallOrWords`). It is evaluated in a small context of the conversation's
        own, which remembers its last judgment: a turn whose words were judged ahead
        (``ahead``: a partial transcript, at ``priority``) costs nothing then.
        When a speaker pauses, whisper's partial is the final transcript to come.

        A turn's judgment stops the conversation's judgment ahead of other words, and
        makes one of the same words urgent. ``after``: a turn's evaluation waits for it
        (the turn's own prompt evaluated: side by side, two contexts evaluating a few
        tokens each took 2–3× as long on these CPUs), then runs beside the answer's
        first tokens. ``judged_only``: only a judgment made ahead is returned (none is
        made). With ``naming``, a ratio over :data:`CALL_RATIO` is weighed by how likely
        the call names one of the session's functions (:func:`named_share`): asked
        alone, "What is 7 times 8?" opens a call at 0.35, of ``multiply``, which the
        session does not have. ``since``: when the turn it is made for began (its urgent
        steps go in the order of the turns: :class:`DecodeGate`). ``None`` when the
        request cannot be judged cheaply: its start is not kept (evaluating it would take
        seconds), it is over :data:`ALONE_TOKENS`, or no small context is free."""
        size = self.size
        if not 0 < start < len(tokens) < size:
            return None
        key = tuple(tokens)
        first = await self._engine.first_tokens()
        await self._engine.started(key[:start])
        context = await self._take(key, owner, ahead, size)
        if context is None:
            return None
        stop = threading.Event()
        try:
            if context.judged is not None and context.judged[0] == key:
                log.debug("alone: judged ahead %.3f", context.judged[1])
                return context.judged[1]
            if judged_only:
                return None
            if after is not None:
                await after.wait()
            boost = threading.Event()
            context.warming, context.boost, context.judging = stop, boost, key
            judge = self._judge
            ratio: float | None = await self._engine.until_stopped(
                stop,
                judge,
                context,
                tokens,
                start,
                first,
                stop,
                ahead,
                boost,
                priority,
                naming,
                since,
            )
            return ratio
        finally:
            context.warming = context.boost = context.judging = None
            await self._engine.release(context)

    async def open(self, owner: str | None) -> None:
        """Open ``owner``'s small context (see :meth:`judge`) ahead of its first
        judgment, which would otherwise open it at a turn (the session's second). Only
        while fewer than ``contexts`` are open: another conversation's is not taken for
        it."""
        if owner is None or len(self.contexts) + self._growing >= self._engine.settings.contexts:
            return
        context = await self._take((), owner, True, self.size)
        if context is not None:
            await self._engine.release(context)

    async def _take(
        self, key: tuple[int, ...], owner: str | None, ahead: bool, size: int
    ) -> Context | None:
        """The conversation's small context, marked busy; a new one while there are fewer
        than ``contexts``, else the free one used least recently; ``None`` when it would
        have to wait (ahead) or none is free. A turn (not ``ahead``) waits for the
        conversation's judgment under way: hurried when it judges ``key``, else stopped."""
        await self._engine.load()
        async with self._engine.changed:
            while True:
                mine = next((c for c in self.contexts if owner and c.owner == owner), None)
                if mine is not None and mine.busy:
                    if ahead or mine.warming is None or mine.boost is None:
                        return None
                    (mine.boost if mine.judging == key else mine.warming).set()
                    self._engine.wake()
                    await self._engine.changed.wait()
                    continue
                full = len(self.contexts) + self._growing >= self._engine.settings.contexts
                if mine is None and full:
                    free = [c for c in self.contexts if not c.busy]
                    mine = min(free, key=lambda c: c.used, default=None)
                    if mine is None:
                        return None
                if mine is not None:
                    mine.busy, mine.owner, mine.used = True, owner, time.monotonic()
                    return mine
                self._growing += 1
                break
        try:
            context = Context(await self._engine.run(self._engine.open_context, size))
        finally:
            async with self._engine.changed:
                self._growing -= 1
        context.busy, context.owner, context.used = True, owner, time.monotonic()
        async with self._engine.changed:
            self.contexts.append(context)
        return context

    def _judge(
        self,
        context: Context,
        tokens: list[int],
        start: int,
        first: FirstTokens,
        stop: threading.Event,
        ahead: bool,
        boost: threading.Event,
        priority: Priority,
        naming: Naming | None,
        since: float | None,
    ) -> float | None:
        head = tokens[:start]
        if max(context.shared_prefix(head), self._engine.prefixes.longest(head)) < start:
            return None
        started = time.perf_counter()
        now, chunk = (priority, PREPARE_CHUNK) if ahead else (Priority.URGENT, PROMPT_CHUNK)
        evaluate = functools.partial(self._engine.evaluate, boost=boost, since=since)
        cached = evaluate(context, tokens, now, stop, chunk, last=True)
        if stop.is_set() or context.shared_prefix(tokens) < len(tokens):
            return None
        llama = context.llama

        def logits() -> npt.NDArray[np.single]:
            return np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),))

        ratio = call_ratio(logits(), first)
        named = ""
        if naming is not None and ratio > CALL_RATIO:
            # which function would it call? (a few tokens more, only for a likely call)
            calling = [*tokens, *naming.prefix]
            evaluate(context, calling, now, stop, chunk)
            if stop.is_set() or context.shared_prefix(calling) < len(calling):
                return None
            share = named_share(logits(), naming)
            named = f" ({ratio:.3f} × {share:.2f} a call of its own functions)"
            ratio *= share
        context.judged = (tuple(tokens), ratio)
        took = time.perf_counter() - started
        if not ahead:
            self.timed(took)
        log.debug(
            "alone: %d tokens (%d cached) judged %.3f%s in %.0f ms%s",
            len(tokens),
            cached,
            ratio,
            named,
            1000 * took,
            " ahead" if ahead else "",
        )
        return ratio

    # -- decoding (in a decode thread) ----------------------------------------------------
