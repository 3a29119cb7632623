"""Group commit in front of a usage store, and a spill file for while it is down.

:class:`BatchingStore` wraps any :class:`~voxgate.store.base.BulkUsageStore`:

- :meth:`~BatchingStore.add` queues the record; one writer task takes up to
  ``batch_size`` queued records at a time and writes them with one ``add_many`` (one
  transaction). While the store works, ``add`` returns once its record is committed
  (or after ``add_wait`` seconds, the record still queued); while it fails, ``add``
  returns as soon as the record is queued. ``add`` never raises StoreError.
- A failed write is retried with backoff (0.1 s doubling to 5 s) until the store is
  back; then everything waiting is written, oldest first. A batch that fails while
  the store answers ``ping`` is written one record at a time: a record the store
  keeps refusing while it takes others is logged at error level, whole, and dropped.
- At most ``queue_max`` records wait in memory. Past that, records are appended to the
  spill file (one JSON line each, fsync per append); while the file holds records, new
  ones go after them, so order is kept. The writer replays the file after the memory
  queue, and removes it only once every record in it is committed. A file left by an
  earlier run is replayed after :meth:`~BatchingStore.open`. A record the spill file
  cannot take either is logged at error level, whole: never lost silently.
- :meth:`~BatchingStore.close` writes what it can within ``close_timeout`` and puts the
  rest at the front of the spill file, for the next start.
- Reads go straight to the wrapped store.

Writes are replacements keyed by ``session_id`` (see ``add_many``), so a record written
twice (the file replayed again after a crash) is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.errors import StoreError
from voxgate.store.base import BulkUsageStore, UsageQuery, UsageStore
from voxgate.store.spill import SpillFile, decode_lines, encode_entry, log_lost

log = logging.getLogger("voxgate.store")

#: Failures alone (the store answering, other records taken) before a record is
#: logged and dropped as one the store refuses.
MAX_REFUSALS = 3


@dataclass(eq=False)
class _Item:
    record: UsageRecord
    capture: SessionCapture | None = None
    #: Resolved True once committed, False once the record is only queued (the store
    #: failed, or it was spilled); None for a record read back from the spill file.
    done: asyncio.Future[bool] | None = None

    def resolve(self, committed: bool) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(committed)


@dataclass
class _Batch:
    items: list[_Item]
    #: From the spill file: the offset after its lines, and how many lines they are.
    spill_end: int | None = None
    spill_lines: int = 0
    unreadable: list[tuple[bytes, str]] = field(default_factory=list)


class BatchingStore(UsageStore):
    """Group commit, a bounded queue and a spill file in front of ``inner`` (module
    docstring). Call :meth:`open` first and :meth:`close` last."""

    def __init__(
        self,
        inner: BulkUsageStore,
        *,
        spill_path: Path,
        batch_size: int = 500,
        queue_max: int = 100_000,
        add_wait: float = 1.0,
        close_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.inner = inner
        self.spill = SpillFile(spill_path)
        self._batch_size = batch_size
        self._queue_max = queue_max
        self._add_wait = add_wait
        self._close_timeout = close_timeout
        self._backoff = backoff
        self._queue: deque[_Item] = deque()
        #: Taken from the queue by the writer; left here until committed.
        self._inflight: list[_Item] = []
        #: Records on their way into the spill file (buffered or being written), and
        #: those in it not yet committed (its lines from byte ``_offset`` on).
        self._spill_buf: list[_Item] = []
        self._spilling = 0
        self._spilled = 0
        self._offset = 0
        self._spill_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._closing = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._healthy = True
        #: Whether the wrapped store is open (see :meth:`open`).
        self._opened = True
        #: Failures of records the store seems to refuse, and those dropped for it
        #: (skipped when the spill file is read again).
        self._refusals: dict[str, int] = {}
        self._dropped: set[str] = set()

    @property
    def pending(self) -> int:
        """Records added and not yet committed: in memory and in the spill file."""
        return len(self._queue) + len(self._inflight) + self._spilling + self._spilled

    @property
    def path(self) -> str | None:
        """The wrapped store's file when it has one (SQLite), for tools that read it."""
        path = getattr(self.inner, "path", None)
        return path if isinstance(path, str) else None

    async def open(self) -> None:
        """Open the wrapped store and start the writer, which first replays a spill file
        an earlier run left. A local store's StoreError propagates (a path that cannot
        be used); a remote one that cannot be reached yet (PostgreSQL down at start) is
        opened by the writer once it answers, records waiting meanwhile."""
        try:
            await self.inner.open()
        except StoreError as exc:
            if not self.inner.remote:
                raise
            self._opened = self._healthy = False
            log.error("usage store cannot be opened (%s); records wait until it can", exc)
        async with self._spill_lock:
            try:
                self._spilled = await asyncio.to_thread(self.spill.recover)
            except OSError as exc:  # the node still serves; what the file holds waits
                log.error("usage store: spill file %s not readable: %s", self.spill.path, exc)
            self._offset = 0
        if self._spilled:
            log.warning(
                "usage store: %d records waiting in %s; writing them",
                self._spilled,
                self.spill.path,
            )
        self._writer = asyncio.create_task(self._write_loop(), name="voxgate-usage-writer")

    async def add(self, record: UsageRecord, capture: SessionCapture | None = None) -> None:
        """Queue ``record``; return once it is committed, or once it is safely queued
        when the store is failing (at most ``add_wait`` seconds). Never raises StoreError."""
        record = record.clamped()
        self._drained.clear()
        if (
            self._closing.is_set()
            or self._spilling
            or self._spilled
            or len(self._queue) + len(self._inflight) >= self._queue_max
        ):
            await self._to_spill([_Item(record, capture)])
            return
        item = _Item(record, capture, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._wakeup.set()
        if self._healthy and self._writer is not None:
            assert item.done is not None
            await asyncio.wait([item.done], timeout=self._add_wait)

    async def wait_drained(self) -> None:
        """Return once nothing is pending (every record added so far is committed)."""
        await self._drained.wait()

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        return await self.inner.query(q)

    async def get(self, account: str, gateway: str, session_id: str) -> UsageRecord | None:
        return await self.inner.get(account, gateway, session_id)

    async def get_capture(self, session_id: str) -> SessionCapture | None:
        return await self.inner.get_capture(session_id)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        """Write what can be written within ``close_timeout``, move the rest to the
        front of the spill file, close the wrapped store. Records added after this are
        spilled."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wakeup.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            _, running = await asyncio.wait([writer], timeout=self._close_timeout)
            if running:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        rest = self._inflight + list(self._queue)
        self._inflight = []
        self._queue.clear()
        if rest:
            await self._spill_front(rest)
        await self.inner.close()

    # -- the spill file ------------------------------------------------------------

    async def _to_spill(self, items: list[_Item]) -> None:
        """Append ``items`` to the spill file. Callers that come while a write is under
        way share the next one (one fsync for all of them). What the file cannot take
        goes back to the memory queue when there is room, else is logged whole."""
        for item in items:
            item.resolve(False)
        self._spill_buf += items
        self._spilling += len(items)
        # shielded: a cancelled caller's records are still written, by this or a later flush
        await asyncio.shield(self._flush_spill())

    async def _flush_spill(self) -> None:
        async with self._spill_lock:
            items, self._spill_buf = self._spill_buf, []
            if not items:
                return  # an earlier flush took them
            try:
                lines = await asyncio.to_thread(self._encode, items)
                try:
                    await asyncio.to_thread(self.spill.append, [line for _, line in lines])
                except OSError as exc:
                    self._spill_failed([item for item, _ in lines], exc)
                else:
                    self._spilled += len(lines)
            finally:
                self._spilling -= len(items)
        self._wakeup.set()

    async def _spill_front(self, items: list[_Item]) -> None:
        """Put ``items`` (older than the file's records) at the front of the spill file."""
        for item in items:
            item.resolve(False)
        async with self._spill_lock:
            lines = await asyncio.to_thread(self._encode, items)
            try:
                await asyncio.to_thread(self.spill.prepend, [ln for _, ln in lines], self._offset)
            except OSError as exc:
                self._spill_failed([item for item, _ in lines], exc)
            else:
                self._spilled += len(lines)
                self._offset = 0
        if self._spilled:
            log.warning(
                "usage store closed with %d records not written; they wait in %s",
                self._spilled,
                self.spill.path,
            )

    def _encode(self, items: list[_Item]) -> list[tuple[_Item, bytes]]:
        """Spill lines for ``items`` (blocking: CPU work for a thread)."""
        out = []
        for item in items:
            try:
                out.append((item, encode_entry(item.record, item.capture)))
            except (TypeError, ValueError) as exc:
                log_lost(item.record, item.capture, f"cannot be spilled: {exc}")
        return out

    def _spill_failed(self, items: list[_Item], exc: OSError) -> None:
        for item in items:
            if not self._closing.is_set() and len(self._queue) < self._queue_max:
                self._queue.append(item)
            else:
                log_lost(item.record, item.capture, f"spill file {self.spill.path}: {exc}")

    async def _read_spill(self) -> _Batch:
        async with self._spill_lock:
            lines, end = await asyncio.to_thread(self.spill.read, self._offset, self._batch_size)
            if not lines:
                log.error(
                    "usage store: spill file %s lost %d records (removed or cut by hand?)",
                    self.spill.path,
                    self._spilled,
                )
                self._spilled = 0
        batch = _Batch([], spill_end=end, spill_lines=len(lines))
        for line, entry in zip(lines, await asyncio.to_thread(decode_lines, lines), strict=True):
            if isinstance(entry, str):
                batch.unreadable.append((line, entry))
            elif entry[0].session_id not in self._dropped:
                batch.items.append(_Item(*entry))
        return batch

    async def _spill_committed(self, batch: _Batch) -> None:
        for line, why in batch.unreadable:
            log.error("usage store: spill line not readable (%s); line: %r", why, line)
        async with self._spill_lock:
            assert batch.spill_end is not None
            self._offset = batch.spill_end
            self._spilled -= batch.spill_lines
            if self._spilled <= 0:
                self._spilled = 0
                self._offset = 0
                self._dropped.clear()
                await asyncio.to_thread(self.spill.remove)

    # -- the writer ----------------------------------------------------------------

    async def _write_loop(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                batch = await self._next_batch()
                if batch is None:
                    return
                ok = await self._commit(batch)
            except Exception:
                # A bug here must not end the writer: every later record would wait
                # forever. Its batch stays where it was and is tried again.
                log.exception("usage store writer: unexpected error; carrying on")
                ok = False
            if ok:
                delay = self._backoff[0]
                continue
            if self._closing.is_set():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
            delay = min(delay * 2, self._backoff[1])

    async def _next_batch(self) -> _Batch | None:
        """The next records to write, oldest first: the failed batch again (topped up),
        the memory queue, then the spill file. None when closing and memory is empty."""
        while True:
            while self._queue and len(self._inflight) < self._batch_size:
                self._inflight.append(self._queue.popleft())
            if self._inflight:
                return _Batch(list(self._inflight))
            if self._closing.is_set():
                return None
            if self._spilled:
                return await self._read_spill()
            if self.pending == 0:
                self._drained.set()
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _commit(self, batch: _Batch) -> bool:
        """Write ``batch``; False when it must be tried again later."""
        if not self._opened:
            try:
                await self.inner.open()
            except StoreError:
                return False
            self._opened = True
        if batch.items:
            try:
                await self.inner.add_many([(i.record, i.capture) for i in batch.items])
            except StoreError as exc:
                kept = await self._failed(batch.items, exc)
                if kept:
                    still = set(kept)
                    self._inflight = [i for i in self._inflight if i in still]
                    return False
        if batch.spill_end is None:
            done = set(batch.items)
            self._inflight = [i for i in self._inflight if i not in done]
        else:
            await self._spill_committed(batch)
        for item in batch.items:
            item.resolve(True)
            self._refusals.pop(item.record.session_id, None)
        if not self._healthy:
            self._healthy = True
            log.warning("usage store is back; %d records waiting", self.pending)
        return True

    async def _failed(self, items: list[_Item], exc: StoreError) -> list[_Item]:
        """After a failed batch: the items still to write (the others are written, or
        refused and logged).

        When the store answers ``ping`` while the batch fails, a record in it may be
        what the store refuses: the records are written one by one. One that fails
        while others are taken has shown it is the record, not the store; after
        :data:`MAX_REFUSALS` such failures (alone, the store answering) it is dropped.
        A batch that fails whole, the store answering, is the store (read-only, full):
        it is kept and retried for as long as that lasts.
        """
        self._healthy = False
        for item in items:
            item.resolve(False)
        log.warning("usage store: writing %d records failed (%s)", len(items), exc)
        if not await self.inner.ping():
            return items  # the store is down
        if len(items) > 1:
            failed = []
            for item in items:
                try:
                    await self.inner.add_many([(item.record, item.capture)])
                except StoreError:
                    failed.append(item)
            if len(failed) == len(items):
                return items  # nothing is taken: the store, not a record
            items = failed
        elif not self._refusals.get(items[0].record.session_id):
            return items  # one record alone, and no sign it is the record
        kept = []
        for item in items:
            sid = item.record.session_id
            self._refusals[sid] = self._refusals.get(sid, 0) + 1
            if self._refusals[sid] < MAX_REFUSALS:
                kept.append(item)
                continue
            del self._refusals[sid]
            self._dropped.add(sid)
            log_lost(item.record, item.capture, f"refused by the store: {exc}")
        return kept
