"""The ``voxgate`` command: serve, check-config, bench, --version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import ClientError

from voxgate import __version__
from voxgate.config import load_settings
from voxgate.errors import ConfigError
from voxgate.runner import run_main
from voxgate.settings import Settings, is_loopback


def _config_path(arg: str | None, environ: Mapping[str, str]) -> str | None:
    if arg:
        return arg
    if environ.get("VOXGATE_CONFIG"):
        return environ["VOXGATE_CONFIG"]
    return "voxgate.toml" if Path("voxgate.toml").is_file() else None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, key in (
        ("host", "server.host"),
        ("port", "server.port"),
        ("log_format", "server.log_format"),
        ("log_level", "server.log_level"),
        ("tls_cert", "server.tls_cert"),
        ("tls_key", "server.tls_key"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    if getattr(args, "allow_unauthenticated", False):
        out["server.allow_unauthenticated"] = True
    return out


def load(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return load_settings(_config_path(args.config, environ), environ, overrides=_overrides(args))


def check_exposure(settings: Settings) -> None:
    """Refuse to serve open gateways on a non-loopback address unless told to."""
    if is_loopback(settings.server.host) or settings.server.allow_unauthenticated:
        return
    open_gws = [f"{g.account}/{g.name}" for g in settings.all_gateways() if not g.tokens]
    if open_gws:
        raise ConfigError(
            f"refusing to bind {settings.server.host}: gateways without tokens "
            f"({', '.join(open_gws)}) would be open to the network. Configure tokens "
            "(accounts.NAME.gateways.NAME.tokens) or pass --allow-unauthenticated."
        )


def describe(settings: Settings, providers: Sequence[str]) -> list[str]:
    lines = [f"config: {settings.source}"]
    for gw in settings.all_gateways():
        auth = f"{len(gw.tokens)} token(s)" if gw.tokens else "open (no tokens)"
        keys = ", ".join(f"{p}={k.describe()}" for p, k in gw.keys.items()) or "none"
        lim = gw.limits
        lines.append(
            f"gateway {gw.account}/{gw.name}: {auth}; stored keys: {keys}; "
            f"limits: {lim.max_connections} conns, {lim.messages_per_minute} msg/min, "
            f"{lim.max_message_bytes} B/msg, {lim.max_session_seconds:g}s session, "
            f"{lim.idle_seconds:g}s idle; capture_payloads={gw.capture_payloads}"
        )
    lines.append(f"providers: {', '.join(providers)}")
    lines.append(f"usage store: {settings.store.url}; state: {settings.state.url}")
    return lines


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    cert, key = settings.server.tls_cert, settings.server.tls_key
    if cert is None or key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"server.tls_cert/tls_key: cannot load: {exc}") from None
    return ctx


async def _serve(settings: Settings) -> None:
    from aiohttp import web

    from voxgate.server.app import create_app, drain
    from voxgate.server.services import SERVICES

    ssl_ctx = _ssl_context(settings)
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout_seconds,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port, ssl_context=ssl_ctx)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {settings.server.host}:{settings.server.port}: {exc.strerror}"
        ) from None
    # What start-up built (modules, engines, models) lives as long as the process: keep
    # it out of the cyclic collector's full passes, which otherwise walk all of it and
    # hold the event loop for tens of milliseconds each time.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    host, port = runner.addresses[0][:2]
    scheme = "https" if ssl_ctx else "http"
    ws_scheme = "wss" if ssl_ctx else "ws"
    shown = f"[{host}]" if ":" in host else host
    print(f"voxgate {__version__} listening on {scheme}://{shown}:{port}", flush=True)
    print(f"  open {scheme}://{shown}:{port}/ in a browser to talk to the agent")
    print(f"  relay: {ws_scheme}://{shown}:{port}/v1/{{account}}/{{gateway}}/{{provider}}")
    engines = app[SERVICES].engines
    print(f"  speech: {ws_scheme}://{shown}:{port}/v1/tts/{{{','.join(engines.tts_names())}}}")
    print(f"          {ws_scheme}://{shown}:{port}/v1/stt/{{{','.join(engines.stt_names())}}}")
    llms = ", ".join(f"{p}/…" for p in app[SERVICES].llms.providers() if p != "voxgate")
    model = settings.realtime.default_model
    print(f"  realtime: {ws_scheme}://{shown}:{port}/v1/realtime?model={model} (or {llms})")
    for line in describe(settings, sorted(app[SERVICES].providers)):
        print(f"  {line}")
    for warning in settings.warnings():
        print(f"  warning: {warning}")
    sys.stdout.flush()
    await stop.wait()
    # Draining: /readyz says 503 at once, new sessions are refused, live ones get
    # server.drain_seconds to end; a second signal cuts that short. Then whatever is
    # left is closed with 1012 (service restart: clients reconnect, to another node).
    stop.clear()
    grace = settings.server.drain_seconds
    live = len(app[SERVICES].sessions)
    print(f"voxgate: draining ({live} live sessions, up to {grace:g} s)", flush=True)
    left = await drain(app, seconds=grace, cut=stop)
    print(f"voxgate: shutting down ({left} sessions closed with 1012)", flush=True)
    await runner.cleanup()


def _prepare_local_model(settings: Settings) -> None:
    """Join and verify the embedded model's file before serving, saying so when it is
    done for the first time (a minute at most, otherwise silent that long)."""
    from voxgate.engines.base import EngineError
    from voxgate.engines.local_llm import PACKAGED, model_file, needs_join

    cache = Path(settings.speech.cache_dir).expanduser() / "llm"
    packaged = PACKAGED.get(settings.local_llm.model)
    first = needs_join(settings.local_llm, cache)
    if first and packaged is not None:
        print(
            f"voxgate/local: joining {packaged.file} ({packaged.size / 1e9:.1f} GB) from "
            f"{len(packaged.packages)} packages into {cache} and checking its SHA-256 …",
            flush=True,
        )
    started = time.monotonic()
    try:
        path = model_file(settings.local_llm, cache)
    except EngineError as exc:  # sessions that ask for it are told why
        print(f"voxgate/local: unavailable: {exc}", file=sys.stderr, flush=True)
        return
    if first:
        print(f"voxgate/local: {path.name} ready ({time.monotonic() - started:.1f} s)", flush=True)


def _cmd_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from voxgate.server.logsetup import configure_logging

    settings = load(args, environ)
    check_exposure(settings)
    configure_logging(
        fmt=settings.server.log_format,
        level=settings.server.log_level,
        secrets=settings.secret_values(),
    )
    if settings.realtime.default_model == "voxgate/local":
        _prepare_local_model(settings)
    run_main(_serve(settings))
    return 0


def _cmd_check_config(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from voxgate.protocols.relay.providers import build_registry

    settings = load(args, environ)
    providers = build_registry(settings)
    check_exposure(settings)
    print("configuration is valid")
    for line in describe(settings, sorted(providers)):
        print(f"  {line}")
    for warning in settings.warnings():
        print(f"  warning: {warning}")
    return 0


#: ``voxgate bench WHICH`` → the module whose ``main(argv)`` runs it.
BENCHES = {
    "relay": "voxgate.bench.relay",
    "speech": "voxgate.bench.speech",
    "realtime": "voxgate.bench.realtime",
    "sfu": "voxgate.bench.sfu",
    "page": "voxgate.bench.page",
    "soak": "voxgate.bench.soak",
    "cluster": "voxgate.bench.cluster",
    "agent": "voxgate.bench.agent",
}


def _cmd_bench(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import importlib

    bench = importlib.import_module(BENCHES[args.which])
    # a bench stopped with SIGTERM (``timeout``, ``kill``) unwinds as one stopped with ^C:
    # asyncio's runner cancels the main task, whose ``finally`` blocks stop the servers it
    # started (they would otherwise live on). An exception raised by the handler itself
    # could land inside uvloop's C code and skip them. SIGINT first gets Python's own
    # handler back: a shell starts a background job with SIGINT ignored, and asyncio's
    # runner then leaves it alone, so the SIGINT raised here would be lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigint_on_sigterm)
    code: int = bench.main(args.bench_args)
    return code


def _sigint_on_sigterm(_signum: int, _frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


async def _with_server(args: argparse.Namespace, environ: Mapping[str, str], work: Any) -> Any:
    """Run ``work(http, base)`` against ``--url`` or an in-process server."""
    import aiohttp

    from voxgate.speech_client import local_server

    async with aiohttp.ClientSession() as http:
        if args.url:
            return await work(http, args.url.rstrip("/"))
        async with local_server(load(args, environ)) as base:
            return await work(http, base)


def _client_error(exc: Exception) -> str:
    from aiohttp import WSServerHandshakeError

    if isinstance(exc, WSServerHandshakeError):
        hint = " (check --token)" if exc.status == 401 else ""
        return f"the server refused the session: HTTP {exc.status}{hint}"
    return str(exc) or type(exc).__name__


def _cmd_say(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from voxgate.audio import write_wav
    from voxgate.speech_client import SpeechClientError, speak

    async def work(http: Any, base: str) -> Any:
        return await speak(
            http,
            base,
            args.text,
            engine=args.engine,
            voice=args.voice,
            sample_rate=args.sample_rate,
            token=args.token or environ.get("VOXGATE_TOKEN"),
        )

    try:
        spoken = run_main(_with_server(args, environ, work))
    except (SpeechClientError, OSError, ClientError) as exc:
        print(f"voxgate say: {_client_error(exc)}", file=sys.stderr)
        return 1
    write_wav(args.output, spoken.pcm, spoken.sample_rate)
    seconds = len(spoken.pcm) / (2 * spoken.sample_rate)
    print(
        f"{args.output}: {seconds:.2f} s of audio at {spoken.sample_rate} Hz "
        f"(first audio after {spoken.first_audio_seconds * 1000:.0f} ms)"
    )
    return 0


def _cmd_transcribe(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from voxgate.audio import AudioFormatError, read_wav
    from voxgate.speech_client import SpeechClientError, progress_bar, transcribe

    try:
        wav = read_wav(args.input)
    except (AudioFormatError, OSError) as exc:
        print(f"voxgate transcribe: {args.input}: {exc}", file=sys.stderr)
        return 1

    async def work(http: Any, base: str) -> Any:
        return await transcribe(
            http,
            base,
            wav.mono(),
            wav.sample_rate,
            engine=args.engine,
            token=args.token or environ.get("VOXGATE_TOKEN"),
            progress=progress_bar("transcribing"),
        )

    try:
        heard = run_main(_with_server(args, environ, work))
    except (SpeechClientError, OSError, ClientError) as exc:
        print(f"voxgate transcribe: {_client_error(exc)}", file=sys.stderr)
        return 1
    print(heard.text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxgate", description=__doc__)
    p.add_argument("--version", action="version", version=f"voxgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="TOML file (default: $VOXGATE_CONFIG or ./voxgate.toml)")
        sp.add_argument("--host", help="address to bind (default 127.0.0.1)")
        sp.add_argument("--port", type=int, help="port to bind (default 8780)")
        sp.add_argument(
            "--allow-unauthenticated",
            action="store_true",
            help="serve gateways without tokens on a non-loopback address",
        )
        sp.add_argument("--tls-cert", help="PEM certificate: serve https/wss directly")
        sp.add_argument("--tls-key", help="PEM private key for --tls-cert")
        sp.add_argument("--log-format", choices=("text", "json"))
        sp.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    common(sub.add_parser("serve", help="run the server"))
    common(sub.add_parser("check-config", help="validate the configuration and print it"))
    b = sub.add_parser("bench", help="benchmarks (voxgate bench relay --help)")
    b.add_argument("which", choices=tuple(BENCHES))
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    say = sub.add_parser("say", help="synthesize text to a WAV file")
    say.add_argument("text")
    say.add_argument("-o", "--output", default="say.wav", help="WAV file to write")
    say.add_argument("--engine", default="piper")
    say.add_argument("--voice")
    say.add_argument("--sample-rate", type=int, default=24000)
    tr = sub.add_parser("transcribe", help="transcribe a PCM16 WAV file")
    tr.add_argument("input", help="WAV file (16-bit PCM, any rate, mono or stereo)")
    tr.add_argument("--engine", default="pocketsphinx")
    for sp in (say, tr):
        sp.add_argument("--url", help="a running server (ws://host:port); default: in-process")
        sp.add_argument("--token", help="gateway token (default $VOXGATE_TOKEN)")
        sp.add_argument("--config", help="TOML file for the in-process server")
    return p


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    commands = {
        "serve": _cmd_serve,
        "check-config": _cmd_check_config,
        "bench": _cmd_bench,
        "say": _cmd_say,
        "transcribe": _cmd_transcribe,
    }
    try:
        return commands[args.command](args, env)
    except ConfigError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
