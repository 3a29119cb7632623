"""The engine workers: priorities between sessions, urgent stretches, cancellation."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from voxgate.engines.registry import EngineRegistry
from voxgate.engines.sphinx import sphinx_processes
from voxgate.engines.workers import EngineWorkers, Priority
from voxgate.settings import SpeechSettings


async def test_result_and_error_reach_the_caller() -> None:
    w = EngineWorkers(threads=2)
    try:
        assert await w.run(lambda a, b=0: a + b, 2, b=3) == 5
        with pytest.raises(ZeroDivisionError):
            await w.run(lambda: 1 / 0)

        def stop() -> None:
            raise StopIteration

        with pytest.raises(RuntimeError, match="StopIteration"):
            await w.run(stop)
    finally:
        w.shutdown()


async def test_a_free_thread_takes_the_most_urgent_job_first() -> None:
    w = EngineWorkers(threads=1)
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = asyncio.ensure_future(w.run(gate.wait, 5))
        await asyncio.sleep(0.05)  # the only thread is busy: the rest queue
        jobs = [
            asyncio.ensure_future(w.run(order.append, name, priority=p))
            for name, p in [
                ("later clause A", Priority.NORMAL),
                ("warm", Priority.BACKGROUND),
                ("later clause B", Priority.NORMAL),
                ("first clause C", Priority.URGENT),
                ("final transcript D", Priority.URGENT),
            ]
        ]
        await asyncio.sleep(0.05)
        assert w.urgent_pending == 2
        gate.set()
        await asyncio.gather(blocker, *jobs)
        assert order == [
            "first clause C",
            "final transcript D",
            "later clause A",
            "later clause B",
            "warm",
        ]
        assert w.urgent_pending == 0
    finally:
        gate.set()
        w.shutdown()


async def test_jobs_on_every_core_run_one_at_a_time() -> None:
    """Two syntheses side by side each took 3–5× as long as alone: a job on every core
    (``whole``) waits for the one running, even when it is more urgent; other jobs go
    beside it. ``queued`` counts what waits."""
    w = EngineWorkers(threads=3)
    gate = threading.Event()
    started: list[str] = []
    try:
        later_clause = asyncio.ensure_future(
            w.run(lambda: (started.append("later clause"), gate.wait(5)), whole=True)
        )
        await asyncio.sleep(0.05)
        first_clause = asyncio.ensure_future(
            w.run(started.append, "first clause", priority=Priority.URGENT, whole=True)
        )
        await asyncio.sleep(0.05)
        assert started == ["later clause"]  # a thread is free, but the cores are not
        assert w.queued == 1
        await w.run(started.append, "voice activity")  # not on every core: beside it
        assert started == ["later clause", "voice activity"]
        gate.set()
        await asyncio.gather(later_clause, first_clause)
        assert started == ["later clause", "voice activity", "first clause"]
        assert w.queued == 0
    finally:
        gate.set()
        w.shutdown()


async def test_an_urgent_job_goes_beside_a_later_clause_on_one_thread() -> None:
    """A job on every core computes on one thread when others wait as it starts
    (``wide`` false). An urgent one then goes beside it, on one thread too, where a
    normal one waits: a first clause no longer waits for another session's later clause
    to end. A job that starts alone may use every core."""
    w = EngineWorkers(threads=2)
    gate_a, gate_b, gate_later = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def synth(name: str, gate: threading.Event | None = None) -> None:
        seen[name] = w.wide
        if gate is not None:
            gate.wait(5)

    try:
        a = asyncio.ensure_future(w.run(gate_a.wait, 5))
        b = asyncio.ensure_future(w.run(gate_b.wait, 5))
        await asyncio.sleep(0.05)  # both threads busy
        later = asyncio.ensure_future(w.run(synth, "later clause", gate_later, whole=True))
        partial = asyncio.ensure_future(w.run(time.sleep, 0))
        await asyncio.sleep(0.05)
        gate_b.set()  # the later clause starts while the partial waits: on one thread
        await asyncio.sleep(0.05)
        assert seen == {"later clause": False}
        gate_a.set()
        await asyncio.gather(a, b, partial)
        other_later = asyncio.ensure_future(w.run(synth, "other later clause", whole=True))
        await asyncio.sleep(0.05)
        assert "other later clause" not in seen  # a thread is free: it waits all the same
        async with asyncio.timeout(2):
            await w.run(synth, "first clause", priority=Priority.URGENT, whole=True)
        assert seen == {"later clause": False, "first clause": False}
        assert not later.done()
        gate_later.set()
        await asyncio.gather(later, other_later)
        assert seen["other later clause"] is True  # alone: every core
        await w.run(synth, "alone", whole=True)
        assert seen["alone"] is True
        assert not w.wide  # outside a worker thread
    finally:
        for gate in (gate_a, gate_b, gate_later):
            gate.set()
        w.shutdown()


async def test_a_cancelled_queued_job_never_runs() -> None:
    w = EngineWorkers(threads=1)
    gate = threading.Event()
    ran: list[int] = []
    try:
        blocker = asyncio.ensure_future(w.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        job = asyncio.ensure_future(w.run(ran.append, 1, priority=Priority.URGENT))
        await asyncio.sleep(0.05)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        assert w.urgent_pending == 0  # a dropped urgent job no longer holds back a decoder
        gate.set()
        await blocker
        await w.run(ran.append, 2)
        assert ran == [2]
    finally:
        gate.set()
        w.shutdown()


async def test_a_decoding_loop_pauses_while_urgent_work_runs() -> None:
    w = EngineWorkers(threads=1)
    try:
        assert w.pause_for_urgent() == 0.0
        started = threading.Event()

        def final_transcript() -> None:
            with w.urgent():
                started.set()
                time.sleep(0.2)

        job = asyncio.ensure_future(w.run(final_transcript))
        await asyncio.to_thread(started.wait, 5)
        waited = await asyncio.to_thread(w.pause_for_urgent, 2.0)
        assert 0.1 < waited < 1.0
        await job
        # never longer than max_wait: a decoder is not starved by a stream of urgent work
        with w.urgent():
            t0 = time.monotonic()
            w.pause_for_urgent(0.05)
            assert time.monotonic() - t0 < 0.5
    finally:
        w.shutdown()


async def test_shutdown_cancels_what_is_queued() -> None:
    w = EngineWorkers(threads=1)
    gate = threading.Event()
    blocker = asyncio.ensure_future(w.run(gate.wait, 5))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(w.run(time.sleep, 0))
    await asyncio.sleep(0.05)
    w.shutdown()
    gate.set()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RuntimeError, match="shut down"):
        await w.run(time.sleep, 0)


async def test_running_counts_the_jobs_being_computed() -> None:
    """A model decoding beside the pool takes every core only while ``running`` is 0."""
    w = EngineWorkers(threads=2)
    started, release = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(5)

    try:
        assert w.running == 0
        busy = asyncio.ensure_future(w.run(hold))
        failing = asyncio.ensure_future(w.run(lambda: 1 / 0, priority=Priority.URGENT))
        with pytest.raises(ZeroDivisionError):
            await failing
        assert await asyncio.to_thread(started.wait, 5)
        assert w.running == 1
        release.set()
        assert await busy
        assert w.running == 0  # a job that raised counts out too
        assert w.urgent_pending == 0
    finally:
        w.shutdown()


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_engine_threads_and_processes_run_at_the_configured_nice_value() -> None:
    """``speech.nice`` reaches the engine threads and the pocketsphinx processes; the
    loop's thread keeps the server's own."""
    if os.getpriority(os.PRIO_PROCESS, 0) != 0:
        pytest.skip("the test process does not run at nice 0")
    assert SpeechSettings().nice == 4  # not 10: see its comment
    registry = EngineRegistry(SpeechSettings(nice=13))
    try:
        assert await registry.workers.run(_nice) == 13
        processes = sphinx_processes({}, registry.workers)
        try:
            niced = await registry.workers.run(
                processes.call, 0, os.getpriority, os.PRIO_PROCESS, 0
            )
        finally:
            processes.shutdown()
        assert niced == 13
    finally:
        registry.workers.shutdown()
    assert _nice() == 0
