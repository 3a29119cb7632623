"""The engine of ``voxgate/local``: its contexts, their preparation ahead of turns, and
decoding through the gate (see :mod:`voxgate.engines.local_llm`)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.engines.base import EngineUnavailable
from voxgate.engines.llm import LanguageModel
from voxgate.engines.local_llm.alone import AloneJudge
from voxgate.engines.local_llm.calls import (
    CALL_NAMING,
    CALL_OPENINGS,
    MAX_NAMINGS,
    FirstTokens,
    Naming,
)
from voxgate.engines.local_llm.contexts import (
    Context,
    Prefixes,
    Start,
    joined,
    llama_eog,
    log,
    on_model_of,
    quiet_load,
)
from voxgate.engines.local_llm.files import HINT, NAME, installed, model_file
from voxgate.engines.local_llm.gate import PREPARE_CHUNK, PROMPT_CHUNK, SMALL_CHUNK, DecodeGate, Job
from voxgate.engines.local_llm.probe import check_runs
from voxgate.engines.workers import EngineWorkers, Priority, _lower_priority
from voxgate.protocols.chatml import STOP
from voxgate.settings import LocalLLMSettings

#: A free context holding more than this many tokens that a prompt does not share is
#: another conversation's: a new context is opened instead while the pool may grow.
FOREIGN_TOKENS = 64
#: A generation is urgent until it has produced this many tokens (its first clause).
FIRST_CLAUSE_TOKENS = 12
#: The longest a decode waits for urgent speech work before it takes its step anyway.
MAX_YIELD_SECONDS = 0.3
DEFAULT_TEMPERATURE = 0.2


class LocalLLM:
    """The engine ``voxgate/local`` runs on: contexts, the decode gate, the threads.

    Created by the :class:`~voxgate.engines.llm.LLMRegistry` on first use and shared by
    every session; :meth:`close` at shutdown."""

    def __init__(
        self, settings: LocalLLMSettings, *, cache_dir: Path, workers: EngineWorkers
    ) -> None:
        self.settings = settings
        self._cache_dir = cache_dir
        self._workers = workers
        self.gate = DecodeGate(settings.threads, idle=lambda: not workers.running)
        # A thread for every context, a session's and a small one (work waiting in the
        # gate holds its thread), and one to open contexts: with one a context, four
        # sessions' preparations waiting in the gate left a turn's decode waiting for a
        # thread. Tokenizing, which every turn does first, has a thread of its own.
        self._pool = ThreadPoolExecutor(
            max_workers=2 * settings.contexts + 1,
            thread_name_prefix="voxgate-llm",
            initializer=_lower_priority,
            initargs=(workers.nice,),
        )
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxgate-tok")
        self._contexts: list[Context] = []
        #: The ``Llama`` that loaded the model; every other context shares its weights.
        self._owner: Any = None
        self._opening = threading.Lock()
        self.changed = asyncio.Condition()
        self._path: Path | None = None
        self._load_lock = asyncio.Lock()
        self._growing = 0
        self._installed = False
        #: Why llama.cpp cannot run here, once :func:`check_runs` found it (not checked again).
        self._cannot_run: str | None = None
        self._first: FirstTokens | None = None
        self._namings: OrderedDict[tuple[str, ...], Naming | None] = OrderedDict()
        self.prefixes = Prefixes()
        #: Session starts being evaluated, and when each is done (see :meth:`prepare`).
        self._starting: dict[tuple[int, ...], Start] = {}
        #: Requests judged alone, in small contexts of their own.
        self.alone = AloneJudge(self)

    def model(self) -> LanguageModel:
        """A session's handle; raises :class:`EngineUnavailable` naming what to install
        when llama-cpp-python or the model packages are missing."""
        if not self._installed:
            self._installed = installed(self.settings)
            if not self._installed:
                raise EngineUnavailable(f"{NAME} is not installed: {HINT}")
        from voxgate.engines.local_llm.model import LocalModel  # it imports this module

        return LocalModel(self)

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` in a decode thread. Cancelling the future does not stop a thread
        that has started: a caller whose call touches a context waits for it."""
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def load(self) -> None:
        """Join and verify the model, and open the first context (seconds, once)."""
        async with self._load_lock:
            if self._contexts:
                return
            if importlib.util.find_spec("llama_cpp") is None:
                raise EngineUnavailable(f"{NAME} is not installed: {HINT}")
            self._path = await self.run(model_file, self.settings, self._cache_dir / "llm")
            # a build whose code this machine faults on is refused, not run in the server
            if self._cannot_run is None:
                try:
                    await self.run(check_runs, self._path)
                except EngineUnavailable as exc:
                    self._cannot_run = str(exc)
            if self._cannot_run is not None:
                raise EngineUnavailable(self._cannot_run)
            self._contexts.append(Context(await self.run(self.open_context)))

    def open_context(self, tokens: int | None = None) -> Any:
        """A new llama.cpp context of ``tokens`` (``context_tokens`` by default): the
        first loads the model, the others share it (:func:`on_model_of`)."""
        tokens = tokens or self.settings.context_tokens
        with self._opening:
            if self._owner is None:
                self._owner = self.load_model(tokens)
                return self._owner
        return on_model_of(self._owner, tokens)

    def load_model(self, tokens: int) -> Any:
        """The model loaded anew, with a context of ``tokens`` (a ``Llama`` of its own:
        :meth:`open_context` loads it once)."""
        # llama.cpp's OpenMP threads must sleep, not spin, while they wait: with two
        # cores shared by synthesis and recognition a spinning thread holds the core the
        # other needs (measured: 1.7 tokens/s instead of 10 beside a busy core).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from llama_cpp import Llama

        assert self._path is not None
        threads = self.settings.threads
        # verbose: llama-cpp-python would otherwise point file descriptor 2 (the server's
        # log) at /dev/null while it loads (see quiet_load)
        with quiet_load():
            try:
                llama = Llama(
                    model_path=str(self._path),
                    n_ctx=tokens,
                    n_batch=PROMPT_CHUNK * 4,
                    # one token on one thread, a prompt chunk on all (see DecodeGate)
                    n_threads=1,
                    n_threads_batch=threads,
                    verbose=True,
                )
            except (ValueError, RuntimeError) as exc:
                raise EngineUnavailable(f"{NAME}: cannot load {self._path.name}: {exc}") from exc
        llama.verbose = False  # no timings printed after each generation
        return llama

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._tokenizer.shutdown(wait=False, cancel_futures=True)
        self._contexts.clear()
        self.alone.contexts.clear()
        self._owner = None  # the model: freed once the last context on it is

    # -- contexts ------------------------------------------------------------------------

    async def acquire(
        self,
        tokens: list[int],
        *,
        owner: str | None = None,
        warm: bool = False,
        grow: bool = True,
    ) -> Context | None:
        """A free context for ``tokens``, marked busy; waits for one when all are busy
        and the pool is full.

        A conversation (``owner``) keeps a context of its own: it takes it when it is
        free, and stops its own preparation under way to take it. Without one it opens
        a new context while the pool may grow, else takes the free context that no one
        owns or that the conversation using one least recently had. Requests of no
        conversation take the free context sharing the longest prefix with ``tokens``,
        unless it holds much else and the pool may grow (a preparation with more of
        ``tokens`` is stopped and taken).

        With ``warm`` (preparing ahead of a turn) nothing waits and nothing is taken from
        another conversation: ``None`` when no free context is the conversation's own
        and (``grow=False``) it may not open one, or the pool is full."""
        await self.load()
        async with self.changed:
            while True:
                free = [c for c in self._contexts if not c.busy]
                if (not warm or grow) and self._stop_preparation(tokens, owner, free, warm):
                    await self.changed.wait()
                    continue
                size = len(self._contexts) + self._growing
                room = size < self.settings.contexts
                chosen = (
                    self._choose_owned(tokens, owner, free, warm=warm, grow=grow, room=room)
                    if owner is not None
                    else self._choose_shared(tokens, free, warm=warm, grow=grow, room=room)
                )
                if isinstance(chosen, Context):
                    chosen.busy = True
                    chosen.owner = owner
                    chosen.used = time.monotonic()
                    return chosen
                if chosen == "none":
                    return None
                if chosen == "grow":
                    break
                await self.changed.wait()
            self._growing += 1
        try:
            context = Context(await self.run(self.open_context))
        finally:
            async with self.changed:
                self._growing -= 1
        context.busy = True
        context.owner = owner
        context.used = time.monotonic()
        async with self.changed:
            self._contexts.append(context)
        return context

    def _stop_preparation(
        self, tokens: list[int], owner: str | None, free: list[Context], warm: bool
    ) -> bool:
        """Stop the preparation whose context a request for ``tokens`` should take: one
        holding more of them than any free context (of the conversation, for one). A
        turn hurries a session's start instead (it needs it); a session's new start
        stops the one it replaces. Whether one was stopped (wait for its release)."""
        warming = [c for c in self._contexts if c.busy and c.warming is not None]
        if owner is not None:
            warming = [c for c in warming if c.owner == owner]
            free = [c for c in free if c.owner == owner]
        # with no free context, a conversation takes its own preparation's whatever it
        # holds; a request of no one's only one sharing some of its tokens
        shared = max((c.shared_prefix(tokens) for c in free), default=-1 if owner else 0)
        ahead = max(warming, key=lambda c: c.shared_prefix(tokens), default=None)
        if ahead is None or ahead.warming is None:
            return False
        if ahead.shared_prefix(tokens) <= shared and (owner is None or free):
            return False
        if ahead.boost is not None and not warm:
            ahead.boost.set()  # a session's start: the turn needs it; made urgent
        else:
            ahead.warming.set()  # it stops within one chunk, then is released
        self.wake()
        return True

    def wake(self) -> None:
        """Let steps waiting in the gate or for urgent work look at their events again."""
        self.gate.wake()
        self._workers.wake()

    @staticmethod
    def _choose_owned(
        tokens: list[int],
        owner: str,
        free: list[Context],
        *,
        warm: bool,
        grow: bool,
        room: bool,
    ) -> Context | str:
        """A conversation's choice: a context, or ``grow``, ``none`` or ``wait``."""
        mine = [c for c in free if c.owner == owner]
        if mine:
            return max(mine, key=lambda c: c.shared_prefix(tokens))
        if warm and not grow:
            return "none"
        if room:
            return "grow"
        if warm:  # a session's start may take a context no one owns (the first one)
            return next((c for c in free if c.owner is None and grow), "none")
        if not free:
            return "wait"
        # no one's first, then the conversation idle longest
        return min(free, key=lambda c: (c.owner is not None, c.used))

    @staticmethod
    def _choose_shared(
        tokens: list[int], free: list[Context], *, warm: bool, grow: bool, room: bool
    ) -> Context | str:
        """The choice for a request of no conversation: by the prefix it shares."""
        best = max(free, key=lambda c: c.shared_prefix(tokens), default=None)
        if best is not None:
            shared = best.shared_prefix(tokens)
            own = len(best.cached()) - shared <= FOREIGN_TOKENS
            if not room or own:
                return "none" if warm and not own and not grow else best
        if warm and not grow:
            return "none"
        if room:
            return "grow"
        return "none" if warm else "wait"

    async def prepare(
        self,
        tokens: list[int],
        *,
        grow: bool,
        owner: str | None = None,
        priority: Priority = Priority.BACKGROUND,
    ) -> bool:
        """Evaluate ``tokens`` ahead of the turn that will start with them, at
        ``priority`` (background: only while no speech work is urgent), in a context
        that a turn needing it takes over (see :meth:`acquire`); in a new context only
        with ``grow``.

        With ``grow`` (a session's start: its instructions and tools) the evaluated start
        is kept for other sessions (:class:`Prefixes`); a session starting while the same
        start is being evaluated waits for that instead of evaluating it too. Whether it
        was evaluated to the end (``False``: no context was free for it, or a turn took
        the context over)."""
        key = tuple(tokens)
        if grow:
            await self.started(key)
        start = Start(asyncio.Event(), threading.Event())
        if grow and self.prefixes.longest(tokens) < len(tokens):
            self._starting[key] = start
        try:
            context = await self.acquire(tokens, owner=owner, warm=True, grow=grow)
            if context is None:
                log.debug("prepare: %d tokens, no context free for them", len(tokens))
                return False
            # what it held and evaluated is counted for the debug line alone
            debug = log.isEnabledFor(logging.DEBUG)
            held = context.shared_prefix(tokens) if debug else 0
            started = time.perf_counter()
            context.warming = stop = threading.Event()
            context.boost = start.boost if grow else None
            # a partial transcript in small chunks: a turn taking the context over waits
            # for the chunk under way
            chunk = PROMPT_CHUNK if grow else PREPARE_CHUNK
            try:
                finished: bool = await self.until_stopped(
                    stop,
                    self._evaluate_ahead,
                    context,
                    tokens,
                    stop,
                    chunk,
                    grow,
                    start.boost,
                    priority,
                )
            finally:
                context.warming = context.boost = None
                # before a turn takes it
                evaluated = context.shared_prefix(tokens) - held if debug else 0
                await self.release(context)
            log.debug(
                "prepare: %d tokens (%d held), %d evaluated at %s priority in %.0f ms%s",
                len(tokens),
                held,
                evaluated,
                priority.name.lower(),
                1000 * (time.perf_counter() - started),
                "" if finished else ", stopped",
            )
        finally:
            if self._starting.get(key) is start:
                del self._starting[key]
            start.done.set()
        return finished

    async def started(self, key: tuple[int, ...]) -> None:
        """Wait until no session's start ``key`` is being evaluated (a turn that needs
        it hurries it: it becomes urgent)."""
        while (start := self._starting.get(key)) is not None:
            start.boost.set()
            self.wake()
            await start.done.wait()

    def _evaluate_ahead(
        self,
        context: Context,
        tokens: list[int],
        stop: threading.Event,
        chunk: int,
        keep: bool,
        boost: threading.Event,
        priority: Priority,
    ) -> bool:
        """:meth:`evaluate` at ``priority`` (urgent once ``boost`` is set); with
        ``keep``, the evaluated start is kept for other contexts (:class:`Prefixes`).
        Whether it went to the end (``False``: stopped, say by a turn taking over)."""
        self.evaluate(context, tokens, priority, stop, chunk, boost=boost)
        if stop.is_set():
            return False
        if keep and context.shared_prefix(tokens) == len(tokens):
            self.prefixes.keep(context, len(tokens))
        return True

    async def until_stopped(self, stop: threading.Event, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a decode thread that watches ``stop``; its result. Cancelled,
        this sets ``stop`` and returns (raises) only once the thread has stopped: until
        then it may still be writing to the context it was given."""
        running = self.run(fn, *args)
        try:
            return await asyncio.shield(running)  # a cancellation must not cancel it
        finally:
            stop.set()
            self.wake()
            await joined(running)

    async def release(self, context: Context) -> None:
        async with self.changed:
            context.busy = False
            self.changed.notify_all()

    async def first_tokens(self) -> FirstTokens:
        """The tokens that matter at an answer's first token (see :class:`Opening`), once."""
        if self._first is None:
            calls = {(await self.tokenize(text))[0] for text in CALL_OPENINGS}
            llama = self._contexts[0].llama

            def silent() -> list[int]:
                return [
                    t
                    for t in range(llama.n_vocab())
                    if llama_eog(llama, t) or not llama.detokenize([t], special=True).strip()
                ]

            self._first = FirstTokens(
                np.array(sorted(calls), dtype=np.intc),
                np.array(await self.run(silent), dtype=np.intc),
            )
        return self._first

    async def naming(self, names: tuple[str, ...]) -> Naming | None:
        """How a call names one of the functions ``names`` (kept for the last
        :data:`MAX_NAMINGS` sets); ``None`` when a name's first token cannot be told
        apart from what comes before it (they tokenize together)."""
        if names in self._namings:
            self._namings.move_to_end(names)
            return self._namings[names]
        prefix = await self.tokenize(CALL_NAMING)
        first: set[int] = set()
        naming: Naming | None = None
        for name in names:
            tokens = await self.tokenize(CALL_NAMING + name)
            if tokens[: len(prefix)] != prefix or len(tokens) == len(prefix):
                break
            first.add(tokens[len(prefix)])
        else:
            naming = Naming(tuple(prefix), np.array(sorted(first), dtype=np.intc))
        self._namings[names] = naming
        if len(self._namings) > MAX_NAMINGS:
            self._namings.popitem(last=False)
        return naming

    async def tokenize(self, text: str) -> list[int]:
        await self.load()
        llama = self._contexts[0].llama
        out: list[int] = await asyncio.get_running_loop().run_in_executor(
            self._tokenizer, lambda: llama.tokenize(text.encode(), add_bos=False, special=True)
        )
        return out

    def answering(self, owner: str | None) -> bool:
        """Whether a context is evaluating or decoding a turn of a conversation other than
        ``owner``'s (not a preparation ahead of one)."""
        return any(
            c.busy and c.warming is None and (owner is None or c.owner != owner)
            for c in self._contexts
        )

    def evaluate(
        self,
        context: Context,
        tokens: list[int],
        priority: Priority,
        stop: threading.Event | None = None,
        chunk: int = PROMPT_CHUNK,
        *,
        last: bool = False,
        boost: threading.Event | None = None,
        since: float | None = None,
    ) -> int:
        """Bring ``context`` to ``tokens``, in chunks through the gate (what it holds
        already of them is kept, what follows is dropped); ``stop`` ends it early. Work
        ahead of a turn (``BACKGROUND``) also waits while urgent speech work runs.
        ``last``: the last token is evaluated even if the context holds it, so that the
        logits to sample from are its own.

        A chunk of up to :data:`SMALL_CHUNK` tokens (a turn's new words) runs on one
        thread beside another session's step, on every core when they are free
        (:class:`DecodeGate`); a larger one takes every core. Returns how
        many of ``tokens`` the context held (or took from a kept start)."""
        llama = context.llama
        held = self.prefixes.restore(context, tokens)
        keep = min(held, len(tokens) - 1) if last else held
        llama.n_tokens = keep
        for i in range(keep, len(tokens), chunk):
            now = Priority.URGENT if boost is not None and boost.is_set() else priority
            if now is Priority.BACKGROUND:
                self._workers.pause_for_urgent(MAX_YIELD_SECONDS, stop)
            if stop is not None and stop.is_set():
                return held
            piece = tokens[i : i + chunk]
            threads = 1 if len(piece) <= SMALL_CHUNK else self.settings.threads
            with self.gate.step(now, stop, threads, spread=True, since=since) as granted:
                if not granted:
                    return held
                context.use_threads(granted)
                llama.eval(piece)
        return held

    def decode(
        self, context: Context, job: Job, cancel: threading.Event, emit: Callable[[str], None]
    ) -> None:
        """Decode ``job`` in ``context``, handing text to ``emit`` as it comes; stops at
        the next token once ``cancel`` is set."""
        # Until its first clause, the answer is urgent work: partial transcripts and
        # other sessions' later tokens and clauses wait for it.
        first_clause = contextlib.ExitStack()
        first_clause.enter_context(self._workers.urgent())
        try:
            self._decode(context, job, cancel, emit, first_clause)
        finally:
            first_clause.close()

    def _decode(
        self,
        context: Context,
        job: Job,
        cancel: threading.Event,
        emit: Callable[[str], None],
        first_clause: contextlib.ExitStack,
    ) -> None:
        llama = context.llama
        started = time.perf_counter()
        start = job.tokens[: job.start]
        if start and max(context.shared_prefix(start), self.prefixes.longest(start)) < len(start):
            # a start no one has kept: evaluated on its own first, and kept for others
            self.evaluate(context, start, Priority.URGENT, since=job.since)
            self.prefixes.keep(context, len(start))
        # the whole prompt: generate() then samples at once from its last token's logits
        cached = self.evaluate(context, job.tokens, Priority.URGENT, last=True, since=job.since)
        evaluated = time.perf_counter()
        if job.evaluated is not None:
            job.evaluated()
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = ""
        generator = llama.generate(
            job.tokens,
            temp=job.temperature,
            top_k=40,
            top_p=0.9,
            min_p=0.05,
            repeat_penalty=1.05,
            grammar=job.grammar,
            logits_processor=[job.opening] if job.opening is not None else None,
        )
        while True:
            if cancel.is_set():
                return
            urgent = job.produced < FIRST_CLAUSE_TOKENS
            if not urgent:
                first_clause.close()
                self._workers.pause_for_urgent(MAX_YIELD_SECONDS)
            now = Priority.URGENT if urgent else Priority.NORMAL
            with self.gate.step(now, spread=True, since=job.since) as n:
                context.use_threads(n)
                token = next(generator, None)
            if token is None or llama_eog(llama, token):
                break
            job.produced += 1
            if job.produced == 1:
                first = time.perf_counter()
            held += text.decode(llama.detokenize([token], special=True))
            stop = min((i for s in STOP if (i := held.find(s)) >= 0), default=-1)
            if stop >= 0:
                held = held[:stop]
                break
            # hold back what could be the start of a stop string
            safe = len(held) - max((_overlap(held, s) for s in STOP), default=0)
            if safe > 0:
                emit(held[:safe])
                held = held[safe:]
            if job.produced >= job.max_tokens:
                job.finish = "length"
                break
        job.ended = True
        held += text.decode(b"", final=True)
        if held:
            emit(held)
        if job.produced:
            end = time.perf_counter()
            log.debug(
                "decode: context %d, %d prompt tokens (%d cached) in %.0f ms, first token "
                "after %.0f ms, %d tokens in %.0f ms",
                self._contexts.index(context) if context in self._contexts else -1,
                len(job.tokens),
                cached,
                1000 * (evaluated - started),
                1000 * (first - started),
                job.produced,
                1000 * (end - started),
            )


def _overlap(text: str, stop: str) -> int:
    """The longest end of ``text`` that begins ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
