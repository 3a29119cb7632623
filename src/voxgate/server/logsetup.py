"""Structured logging (text or JSON) with secrets scrubbed from every line.

Nothing logs a token or key on purpose (URLs are logged with secret query values
redacted, headers are never logged); the :class:`SecretScrubber` is the safety net:
it replaces every configured secret value, anything after ``Bearer``/``Token``/``Key``
schemes, and secret-bearing query parameters in each formatted line. It lives in
:mod:`voxgate.scrub`, since captured relay frames are scrubbed with it too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from voxgate.scrub import SecretScrubber

__all__ = ["MalformedRequests", "SecretScrubber", "configure_logging"]

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    def __init__(self, scrub: SecretScrubber, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.scrub = scrub
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _RESERVED}
        if self.as_json:
            entry: dict[str, Any] = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
                **extra,
            }
            if record.exc_info:
                entry["exc"] = self.formatException(record.exc_info)
            line = orjson.dumps(entry, default=str).decode()
        else:
            line = super().format(record)
            if extra:
                line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return self.scrub(line)


class MalformedRequests(logging.Filter):
    """One line at INFO, not an error with a traceback, for each malformed HTTP request.

    aiohttp logs every request its parser refuses (a header over 8 KiB, garbage on the
    port) as an error with a traceback, though the peer is at fault and gets its 400; a
    hostile client could fill the log with them. The line names the error type only:
    aiohttp's message quotes the offending bytes, which can hold a header's secret.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg = f"malformed HTTP request from %s ({type(exc).__name__})"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def configure_logging(*, fmt: str, level: str, secrets: Iterable[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(SecretScrubber(secrets), as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log prints full request lines (query strings can hold keys).
    logging.getLogger("aiohttp.access").disabled = True
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
