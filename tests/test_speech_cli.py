"""``voxgate say`` and ``voxgate transcribe``, in-process and against a running server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.conftest import GatewayFactory

from voxgate.audio import read_wav
from voxgate.cli import main

pytestmark = pytest.mark.timeout(180)


def test_say_then_transcribe_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hello.wav"
    env = {"VOXGATE_STORE__URL": f"sqlite:///{tmp_path}/u.db"}
    assert (
        main(
            [
                "say",
                "A rod is used to catch pink salmon.",
                "-o",
                str(out),
                "--sample-rate",
                "16000",
            ],
            env,
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "s of audio at 16000 Hz" in said
    wav = read_wav(out)
    assert wav.sample_rate == 16000
    assert 1.5 < wav.duration_seconds < 5
    assert main(["transcribe", str(out), "--engine", "whisper"], env) == 0
    text = capsys.readouterr().out.lower()
    assert "pink salmon" in text


def test_cli_errors_are_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"VOXGATE_STORE__URL": f"sqlite:///{tmp_path}/u.db"}
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    assert main(["transcribe", str(bad)], env) == 1
    assert "not a PCM WAV file" in capsys.readouterr().err
    assert main(["say", "hi", "-o", str(tmp_path / "x.wav"), "--voice", "nobody"], env) == 1
    assert "unsupported_voice" in capsys.readouterr().err


async def test_say_against_a_running_server(gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await gateway(
        '[accounts.local.gateways.default]\ntokens = [{ name = "t", env = "TOK" }]\n',
        env={"TOK": "abc"},
    )
    out = tmp_path / "remote.wav"
    args = ["say", "Kick the ball.", "-o", str(out), "--url", f"ws://127.0.0.1:{gw.port}"]
    assert await asyncio.to_thread(main, [*args, "--token", "abc"], {}) == 0
    assert read_wav(out).sample_rate == 24000
    assert await asyncio.to_thread(main, [*args, "--token", "wrong"], {}) == 1
