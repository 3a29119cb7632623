"""What every background loop of the media server shares: it outlives its iterations.

A loop that forwards, mixes, plays or collects for many sessions must not end because
one packet, one frame or one session made one iteration fail: :func:`surviving` logs
that failure once, with its traceback, and the loop goes on. :func:`stop_task` ends a
loop's task, and reports (rather than re-raises) an error that ended it, so that the
owner's ``close`` still releases everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def surviving(log: logging.Logger, what: str, *args: object) -> Iterator[None]:
    """Run one iteration of a loop that must go on.

    An ``Exception`` raised inside is logged with ``log.exception`` (``what % args``
    says which loop and which item) and not re-raised; cancellation passes through.
    Keep the loop's wait (its ``await queue.get()``, ``sleep``) outside the block, so
    a failing item cannot make the loop spin."""
    try:
        yield
    except Exception:
        log.exception(what + " failed; carrying on", *args)


async def stop_task(task: asyncio.Task[None] | None, log: logging.Logger, what: str) -> None:
    """Cancel ``task`` (unless it is the caller) and wait for it to end."""
    if task is None or task is asyncio.current_task():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if (current := asyncio.current_task()) is not None and current.cancelling():
            raise
    except Exception:
        log.exception("%s had failed", what)
