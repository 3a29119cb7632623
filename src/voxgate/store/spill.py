"""The spill file: usage records waiting on disk while the store is down.

One JSON line per record (its capture included), appended with an fsync per append;
read back in order, and removed only once everything in it is committed. Encoding keeps
every field, so a record replayed is the record that was spilled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import fields
from pathlib import Path

import orjson

from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.protocols.relay.capture import CapturedFrame
from voxgate.store.base import Entry

log = logging.getLogger("voxgate.store")

_RECORD_FIELDS = frozenset(f.name for f in fields(UsageRecord))


def _dumps(value: object) -> str:
    """JSON for a log line or a spill line; strings orjson refuses (lone surrogates) are
    escaped by the standard library instead."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=True)


def encode_entry(record: UsageRecord, capture: SessionCapture | None) -> bytes:
    """One spill line (with its newline) for a record and its capture."""
    cap = None
    if capture is not None:
        cap = {
            "session_id": capture.session_id,
            "dropped": capture.dropped,
            "frames": [
                [f.seq, f.direction, f.at, f.kind, f.size, f.payload] for f in capture.frames
            ],
        }
    return (_dumps({"v": 1, "record": record.to_json(), "capture": cap}) + "\n").encode()


def decode_entry(line: bytes) -> Entry:
    """The record and capture of one spill line; ValueError when it is not one.

    Fields the record no longer has are ignored; fields added since take their defaults.
    """
    try:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = json.loads(line)  # lone surrogates, escaped by the fallback writer
        rec = obj["record"]
        record = UsageRecord(**{k: v for k, v in rec.items() if k in _RECORD_FIELDS})
        cap = obj.get("capture")
        capture = None
        if cap is not None:
            frames = tuple(CapturedFrame(*f) for f in cap["frames"])
            capture = SessionCapture(cap["session_id"], frames, cap["dropped"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    return record, capture


def decode_lines(lines: list[bytes]) -> list[Entry | str]:
    """Each line's entry, or why it is not one (blocking: CPU work for a thread)."""
    out: list[Entry | str] = []
    for line in lines:
        try:
            out.append(decode_entry(line))
        except ValueError as exc:
            out.append(str(exc))
    return out


def log_lost(record: UsageRecord, capture: SessionCapture | None, why: str) -> None:
    log.error(
        "usage record %s not saved (%s); record: %s%s",
        record.session_id,
        why,
        _dumps(record.to_json()),
        f"; its capture of {len(capture.frames)} frames is lost" if capture else "",
    )


class SpillFile:
    """Records waiting on disk, one JSON line each. Every method blocks: call them off
    the event loop, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def recover(self) -> int:
        """The number of lines a file left behind holds (0 when there is none); a last
        line cut short by a crash is ended, so appends start on a line of their own."""
        try:
            with self.path.open("rb") as f:
                count = sum(1 for _ in f)
                if f.tell() == 0:
                    return 0
                f.seek(-1, os.SEEK_END)
                ended = f.read(1) == b"\n"
        except FileNotFoundError:
            return 0
        if not ended:
            self.append([b"\n"])
        return count

    def append(self, lines: list[bytes]) -> None:
        """Append ``lines`` durably (fsync); on OSError the file is as it was."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            start = f.tell()
            try:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise

    def read(self, offset: int, limit: int) -> tuple[list[bytes], int]:
        """Up to ``limit`` whole lines from byte ``offset``, and the offset after them."""
        lines: list[bytes] = []
        try:
            with self.path.open("rb") as f:
                f.seek(offset)
                while len(lines) < limit and (line := f.readline()).endswith(b"\n"):
                    lines.append(line)
                    offset += len(line)
        except FileNotFoundError:
            pass
        return lines, offset

    def prepend(self, lines: list[bytes], offset: int) -> None:
        """Replace the file by ``lines`` then what it holds from byte ``offset`` on,
        atomically (a new file renamed over it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as out:
            out.writelines(lines)
            try:
                with self.path.open("rb") as old:
                    old.seek(offset)
                    shutil.copyfileobj(old, out)
            except FileNotFoundError:
                pass
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
