"""Structured logging (text or JSON) with secrets scrubbed from every line.

Nothing logs a token or key on purpose (URLs are logged with secret query values
redacted, headers are never logged); the :class:`SecretScrubber` is the safety net:
it replaces every configured secret value, anything after ``Bearer``/``Token``/``Key``
schemes, and secret-bearing query parameters in each formatted line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import orjson

_PATTERNS = [
    # HTTP auth schemes (capitalised as in headers) followed by a credential-length value
    re.compile(r"\b(Bearer|bearer|Token|Key)\s+[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"(?i)([?&](?:key|api_key|access_token|token|xi-api-key)=)[^&\s\"']+"),
    re.compile(r"(?i)((?:voxgate|cf-aig)-authorization\.)[^,\s\"']+"),
    re.compile(r"(?i)((?:openai-insecure-api-key|xi-api-key|fal-api-key)\.)[^,\s\"']+"),
]


class SecretScrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first so that a secret containing another is replaced whole.
        self.secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} ***", text)
        for pat in _PATTERNS[1:]:
            text = pat.sub(lambda m: f"{m.group(1)}***", text)
        return text


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


def configure_logging(*, fmt: str, level: str, secrets: Iterable[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(SecretScrubber(secrets), as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log prints full request lines (query strings can hold keys).
    logging.getLogger("aiohttp.access").disabled = True
