"""llama.cpp contexts, and the KV cache of prompt starts kept for other contexts."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("voxgate.engines")

#: llama.cpp's log levels (ggml_log_level): what is worth the server's log.
_LLAMA_ERROR, _LLAMA_WARN, _LLAMA_CONT = 4, 3, 5
#: The one log callback llama.cpp has per process (a C global: it must outlive every
#: context, so it is kept here rather than by an object).
_LLAMA_LOG: list[Any] = []
_QUIET = threading.Lock()

#: Prompt starts whose KV cache is kept (each ~28 KiB a token for the 1.5B model: a
#: system prompt with six tools is ~13 MiB).
MAX_PREFIXES = 4


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

    def keep(self, context: Context, n: int) -> None:
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

    def restore(self, context: Context, tokens: list[int]) -> int:
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
class Start:
    """A session's start being evaluated: who waits for it, and how to hurry it."""

    done: asyncio.Event
    boost: threading.Event


class Context:
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
        #: :meth:`AloneJudge.judge`).
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


def on_model_of(owner: Any, tokens: int) -> Any:
    """A new llama.cpp context of ``tokens`` on the model ``owner`` (a ``Llama``) loaded:
    a ``Llama`` of its own for everything this package calls (``eval``, ``generate``,
    ``input_ids``, ``n_tokens``, ``_ctx``), that shares the model's weights.

    A second ``Llama(model_path=...)`` loads the model again, and where llama.cpp
    repacks the weights for the CPU (``CPU_REPACK``: a copy per load, as on a Zen 5
    EPYC) each load took 0.7-2.8 s of one core and ~1.9 GB (four sessions and their
    judges held eight copies); this takes ~45 ms and the KV cache and compute buffer
    (~230 MB at 4096 tokens).
    llama-cpp-python has no public way to do it: the object is made as ``Llama.__init__``
    makes it after loading the model (written against 0.3.36, the version pinned;
    ``copy.copy`` would not do, it reloads through ``__setstate__``), and
    ``test_contexts_share_the_model_and_answer_as_a_model_of_their_own`` checks that it
    answers token for token like the owner. The new object keeps ``owner`` referenced:
    the model is freed with ``owner``, so it must outlive every context on it."""
    import numpy as np
    from llama_cpp import Llama
    from llama_cpp import _internals as internals

    llama: Any = Llama.__new__(Llama)
    llama.__dict__.update(owner.__dict__)  # the model, its vocabulary and settings
    llama._model_owner = owner
    llama._stack = contextlib.ExitStack()  # closes this context's parts, not the model
    params = type(owner.context_params).from_buffer_copy(owner.context_params)
    params.n_ctx = tokens
    llama.context_params = params
    llama._ctx = llama._stack.enter_context(
        contextlib.closing(internals.LlamaContext(model=owner._model, params=params, verbose=False))
    )
    llama._batch = llama._stack.enter_context(
        contextlib.closing(
            internals.LlamaBatch(n_tokens=owner.n_batch, embd=0, n_seq_max=tokens, verbose=False)
        )
    )
    llama._n_ctx = llama.n_ctx()
    llama._candidates = internals.LlamaTokenDataArray(n_vocab=owner._n_vocab)
    llama.n_tokens = 0
    llama._requires_eval = True
    llama.input_ids = np.ndarray((tokens,), dtype=np.intc)
    llama.scores = np.ndarray((owner.n_batch, owner._n_vocab), dtype=np.single)
    llama._mirostat_mu = ctypes.c_float(2.0 * 5.0)
    llama._sampler = None
    llama.cache = None
    return llama


def llama_eog(llama: Any, token: int) -> bool:
    """``token`` ends generation (``<|im_end|>``, ``<|endoftext|>``, EOS)."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama._model.vocab, token))


async def joined(thread: asyncio.Future[Any]) -> None:
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


def _route_llama_log() -> None:
    """llama.cpp's own log into the server's: its errors, and its warnings at debug; not
    the thousand lines a context's load writes at the levels below. Once per process;
    call with ``_QUIET`` held."""
    import llama_cpp

    if _LLAMA_LOG:
        return
    last = [0]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def routed(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        level = last[0] if level == _LLAMA_CONT else level
        last[0] = level
        if level == _LLAMA_ERROR:
            log.error("llama.cpp: %s", text.decode(errors="replace").rstrip())
        elif level == _LLAMA_WARN:  # each load warns of benign things in the model file
            log.debug("llama.cpp: %s", text.decode(errors="replace").rstrip())

    _LLAMA_LOG.append(routed)
    llama_cpp.llama_log_set(routed, ctypes.c_void_p(0))


@contextlib.contextmanager
def quiet_load() -> Iterator[None]:
    """Around ``Llama(..., verbose=True)``: what llama-cpp-python prints while a context
    loads does not reach the server's log, and nothing else is lost meanwhile.

    With ``verbose=False`` it points file descriptor 2 at /dev/null for the whole load,
    and every log line any thread wrote meanwhile was lost (4 sessions starting lost 27
    s of the server's log). Instead, llama.cpp's log goes through a callback
    (:func:`_route_llama_log`) and the prints of llama-cpp-python itself, to
    ``sys.stderr`` and ``sys.stdout``, go nowhere: the log's handler keeps the stream it
    was given. One load at a time (they swap the same two names)."""
    with _QUIET:
        _route_llama_log()
        out, err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = io.StringIO()
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
