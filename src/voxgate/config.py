"""Loading and validating settings: TOML file, ``VOXGATE_*`` environment, CLI flags.

Environment overrides: a variable ``VOXGATE_A__B__C=value`` sets key ``a.b.c``. Only
names with ``__`` after the prefix are overrides, so ``VOXGATE_CONFIG`` (the config
path) and secrets such as ``VOXGATE_TOKEN`` are not mistaken for keys. Values are read
as TOML literals when they parse as one (``9000``, ``true``, ``["a"]``), else as
strings. Every problem is reported at once, each naming its key and, where it came
from the environment or the command line, its origin.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voxgate.engines.local_llm import installed as local_llm_installed
from voxgate.engines.options import ENGINE_OPTIONS, speech_engine_names
from voxgate.errors import ConfigError
from voxgate.settings import (
    DEFAULT_ACCOUNT,
    DEFAULT_GATEWAY,
    LOCAL_MODELS,
    OPENAI_NAMES,
    AccountSettings,
    AppSettings,
    ClusterSettings,
    EngineSettings,
    GatewaySettings,
    Limits,
    LLMSettings,
    LocalLLMSettings,
    ProviderAuth,
    ProviderSettings,
    RealtimeSettings,
    RelaySettings,
    Secret,
    ServerSettings,
    Settings,
    SpeechSettings,
    StateSettings,
    StoreSettings,
    TokenSettings,
    default_account,
    default_apps,
)

ENV_PREFIX = "VOXGATE_"


def load_settings(
    path: str | Path | None,
    environ: Mapping[str, str],
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file at ``path`` (or none), apply environment and CLI overrides,
    validate, and resolve secrets from ``environ``.

    ``overrides`` maps dotted keys (``"server.port"``) to values, applied last (CLI flags).
    Raises :class:`ConfigError` listing every problem found, each naming its key.
    """
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {str(p)!r} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
        source = str(p)
    origins: dict[str, str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        parts = [s.lower() for s in name[len(ENV_PREFIX) :].split("__")]
        if any(not s for s in parts):
            raise ConfigError(f"environment variable {name}: empty key segment")
        _set_path(data, parts, _parse_env_value(raw), name)
        origins[".".join(parts)] = name
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted.split("."), value, dotted)
        origins[dotted] = "command line"
    reader = _Reader(data, "", origins)
    settings = _build(reader, environ, source)
    reader.finish()
    if reader.errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(reader.errors))
    return settings


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(data: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(parts[: i + 1])} is not a table")
        node = child
    node[parts[-1]] = value


_MISSING: Any = object()


class _Reader:
    """Reads one TOML table, recording errors with the full key path."""

    def __init__(
        self,
        data: Any,
        path: str,
        origins: Mapping[str, str],
        errors: list[str] | None = None,
    ) -> None:
        self.path = path
        self.origins = origins
        self.errors: list[str] = errors if errors is not None else []
        self.children: list[_Reader] = []
        self.seen: set[str] = set()
        if isinstance(data, dict):
            self.data: dict[str, Any] = data
        else:
            self.data = {}
            self.error(path, f"expected a table, got {_describe(data)}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, key: str, message: str) -> None:
        origin = self.origins.get(key)
        suffix = f" (from {origin})" if origin else ""
        self.errors.append(f"{key or '<top>'}: {message}{suffix}")

    def raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name, _MISSING)

    def table(self, name: str) -> _Reader:
        raw = self.raw(name)
        child = _Reader({} if raw is _MISSING else raw, self.key(name), self.origins, self.errors)
        self.children.append(child)
        return child

    def tables(self, name: str) -> list[tuple[str, _Reader]]:
        """Each sub-table of ``name`` (``[providers.X]``), as (X, reader)."""
        parent = self.table(name)
        out = []
        for sub in list(parent.data):
            out.append((sub, parent.table(sub)))
        return out

    def string(self, name: str, default: Any = _MISSING, *, choices: tuple[str, ...] = ()) -> Any:
        raw = self.raw(name)
        if raw is _MISSING:
            if default is _MISSING:
                self.error(self.key(name), "is required")
                return ""
            return default
        if not isinstance(raw, str):
            self.error(self.key(name), f"expected a string, got {_describe(raw)}")
            return default if default is not _MISSING else ""
        if choices and raw not in choices:
            self.error(self.key(name), f"must be one of {', '.join(choices)}; got {raw!r}")
            return default if default is not _MISSING else raw
        return raw

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self.raw(name)
        if raw is _MISSING:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.error(self.key(name), f"expected an integer, got {_describe(raw)}")
            return default
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.error(self.key(name), f"must be {bound}; got {raw}")
            return default
        return raw

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.raw(name)
        if raw is _MISSING:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            self.error(self.key(name), f"expected a number, got {_describe(raw)}")
            return default
        if raw < minimum:
            self.error(self.key(name), f"must be >= {minimum}; got {raw}")
            return default
        return float(raw)

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.raw(name)
        if raw is _MISSING:
            return default
        if not isinstance(raw, bool):
            self.error(self.key(name), f"expected true or false, got {_describe(raw)}")
            return default
        return raw

    def string_list(self, name: str) -> tuple[str, ...] | None:
        raw = self.raw(name)
        if raw is _MISSING:
            return None
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            self.error(self.key(name), f"expected a list of strings, got {_describe(raw)}")
            return None
        return tuple(raw)

    def finish(self) -> None:
        for child in self.children:
            child.finish()
        for extra in sorted(set(self.data) - self.seen):
            self.error(self.key(extra), "unknown key")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------- building

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _check_name(reader: _Reader, key: str, name: str) -> None:
    if not name or not set(name) <= _NAME_CHARS:
        reader.error(key, "names may use only letters, digits, '-' and '_'")


def _build(r: _Reader, environ: Mapping[str, str], source: str) -> Settings:
    server = _server(r.table("server"))
    local_llm = _local_llm(r.table("local_llm"))
    settings = Settings(
        server=server,
        relay=_relay(r.table("relay")),
        store=_store(r.table("store")),
        state=_state(r.table("state")),
        cluster=_cluster(r.table("cluster"), environ),
        providers=_providers(r),
        accounts=_accounts(r, environ),
        llm=_llms(r, environ),
        local_llm=local_llm,
        apps=_apps(r, environ) or default_apps(server.host),
        speech=_speech(r.table("speech")),
        realtime=_realtime(r.table("realtime"), local_llm),
        source=source,
    )
    _check_default_gateway(r, settings)
    _check_default_model(r, settings)
    return settings


def _check_default_model(r: _Reader, settings: Settings) -> None:
    """``realtime.default_model`` must name a model a session can run: checked at start
    rather than refused in every session."""
    model = settings.realtime.default_model
    provider, sep, name = model.partition("/")
    known = ("voxgate", "openai", *settings.llm)
    embedded = ("voxgate/echo", "voxgate/local")
    if model not in embedded and not (sep and name and provider in known[1:]):
        r.error(
            "realtime.default_model",
            f"must be provider/model with a known provider ({', '.join(known)}); got {model!r}",
        )


def _check_default_gateway(r: _Reader, settings: Settings) -> None:
    name = settings.server.default_gateway
    key = "server.default_gateway"
    if name is not None:
        account, _, gateway = name.partition("/")
        if settings.gateway(account, gateway) is None:
            r.error(key, f"names no configured gateway: {name!r} (expected ACCOUNT/GATEWAY)")
        return
    if len(settings.all_gateways()) > 1 and settings.gateway("local", "default") is None:
        r.error(
            key,
            "is required when several gateways are configured and none is local/default "
            "(it picks the gateway of /v1/tts and /v1/stt)",
        )


def _speech(sp: _Reader) -> SpeechSettings:
    d = SpeechSettings()
    engines = {}
    for name, t in sp.tables("engines"):
        _check_name(sp, sp.key(f"engines.{name}"), name)
        engines[name] = _engine(t, name)
    speech = SpeechSettings(
        default_tts=sp.string("default_tts", d.default_tts),
        default_stt=sp.string("default_stt", d.default_stt),
        workers=sp.integer("workers", d.workers, minimum=1, maximum=64),
        nice=sp.integer("nice", d.nice, minimum=0, maximum=19),
        preload=sp.string_list("preload") or (),
        cache_dir=sp.string("cache_dir", d.cache_dir),
        engines=engines,
        aliases=_aliases(sp.table("aliases")),
    )
    tts, stt = speech_engine_names(speech)
    for alias, target in speech.aliases.items():
        key = sp.key(f"aliases.{alias}")
        if alias in tts or alias in stt:
            sp.error(key, f"{alias!r} is an engine's own name; an alias must be another name")
        elif target not in tts and target not in stt:
            sp.error(key, f"names no engine: {target!r} ({', '.join(sorted(tts | stt))})")
    if speech.default_tts not in tts:
        sp.error(sp.key("default_tts"), f"is not a TTS engine ({', '.join(sorted(tts))})")
    if speech.default_stt not in stt:
        sp.error(sp.key("default_stt"), f"is not an STT engine ({', '.join(sorted(stt))})")
    for name in speech.preload:
        if name not in tts and name not in stt:
            sp.error(sp.key("preload"), f"unknown engine {name!r}")
    return speech


def _aliases(t: _Reader) -> dict[str, str]:
    return {name: t.string(name) for name in list(t.data)}


def _realtime(rt: _Reader, local_llm: LocalLLMSettings) -> RealtimeSettings:
    d = RealtimeSettings()
    # the embedded model answers when it is installed; otherwise the echo does
    default = "voxgate/local" if local_llm_installed(local_llm) else d.default_model
    return RealtimeSettings(
        default_model=rt.string("default_model", default),
        openai_names=rt.string("openai_names", d.openai_names, choices=OPENAI_NAMES),
    )


def _engine(t: _Reader, name: str) -> EngineSettings:
    kind = t.string("type", name if name in ENGINE_OPTIONS else _MISSING)
    schema = ENGINE_OPTIONS.get(kind)
    if schema is None:
        t.error(t.key("type"), f"must be one of {', '.join(ENGINE_OPTIONS)}; got {kind!r}")
        return EngineSettings(name=name, type=kind)
    options: dict[str, Any] = {}
    for option, spec in schema.items():
        if t.raw(option) is _MISSING:
            continue
        if spec is int:
            options[option] = t.integer(option, 0, minimum=1)
        elif spec is float:
            options[option] = t.number(option, 0.0)
        elif spec is dict:
            table = t.table(option)
            options[option] = {k: table.string(k) for k in list(table.data)}
        elif isinstance(spec, tuple):
            options[option] = t.string(option, choices=spec)
        else:
            options[option] = t.string(option)
    return EngineSettings(name=name, type=kind, options=options)


def _server(s: _Reader) -> ServerSettings:
    d = ServerSettings()
    server = ServerSettings(
        host=s.string("host", d.host),
        port=s.integer("port", d.port, minimum=0, maximum=65535),
        log_format=s.string("log_format", d.log_format, choices=("text", "json")),
        log_level=s.string("log_level", d.log_level, choices=("debug", "info", "warning", "error")),
        allow_unauthenticated=s.boolean("allow_unauthenticated", d.allow_unauthenticated),
        tls_cert=s.string("tls_cert", None),
        tls_key=s.string("tls_key", None),
        shutdown_timeout_seconds=s.number("shutdown_timeout_seconds", d.shutdown_timeout_seconds),
        drain_seconds=s.number("drain_seconds", d.drain_seconds, minimum=0),
        node=s.string("node", None),
        advertise_url=s.string("advertise_url", None),
        default_gateway=s.string("default_gateway", None),
    )
    if (server.tls_cert is None) != (server.tls_key is None):
        s.error(s.key("tls_cert"), "tls_cert and tls_key must be given together")
    return server


def _relay(rl: _Reader) -> RelaySettings:
    d = RelaySettings()
    return RelaySettings(
        buffer_bytes=rl.integer("buffer_bytes", d.buffer_bytes, minimum=16 * 1024),
        connect_timeout_seconds=rl.number(
            "connect_timeout_seconds", d.connect_timeout_seconds, minimum=0.1
        ),
        max_upstream_message_bytes=rl.integer(
            "max_upstream_message_bytes", d.max_upstream_message_bytes, minimum=1024
        ),
        capture_max_frames=rl.integer("capture_max_frames", d.capture_max_frames),
        capture_max_bytes=rl.integer("capture_max_bytes", d.capture_max_bytes, minimum=64),
    )


def _store(st: _Reader) -> StoreSettings:
    d = StoreSettings()
    store = StoreSettings(
        url=st.string("url", d.url),
        batch_size=st.integer("batch_size", d.batch_size, minimum=1, maximum=10_000),
        queue_max=st.integer("queue_max", d.queue_max, minimum=1),
        spill_path=st.string("spill_path", None),
    )
    if not store.url.startswith(("sqlite://", "postgresql://", "postgres://")):
        st.error(st.key("url"), "must start with sqlite:// or postgresql://")
    return store


def _state(sa: _Reader) -> StateSettings:
    d = StateSettings()
    state = StateSettings(
        url=sa.string("url", d.url),
        lease_seconds=sa.number("lease_seconds", d.lease_seconds, minimum=1),
    )
    if not state.url.startswith(("memory://", "redis://", "rediss://")):
        sa.error(sa.key("url"), "must start with memory:// or redis://")
    return state


def _cluster(c: _Reader, environ: Mapping[str, str]) -> ClusterSettings:
    env = c.string("secret_env", None)
    return ClusterSettings(secret=Secret(env=env, value=environ.get(env) if env else None))


def _providers(r: _Reader) -> dict[str, ProviderSettings]:
    providers: dict[str, ProviderSettings] = {}
    for name, p in r.tables("providers"):
        _check_name(p, p.path, name)
        providers[name] = _provider(p, name)
    return providers


def _accounts(r: _Reader, environ: Mapping[str, str]) -> dict[str, AccountSettings]:
    accounts: dict[str, AccountSettings] = {}
    for acc_name, acc in r.tables("accounts"):
        _check_name(acc, acc.path, acc_name)
        gateways = {}
        for gw_name, gw in acc.tables("gateways"):
            _check_name(gw, gw.path, gw_name)
            gateways[gw_name] = _gateway(gw, acc_name, gw_name, environ)
        accounts[acc_name] = AccountSettings(name=acc_name, gateways=gateways)
    # account "local" with gateway "default" always exists, beside configured ones
    if DEFAULT_ACCOUNT not in accounts:
        accounts[DEFAULT_ACCOUNT] = default_account()
    elif DEFAULT_GATEWAY not in accounts[DEFAULT_ACCOUNT].gateways:
        gws = dict(accounts[DEFAULT_ACCOUNT].gateways)
        gws[DEFAULT_GATEWAY] = GatewaySettings(account=DEFAULT_ACCOUNT, name=DEFAULT_GATEWAY)
        accounts[DEFAULT_ACCOUNT] = AccountSettings(name=DEFAULT_ACCOUNT, gateways=gws)
    return accounts


def _llms(r: _Reader, environ: Mapping[str, str]) -> dict[str, LLMSettings]:
    llm = {}
    for name, t in r.tables("llm"):
        api_key = None
        if t.raw("api_key_env") is not _MISSING:
            env = t.string("api_key_env")
            api_key = Secret(env=env, value=environ.get(env))
        d = LLMSettings(name=name, base_url="")
        llm[name] = LLMSettings(
            name=name,
            base_url=t.string("base_url"),
            api_key=api_key,
            connect_timeout_seconds=t.number(
                "connect_timeout_seconds", d.connect_timeout_seconds, minimum=0.1
            ),
            read_timeout_seconds=t.number(
                "read_timeout_seconds", d.read_timeout_seconds, minimum=0.1
            ),
        )
    return llm


def _local_llm(t: _Reader) -> LocalLLMSettings:
    d = LocalLLMSettings()
    model = t.string("model", d.model)
    if model not in LOCAL_MODELS and not model.endswith(".gguf"):
        t.error(
            t.key("model"),
            f"must be one of {', '.join(LOCAL_MODELS)} or the path of a .gguf file; got {model!r}",
        )
    return LocalLLMSettings(
        model=model,
        threads=t.integer("threads", d.threads, minimum=1, maximum=256),
        contexts=t.integer("contexts", d.contexts, minimum=1, maximum=64),
        context_tokens=t.integer("context_tokens", d.context_tokens, minimum=512, maximum=131072),
        judge_alone=t.boolean("judge_alone", d.judge_alone),
        instructions=t.string("instructions", d.instructions),
    )


def _apps(r: _Reader, environ: Mapping[str, str]) -> dict[str, AppSettings]:
    apps = {}
    for name, t in r.tables("apps"):
        env = t.string("secret_env")
        apps[name] = AppSettings(name=name, secret=Secret(env=env, value=environ.get(env)))
    return apps


def _provider(p: _Reader, name: str) -> ProviderSettings:
    url = p.string("url", None)
    if url is not None and not url.startswith(("ws://", "wss://")):
        p.error(p.key("url"), f"must be a ws:// or wss:// URL; got {url!r}")
    auth = None
    if p.raw("auth") is not _MISSING:
        a = p.table("auth")
        auth = ProviderAuth(
            header=a.string("header", None),
            format=a.string("format", "{key}"),
            query=a.string("query", None),
        )
        if (auth.header is None) == (auth.query is None):
            a.error(a.path, "give exactly one of header or query")
        if "{key}" not in auth.format:
            a.error(a.key("format"), "must contain {key}")
    query_defaults = None
    if p.raw("query_defaults") is not _MISSING:
        q = p.table("query_defaults")
        query_defaults = {k: q.string(k) for k in list(q.data)}
    return ProviderSettings(
        name=name,
        url=url,
        auth=auth,
        paths=p.string_list("paths"),
        forward_headers=p.string_list("forward_headers"),
        query_defaults=query_defaults,
        model_param=p.string("model_param", None),
    )


def _limits(r: _Reader, base: Limits) -> Limits:
    """Limits read from ``r``, each key defaulting to ``base``'s value."""
    return Limits(
        max_connections=r.integer("max_connections", base.max_connections, minimum=1),
        messages_per_minute=r.integer("messages_per_minute", base.messages_per_minute, minimum=1),
        max_message_bytes=r.integer("max_message_bytes", base.max_message_bytes, minimum=16),
        max_session_seconds=r.number("max_session_seconds", base.max_session_seconds, minimum=1),
        idle_seconds=r.number("idle_seconds", base.idle_seconds, minimum=1),
        heartbeat_seconds=r.number("heartbeat_seconds", base.heartbeat_seconds, minimum=1),
        max_text_chars=r.integer("max_text_chars", base.max_text_chars, minimum=1),
        max_audio_chunk_bytes=r.integer(
            "max_audio_chunk_bytes", base.max_audio_chunk_bytes, minimum=2
        ),
    )


def _secret(r: _Reader, environ: Mapping[str, str]) -> Secret:
    env = r.string("env", None)
    value = r.string("value", None)
    if env is None and value is None:
        r.error(r.path, "give env (the name of an environment variable) or value")
    if env is not None and value is not None:
        r.error(r.path, "give env or value, not both")
    return Secret(env=env, value=environ.get(env) if env is not None else value)


def _gateway(g: _Reader, account: str, name: str, environ: Mapping[str, str]) -> GatewaySettings:
    limits = _limits(g.table("limits"), Limits())
    tokens: list[TokenSettings] = []
    raw_tokens = g.raw("tokens")
    if raw_tokens is not _MISSING:
        if not isinstance(raw_tokens, list):
            g.error(g.key("tokens"), f"expected a list of tables, got {_describe(raw_tokens)}")
            raw_tokens = []
        names: set[str] = set()
        for i, raw in enumerate(raw_tokens):
            t = _Reader(raw, f"{g.key('tokens')}[{i}]", g.origins, g.errors)
            g.children.append(t)
            tname = t.string("name")
            if tname in names:
                t.error(t.key("name"), f"duplicate token name {tname!r}")
            names.add(tname)
            secret = _secret(t, environ)
            tok_limits = (
                _limits(t.table("limits"), limits) if t.raw("limits") is not _MISSING else None
            )
            tokens.append(TokenSettings(name=tname, secret=secret, limits=tok_limits))
    keys = {prov: _secret(k, environ) for prov, k in g.tables("keys")}
    return GatewaySettings(
        account=account,
        name=name,
        tokens=tuple(tokens),
        keys=keys,
        limits=limits,
        capture_payloads=g.boolean("capture_payloads", False),
    )
