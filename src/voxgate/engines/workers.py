"""The threads engines compute on, at a lower scheduling priority than the event loop.

Model inference (onnxruntime, CTranslate2, pocketsphinx) runs in these threads and
releases the GIL while it computes. Their threads — and the threads those libraries
start from them, which inherit the priority — are given a higher nice value, so when
both cores are busy synthesizing, the event loop thread still gets a core the moment a
frame arrives: relay latency does not suffer from a model computing beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def _lower_priority(nice: int) -> None:
    # Linux keeps a nice value per thread; PRIO_PROCESS with a thread id sets it.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class EngineWorkers:
    """A thread pool for engine work. ``run`` is the only way engines leave the loop."""

    def __init__(self, *, threads: int, nice: int = 10) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="voxgate-engine",
            initializer=_lower_priority,
            initargs=(nice,),
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
