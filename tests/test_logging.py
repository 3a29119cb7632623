from __future__ import annotations

import logging

import orjson
import pytest

from voxgate.server.logsetup import SecretScrubber, configure_logging


def test_scrubber_removes_secrets_and_keeps_prose() -> None:
    scrub = SecretScrubber({"configured-secret-1"})
    line = (
        "x configured-secret-1 Authorization: Bearer sk-abcdefghijklmnop "
        "wss://h/p?model=m&key=AIzaSyABCDEF&api_key=c1 "
        "protocols realtime, voxgate-authorization.gwtok12345, openai-insecure-api-key.sk-xyz"
    )
    out = scrub(line)
    for secret in (
        "configured-secret-1",
        "sk-abcdefghijklmnop",
        "AIzaSyABCDEF",
        "c1 ",
        "gwtok12345",
        "sk-xyz",
    ):
        assert secret not in out
    assert "model=m" in out
    assert "realtime" in out
    prose = "this token matches nothing; the key stays unset; Token refresh failed"
    assert scrub(prose) == prose


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt="json", level="info", secrets={"hidden-value-42"})
    logging.getLogger("voxgate.test").info("hello %s", "hidden-value-42", extra={"session": "s1"})
    entry = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["msg"] == "hello ***"
    assert entry["session"] == "s1"
    assert entry["level"] == "info"
    logging.getLogger().handlers.clear()
