"""The voxgate command as a user runs it: a real process, real sockets."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from voxgate import __version__
from voxgate.testing import RecordingUpstream

VOXGATE = [sys.executable, "-m", "voxgate"]


def run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        VOXGATE + args,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


class Server:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import tempfile

        self.errfile = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [*VOXGATE, "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.errfile,
            text=True,
            env={**os.environ, **env},
        )
        assert self.proc.stdout is not None
        self.banner: list[str] = []
        line = self.proc.stdout.readline()
        self.banner.append(line)
        m = re.search(r"listening on (https?)://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            self.errfile.seek(0)
            raise AssertionError(f"no address in {line!r}; stderr: {self.errfile.read()}")
        self.scheme, self.port = m.group(1), int(m.group(2))

    def stop(self) -> tuple[str, str]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.errfile.seek(0)
        err = self.errfile.read()
        assert self.proc.returncode == 0, err
        return "".join(self.banner) + out, err


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"VOXGATE_STORE__URL": f"sqlite:///{tmp_path}/usage.db"}


def test_version() -> None:
    r = run(["--version"])
    assert r.returncode == 0
    assert r.stdout.strip() == f"voxgate {__version__}"


def test_check_config_ok_and_errors(tmp_path: Path) -> None:
    r = run(["check-config"], cwd=tmp_path)
    assert r.returncode == 0
    assert "configuration is valid" in r.stdout
    assert "gateway local/default: open (no tokens)" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[server]\nport = 'eighty'\n[accounts.local.gateways.default]\nlimits = { idle_seconds = 'x' }\n"
    )
    r = run(["check-config", "--config", str(bad)])
    assert r.returncode == 2
    assert "server.port: expected an integer" in r.stderr
    assert "accounts.local.gateways.default.limits.idle_seconds: expected a number" in r.stderr
    r = run(["check-config"], env={"VOXGATE_CONFIG": str(bad)})
    assert r.returncode == 2
    r = run(["check-config"], env={"VOXGATE_SERVER__PORT": "x"}, cwd=tmp_path)
    assert "(from VOXGATE_SERVER__PORT)" in r.stderr


def test_refuses_open_gateway_on_public_address(env: dict[str, str]) -> None:
    r = run(["serve", "--host", "0.0.0.0", "--port", "0"], env=env)
    assert r.returncode == 2
    assert "refusing to bind 0.0.0.0" in r.stderr
    assert "--allow-unauthenticated" in r.stderr


def test_serve_prints_address_and_stops_on_sigterm(env: dict[str, str]) -> None:
    srv = Server([], env)
    out, _ = srv.stop()
    assert "relay: ws://127.0.0.1:" in out
    assert "gateway local/default: open (no tokens)" in out
    assert "providers: cartesia, deepgram, elevenlabs, fal, google, openai" in out
    assert "shutting down" in out


def test_port_in_use_is_a_clear_error(env: dict[str, str]) -> None:
    srv = Server([], env)
    try:
        r = run(["serve", "--port", str(srv.port)], env=env)
        assert r.returncode == 2
        assert f"cannot listen on 127.0.0.1:{srv.port}" in r.stderr
    finally:
        srv.stop()


def test_tls_serves_wss_and_json_logs_hold_no_secrets(
    env: dict[str, str], certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    token, stored = "tls-gw-token-999", "sk-stored-key-777"

    async def session() -> None:
        async with RecordingUpstream() as up:
            cfg = tmp_path / "voxgate.toml"
            cfg.write_text(
                f'[providers.openai]\nurl = "{up.url}/v1/realtime"\n'
                "[accounts.local.gateways.default]\n"
                'tokens = [{ name = "t", env = "T_TOKEN" }]\nkeys = { openai = { env = "T_KEY" } }\n'
            )
            srv = Server(
                [
                    "--config",
                    str(cfg),
                    "--tls-cert",
                    str(cert),
                    "--tls-key",
                    str(key),
                    "--log-format",
                    "json",
                ],
                {**env, "T_TOKEN": token, "T_KEY": stored},
            )
            try:
                assert srv.scheme == "https"
                ctx = ssl.create_default_context(cafile=str(cert))
                async with aiohttp.ClientSession() as cs:
                    url = f"wss://127.0.0.1:{srv.port}/v1/local/default/openai?model=m&key=client-secret-q"
                    async with cs.ws_connect(
                        url, ssl=ctx, protocols=["realtime", f"voxgate-authorization.{token}"]
                    ) as ws:
                        await ws.send_str("over tls")
                        assert (await ws.receive()).data == "over tls"
                    with pytest.raises(aiohttp.WSServerHandshakeError):
                        await cs.ws_connect(
                            url, ssl=ctx, protocols=["voxgate-authorization.wrong-token-x"]
                        )
                assert up.handshakes[0].headers["authorization"] == f"Bearer {stored}"
            finally:
                out, err = srv.stop()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines, "server logged nothing"
        for ln in lines:
            entry = orjson.loads(ln)  # every line is JSON
            assert {"ts", "level", "logger", "msg"} <= set(entry)
        for secret in (token, stored, "client-secret-q", "wrong-token-x"):
            assert secret not in err
            assert secret not in out
        assert any(orjson.loads(ln)["msg"] == "relay open" for ln in lines)

    asyncio.run(session())


def test_a_bench_stopped_with_sigterm_stops_the_servers_it_started() -> None:
    """``timeout`` or ``kill`` on a bench: the servers it started go with it (they lived
    on, one of 15 GB, and spoiled the next run's figures). Started as a shell starts a
    background job, with SIGINT ignored (asyncio's runner then does not handle it)."""
    import psutil

    bench = subprocess.Popen(
        [*VOXGATE, "bench", "relay", "--only", "latency", "--rounds", "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert bench.stdout is not None
        for line in bench.stdout:  # the servers are up once it says what it measures
            if line.startswith("## round trip"):
                break
        servers = psutil.Process(bench.pid).children()
        assert len(servers) == 3, servers  # the echo upstream, the bare relay, voxgate
        bench.send_signal(signal.SIGTERM)
        _out, err = bench.communicate(timeout=60)
        assert bench.returncode == 130, err  # as after ^C
        _gone, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, err
    finally:
        bench.kill()


def test_a_bench_whose_server_does_not_start_stops_those_it_started() -> None:
    """voxgate refuses its config (here a state backend it does not know): the echo
    upstream and the bare relay started before it are stopped, not left running."""
    import uuid

    import psutil

    mark = uuid.uuid4().hex
    done = subprocess.run(
        [*VOXGATE, "bench", "relay", "--only", "latency"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VOXGATE_STATE__URL": "bogus://", "VOXGATE_TEST_MARK": mark},
    )
    assert done.returncode != 0
    assert "voxgate did not start" in done.stderr

    def marked(p: psutil.Process) -> bool:
        try:
            return p.environ().get("VOXGATE_TEST_MARK") == mark
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    left = [p for p in psutil.process_iter() if marked(p)]
    assert not left, [p.cmdline() for p in left]


def test_bench_speech_refuses_an_unknown_engine_before_starting_anything() -> None:
    done = run(["bench", "speech", "--sections", "stt", "--engines", "whisper-30s"])
    assert done.returncode == 2
    assert "--engines: invalid choice: 'whisper-30s'" in done.stderr
    assert "whisper-tiny" in done.stderr  # the names it takes
