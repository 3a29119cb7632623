"""Decode steps by priority (:class:`DecodeGate`), and one generation (:class:`Job`)."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from voxgate.engines.local_llm.calls import Opening
from voxgate.engines.workers import Priority

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


class DecodeGate:
    """Decode steps by priority, as many at once as there are cores for them.

    A step weighs the threads it computes with: a large chunk of prompt all of them, a
    small one or a token one, so that two sessions' steps run side by side on a core
    each (two contexts decoding the 1.5B model on a thread each make about twice the
    tokens per second of one). A step that finds the cores its own — no other step
    running or waiting, and ``idle()`` (no speech work computing) — takes them all
    (``spread``): on these CPUs one token took 45 ms on one thread and 33 on two, and
    ten prompt tokens 400 and 200 ms. Steps are granted strictly in order, most urgent
    first and equal priorities in turn, except that urgent steps go in the order of the
    turns they serve (``since``): when several turns end together, the oldest gets its
    first clause first instead of all of them sharing the cores and all coming late
    (4 sessions: processing p95 4.4–5.0 s instead of 5.0–6.1 s, with the partials'
    budget of :class:`~voxgate.engines.whisper.PartialBudget`). A chunk at the head
    waits for the cores to be free, and the steps behind it wait with it. Work ahead of
    a turn (``BACKGROUND``) does not start beside an urgent step: side by side, a turn's
    11 tokens took 535 ms instead of about 300.
    """

    def __init__(self, capacity: int = 1, idle: Callable[[], bool] = lambda: True) -> None:
        self.capacity = max(1, capacity)
        self._idle = idle
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, float, int]] = []
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
        since: float | None = None,
    ) -> Iterator[int]:
        """Wait for this step's turn; yields the threads it may compute with then
        (``weight``, or every core when ``spread`` and they are free), or ``0`` at once
        when ``stop`` is set while waiting (a background step would otherwise wait as
        long as more urgent ones keep coming). Whoever sets ``stop`` calls :meth:`wake`.
        ``since``: when the turn an urgent step serves began (``time.monotonic``)."""
        weight = min(max(1, weight), self.capacity)
        # equal priorities in turn (the order of their steps), but urgent steps by the
        # turn they serve: the oldest turn's first clause first
        key = since if since is not None and priority is Priority.URGENT else time.monotonic()
        ticket = (int(priority), key, next(self._seq))

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
class Job:
    """One generation: what it decodes, and (from its decode thread) how it went."""

    tokens: list[int]
    max_tokens: int
    temperature: float
    grammar: Any
    #: Its first token: anything but an end; :class:`CallOrWords` for ``tool_choice: auto``;
    #: ``None`` when it goes on from words said already (``tokens`` end with them).
    opening: Opening | None
    #: The conversation it continues (``ChatRequest.conversation``).
    owner: str | None = None
    #: How many of ``tokens`` are the session's start (instructions and tools).
    start: int = 0
    produced: int = 0
    finish: str = "stop"
    #: The text it decoded, as handed on.
    text: list[str] = field(default_factory=list)
    #: It came to its end (an end token, a stop string or ``max_tokens``), not stopped.
    ended: bool = False
    #: Called (in the decode thread) once the prompt is evaluated.
    evaluated: Callable[[], object] | None = None
    #: When its turn began (``time.monotonic``): urgent steps go oldest turn first.
    since: float = field(default_factory=time.monotonic)
