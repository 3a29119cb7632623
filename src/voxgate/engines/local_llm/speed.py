"""How fast this CPU runs the language model: the figure that tells one machine's
``bench agent`` results from another's.

The machines this project is measured on differ by 3x in what one decode step of the
same model costs (Qwen 1.5B, one token on one thread: 31 ms on a Zen 5 EPYC, 88 ms on a
Zen 3 one), so latency figures mean little without it. :func:`measure` loads the model
in this process (seconds), times what a turn is made of — one token on one thread and
on all, and a turn's few new words evaluated together — and frees it again; run it
while nothing else computes.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

#: A turn's new words with the chat template around them are about this many tokens.
TURN_TOKENS = 12
#: Tokens evaluated first, so that each step attends to a conversation's worth of them.
HISTORY_TOKENS = 256


@dataclass(frozen=True)
class Speed:
    """Medians in milliseconds."""

    threads: int
    #: One token on one thread, and on ``threads``.
    token_one: float
    token_all: float
    #: :data:`TURN_TOKENS` evaluated in one step on one thread, and on ``threads``.
    turn_one: float
    turn_all: float

    def describe(self) -> str:
        return (
            f"one token {self.token_one:.0f} ms on 1 thread, {self.token_all:.0f} ms on"
            f" {self.threads}; {TURN_TOKENS} prompt tokens {self.turn_one:.0f}"
            f" / {self.turn_all:.0f} ms"
        )


def measure(path: Path, *, threads: int = 2, repeats: int = 7) -> Speed:
    """Time the model at ``path`` on this machine (loads it; several seconds)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the engine runs it
    import llama_cpp
    from llama_cpp import Llama

    llama = Llama(
        model_path=str(path),
        n_ctx=HISTORY_TOKENS + 2 * TURN_TOKENS,
        n_batch=HISTORY_TOKENS,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    try:
        tokens = llama.tokenize(b" the quick brown fox jumps over the lazy dog" * 64)
        tokens = tokens[: HISTORY_TOKENS + TURN_TOKENS]
        llama.eval(tokens[:HISTORY_TOKENS])

        def step(n: int, on: int) -> float:
            llama_cpp.llama_set_n_threads(llama._ctx.ctx, on, on)
            times = []
            for _ in range(repeats):
                llama.n_tokens = HISTORY_TOKENS  # the same step again, over the same history
                started = time.perf_counter()
                llama.eval(tokens[HISTORY_TOKENS : HISTORY_TOKENS + n])
                times.append(1000 * (time.perf_counter() - started))
            return statistics.median(times)

        return Speed(
            threads=threads,
            token_one=step(1, 1),
            token_all=step(1, threads),
            turn_one=step(TURN_TOKENS, 1),
            turn_all=step(TURN_TOKENS, threads),
        )
    finally:
        llama.close()
