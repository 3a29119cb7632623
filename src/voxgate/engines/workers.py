"""The threads engines compute on: a priority queue, at a lower OS priority than the loop.

Model inference (onnxruntime, CTranslate2, pocketsphinx, llama.cpp) runs in worker
threads and releases the GIL while it computes, so the event loop never waits on it.
Two kinds of fairness apply:

- **Against the event loop.** Worker threads — and the threads the engine libraries
  start from them, which inherit it — get a higher nice value (``speech.nice``, 4), so
  when both cores are busy, the loop's thread still gets a core the moment a frame
  arrives. Not much higher: the nice value weighs the engines against every other
  program on the machine too, and at 10 two busy programs on 2 cores left them so
  little CPU (~10 % of a core each) that recognition fell behind the speech and no turn
  was ever answered (at 4, ~30 %: turns are answered, later). The price is the
  relay's tail while engines compute: ``bench speech``, 4 TTS sessions, relay p99
  ~2.0 ms at 4 against ~1.0 ms at 10 (idle ~0.5–1 ms); first audio p95 ~490 against
  ~700 ms, since the bench's own client, a program at nice 0, competes with them too.
- **Between sessions.** Jobs carry a :class:`Priority`. A free thread takes the most
  urgent queued job first (in order of submission within a priority): a response's first
  clause and a turn's final transcript (``URGENT``) go before later clauses and partial
  transcripts of other sessions (``NORMAL``). Jobs that can compute on every core
  (``whole``: speech synthesis) run one at a time, in that order, and on every core only
  when nothing waits (:attr:`EngineWorkers.wide`); an urgent one does not wait for one
  that computes on one thread: it goes beside it, on one thread too. Long loops that run
  beside the pool — a language model decoding token by token in its own thread — call
  :meth:`EngineWorkers.pause_for_urgent` between tokens: while urgent work is queued or
  running they wait (at most ``max_wait``), which hands the cores to it.

Work that starts as a normal job but turns urgent part-way (a recognition feed that
reaches the end of an utterance) marks the urgent stretch with :meth:`urgent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

from voxgate.settings import SpeechSettings

T = TypeVar("T")

log = logging.getLogger("voxgate.engines")


class Priority(IntEnum):
    #: Someone waits for it now: a turn's final transcript, a response's first clause,
    #: the few milliseconds of voice detection on a live input.
    URGENT = 0
    #: Later clauses of an answer, partial transcripts, conversions.
    NORMAL = 1
    #: Loading models, warming caches.
    BACKGROUND = 2


def _lower_priority(nice: int) -> None:
    """Set this thread's nice value, and give the OS its name (``top -H`` and
    ``/proc/PID/task`` then tell engine threads apart; threads that native libraries
    start from it inherit both)."""
    # Linux keeps a nice value per thread; PRIO_PROCESS with a thread id sets it.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    _name_thread(threading.current_thread().name.removeprefix("voxgate-"))


def _name_thread(name: str) -> None:
    """The calling thread's name as the OS shows it (Linux: at most 15 bytes)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    #: It can compute on every core (a model with a thread pool of its own) ...
    whole: bool = field(default=False, compare=False)
    #: ... and may, this time: nothing waited and no such job ran when it started.
    wide: bool = field(default=False, compare=False)
    #: Set (under the lock) when the caller stopped waiting before a thread took it.
    dropped: bool = field(default=False, compare=False)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class EngineWorkers:
    """Threads for engine work. ``run`` is the only way engines leave the loop.

    The threads start with the first job (a constructor starts nothing) and are daemon
    threads: a job stuck in native code does not hold the process at exit.
    """

    def __init__(self, *, threads: int, nice: int = SpeechSettings.nice) -> None:
        self.threads = threads
        self.nice = nice
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._seq = itertools.count()
        #: Urgent jobs queued or running, plus open :meth:`urgent` stretches.
        self._urgent = 0
        #: Jobs a thread is computing now, and those of them that can compute on every core.
        self._running = 0
        self._whole_running: list[_Job] = []
        #: Per worker thread: the job it computes (``wide``).
        self._local = threading.local()
        self._started: list[threading.Thread] = []
        self._closed = False

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        priority: Priority = Priority.NORMAL,
        whole: bool = False,
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, after every more urgent job queued.
        ``whole``: it can compute on every core (a model with a thread pool of its own,
        like piper's onnxruntime session): it reads :attr:`wide` to know whether it may,
        and two such jobs do not run at once, but for an urgent one beside one on one
        thread.

        Cancelling the caller drops a job no thread has taken yet; one already running
        finishes and its result is discarded."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(int(priority), next(self._seq), lambda: fn(*args, **kwargs), loop, future, whole)
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine workers are shut down")
            if len(self._started) < self.threads:
                self._start_thread()
            self._queue.append(job)
            if job.priority == Priority.URGENT:
                self._urgent += 1
            self._cond.notify_all()
        try:
            return await future
        except asyncio.CancelledError:
            with self._cond:
                if job in self._queue and not job.dropped:
                    job.dropped = True
                    if job.priority == Priority.URGENT:
                        self._urgent -= 1
                        self._cond.notify_all()
            raise

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Mark urgent work done inside a worker thread by a job of lower priority:
        loops calling :meth:`pause_for_urgent` wait until it ends."""
        with self._cond:
            self._urgent += 1
        try:
            yield
        finally:
            with self._cond:
                self._urgent -= 1
                self._cond.notify_all()

    @property
    def running(self) -> int:
        """Jobs being computed now (of any priority): while none are, the cores are free
        for work that runs beside the pool."""
        return self._running

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return sum(not j.dropped for j in self._queue)

    @property
    def wide(self) -> bool:
        """In a worker thread: whether its job (``whole``) may compute on every core.
        It may when nothing waited and no other such job ran as it started; else it
        computes on its own thread, leaving the other cores to the loop and to the work
        that waits."""
        job: _Job | None = getattr(self._local, "job", None)
        return job is not None and job.wide

    @property
    def urgent_pending(self) -> int:
        """Urgent jobs queued or running, and urgent stretches open."""
        return self._urgent

    def pause_for_urgent(self, max_wait: float = 0.5, stop: threading.Event | None = None) -> float:
        """From a thread outside the pool (a model decoding token by token): wait while
        urgent work is queued or running, at most ``max_wait`` seconds so nothing starves,
        or until ``stop`` is set (whoever sets it calls :meth:`wake`). Returns the seconds
        waited."""
        if self._urgent == 0:
            return 0.0
        start = time.monotonic()
        with self._cond:
            self._cond.wait_for(
                lambda: self._urgent == 0 or self._closed or (stop is not None and stop.is_set()),
                timeout=max_wait,
            )
        return time.monotonic() - start

    def wake(self) -> None:
        """Let threads in :meth:`pause_for_urgent` look at their ``stop`` events again."""
        with self._cond:
            self._cond.notify_all()

    def shutdown(self) -> None:
        """Stop the threads after the jobs they are running; queued jobs are cancelled."""
        with self._cond:
            self._closed = True
            queued, self._queue = self._queue, []
            self._cond.notify_all()
        for job in queued:
            if not job.dropped:
                with contextlib.suppress(RuntimeError):  # its loop is closed already
                    job.loop.call_soon_threadsafe(job.future.cancel)

    def _start_thread(self) -> None:
        n = len(self._started)
        thread = threading.Thread(target=self._work, name=f"voxgate-engine_{n}", daemon=True)
        self._started.append(thread)
        thread.start()

    def _take(self) -> _Job | None:
        """The next job: the most urgent queued that may start (:meth:`_may_start`)."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._queue = [j for j in self._queue if not j.dropped]
                may = [j for j in self._queue if self._may_start(j)]
                if not may:
                    self._cond.wait()
                    continue
                job = min(may)
                self._queue.remove(job)
                self._running += 1
                if job.whole:
                    job.wide = not self._queue and not self._whole_running
                    self._whole_running.append(job)
                return job

    def _may_start(self, job: _Job) -> bool:
        """A job on every core (``whole``) waits for the one running: side by side, two
        syntheses on every core took 300–440 ms each where one alone took 90, so both
        came later than one after the other. But an urgent one goes beside one that
        computes on one thread (both then have a core): waiting for another session's
        later clause had made a first clause wait up to 400 ms, and four first clauses at
        once each wait for all before it (``bench speech``, 4 sessions)."""
        running = self._whole_running
        if not job.whole or not running:
            return True
        return job.priority == Priority.URGENT and len(running) == 1 and not running[0].wide

    def _work(self) -> None:
        _lower_priority(self.nice)
        while (job := self._take()) is not None:
            result: Any = None
            error: BaseException | None = None
            self._local.job = job
            try:
                result = job.fn()
            except StopIteration as exc:  # a future cannot hold one
                error = RuntimeError(f"engine job raised StopIteration: {exc}")
            except BaseException as exc:  # handed to the caller, whatever it is
                error = exc
            finally:
                with self._cond:
                    self._running -= 1
                    self._local.job = None
                    if job.whole:
                        self._whole_running.remove(job)
                    if job.priority == Priority.URGENT:
                        self._urgent -= 1
                    if job.priority == Priority.URGENT or job.whole:
                        self._cond.notify_all()
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:  # the caller's loop is closed: nobody waits for it
                log.debug("engine job finished after its loop closed")
