"""Whether an answer opens with a call of a function: judged on its first token's logits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from voxgate.protocols.chat import ChatRequest

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
    the session's start and the user's last turn alone (:meth:`AloneJudge.judge`),
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


#: The longest an answer's first words wait for the judgment of its request alone, at
#: least and at most (:attr:`~voxgate.engines.local_llm.alone.AloneJudge.wait`).
ALONE_WAIT_SECONDS = 1.0
ALONE_WAIT_MAX_SECONDS = 4.0


@dataclass(frozen=True)
class Alone:
    """A request asked alone (see :meth:`AloneJudge.judge`): its tokens, how many
    of them are the session's start, and how a call names the session's functions."""

    tokens: list[int]
    start: int
    naming: Naming | None


def answered_calls(request: ChatRequest) -> set[tuple[str, str]]:
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


async def call_verdict(judging: asyncio.Future[float | None], seconds: float) -> float | None:
    """The ratio of the request judged alone when it says call (:class:`CallOrWords`),
    waiting for it at most ``seconds``; else ``None``."""
    try:
        ratio = await asyncio.wait_for(asyncio.shield(judging), seconds)
    except TimeoutError:
        return None
    return ratio if ratio is not None and ratio > CALL_RATIO else None
