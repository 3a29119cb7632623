"""Parsing a client frame without holding the event loop for long.

Every protocol's ``receive`` is synchronous and pure. For an ordinary frame it costs
microseconds and runs on the loop. A frame near the size limit (a megabyte of JSON)
costs tens of milliseconds to parse and check, which every other session on the loop
would wait out; those are parsed in a thread, where the loop gets the interpreter back
between the parser's steps. The caller awaits the result before it reads the next frame,
so frames are still handled in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
F = TypeVar("F", str, bytes, str | bytes)

#: Frames larger than this are parsed off the event loop.
OFFLOAD_BYTES = 64 * 1024


async def parse(receive: Callable[[F], T], data: F) -> T:
    """``receive(data)``, in a worker thread when ``data`` is large. ``receive`` must not
    change shared state (the protocols' ``receive`` methods only read theirs)."""
    if len(data) > OFFLOAD_BYTES:
        return await asyncio.to_thread(receive, data)
    return receive(data)
