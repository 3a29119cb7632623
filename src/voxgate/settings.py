"""Settings: one frozen object, built once in the composition root and passed down.

:func:`voxgate.config.load_settings` builds it from a TOML file plus ``VOXGATE_*``
overrides. Secrets are resolved there; here they live in :class:`Secret` values whose
``repr`` never shows the value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ACCOUNT = "local"
DEFAULT_GATEWAY = "default"


@dataclass(frozen=True)
class Secret:
    """A secret named by environment variable (or, discouraged, written inline)."""

    env: str | None
    value: str | None = field(default=None, repr=False, compare=False)

    @property
    def available(self) -> bool:
        return bool(self.value)

    def describe(self) -> str:
        where = f"${self.env}" if self.env else "inline value"
        return where if self.available else f"{where} (not set)"


@dataclass(frozen=True)
class Limits:
    max_connections: int = 100
    messages_per_minute: int = 6000
    max_message_bytes: int = 1024 * 1024
    max_session_seconds: float = 3600.0
    idle_seconds: float = 300.0
    heartbeat_seconds: float = 30.0
    max_text_chars: int = 20_000
    #: Largest audio chunk a speech client may send in one message.
    max_audio_chunk_bytes: int = 256 * 1024


@dataclass(frozen=True)
class TokenSettings:
    name: str
    secret: Secret
    #: Limits for connections made with this token; ``None`` uses the gateway's.
    limits: Limits | None = None


@dataclass(frozen=True)
class GatewaySettings:
    account: str
    name: str
    tokens: tuple[TokenSettings, ...] = ()
    keys: Mapping[str, Secret] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    capture_payloads: bool = False


@dataclass(frozen=True)
class AccountSettings:
    name: str
    gateways: Mapping[str, GatewaySettings]


@dataclass(frozen=True)
class ProviderAuth:
    """How a provider key is given to an upstream: a header or a query parameter."""

    header: str | None = None
    format: str = "{key}"
    query: str | None = None


@dataclass(frozen=True)
class ProviderSettings:
    """A ``[providers.NAME]`` entry: overrides a built-in provider or declares one.

    ``None`` fields keep the built-in value (or the custom-upstream default).
    """

    name: str
    url: str | None = None
    auth: ProviderAuth | None = None
    paths: tuple[str, ...] | None = None
    forward_headers: tuple[str, ...] | None = None
    query_defaults: Mapping[str, str] | None = None
    model_param: str | None = None


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8780
    log_format: str = "text"
    log_level: str = "info"
    allow_unauthenticated: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    shutdown_timeout_seconds: float = 5.0
    #: On SIGTERM, live sessions get this long to end by themselves before they are
    #: closed with 1012 (service restart); a second SIGTERM ends them at once.
    drain_seconds: float = 30.0
    #: This node's name in the cluster (sessions API, usage records, the SFU directory).
    #: ``None``: ``HOST:PORT`` of the address it listens on.
    node: str | None = None
    #: The base URL other nodes reach this one at (node-to-node SFU feeds).
    #: ``None``: ``http://HOST:PORT`` of the address it listens on.
    advertise_url: str | None = None
    #: ``account/gateway`` whose tokens, keys and limits apply to addresses that name
    #: no gateway (``/v1/tts``, ``/v1/stt``). ``None``: the only gateway, else local/default.
    default_gateway: str | None = None


@dataclass(frozen=True)
class RelaySettings:
    buffer_bytes: int = 1024 * 1024
    connect_timeout_seconds: float = 10.0
    max_upstream_message_bytes: int = 16 * 1024 * 1024
    capture_max_frames: int = 1000
    capture_max_bytes: int = 64 * 1024


@dataclass(frozen=True)
class StoreSettings:
    url: str = "sqlite:///./voxgate.db"
    #: Records written together in one transaction, at most.
    batch_size: int = 500
    #: Records held in memory while the store is down; past this they go to the spill file.
    queue_max: int = 100_000
    #: Where records wait, one JSON line each, while the store is down and the memory
    #: queue is full; replayed when it returns. ``None``: ``voxgate-spill-NODE.jsonl``
    #: beside the working directory.
    spill_path: str | None = None


@dataclass(frozen=True)
class StateSettings:
    url: str = "memory://"
    #: A node's slots, live sessions and directory entries lapse this long after it
    #: stops renewing them (a node that died).
    lease_seconds: float = 30.0


@dataclass(frozen=True)
class ClusterSettings:
    #: Authenticates node-to-node requests (SFU feeds); the same on every node.
    #: Named by environment variable (``secret_env``), never written in the file.
    secret: Secret = field(default_factory=lambda: Secret(env=None, value=None))


@dataclass(frozen=True)
class LLMSettings:
    name: str
    base_url: str
    api_key: Secret | None = None
    #: Longest wait for the endpoint's TCP (and TLS) connection.
    connect_timeout_seconds: float = 10.0
    #: Longest wait for the answer's headers, and then for each next piece of it.
    read_timeout_seconds: float = 60.0


#: The packaged models ``voxgate/local`` runs (``[local_llm] model``), or a GGUF file's path.
LOCAL_MODELS = ("1.5b", "0.5b", "smollm2")


@dataclass(frozen=True)
class LocalLLMSettings:
    """``[local_llm]``: the embedded language model ``voxgate/local`` (llama.cpp)."""

    #: ``1.5b`` (Qwen2.5-Coder-1.5B-Instruct), ``0.5b``, ``smollm2`` (SmolLM2-135M, for
    #: tests: too weak to converse), or the path of a GGUF file with a ChatML template.
    model: str = "1.5b"
    #: Threads one decode step uses.
    threads: int = 2
    #: Conversations decoded side by side (each holds its own KV cache, so a session's
    #: next turn only evaluates what is new); more sessions wait for a free one.
    contexts: int = 4
    #: Tokens of prompt and answer one context holds; longer conversations lose their
    #: oldest turns.
    context_tokens: int = 4096
    #: With tools offered (``tool_choice: auto``), also judge whether to call one on
    #: the user's last turn alone, without the conversation before it (small models stop
    #: calling tools after a few turns answered in words). Costs evaluating the turn's
    #: words a second time; off: the conversation alone decides.
    judge_alone: bool = True
    #: The system prompt when a session gives no instructions.
    instructions: str = (
        "You are a helpful voice assistant. Answer in one or two short spoken sentences, "
        "in plain words: no lists, no Markdown, no emoji."
    )


@dataclass(frozen=True)
class AppSettings:
    name: str
    secret: Secret

    @property
    def open(self) -> bool:
        """The built-in app of a loopback server: no secret at all (see :func:`default_apps`)."""
        return self.secret.env is None and self.secret.value is None


@dataclass(frozen=True)
class EngineSettings:
    """A ``[speech.engines.NAME]`` entry: an engine of ``type`` with typed ``options``."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeechSettings:
    default_tts: str = "piper"
    default_stt: str = "pocketsphinx"
    #: Threads for engine work (synthesis, recognition, VAD).
    workers: int = 2
    #: The nice value of engine threads and processes (the event loop keeps the
    #: server's own): higher gives the loop a core sooner when a frame arrives, and
    #: leaves the engines less of the machine whenever another program computes (at
    #: 10, two busy programs on a 2-core machine kept every spoken turn from being
    #: answered).
    nice: int = 4
    #: Engines loaded at start-up instead of on first use.
    preload: tuple[str, ...] = ()
    #: Where derived model files (the joined whisper model) are kept.
    cache_dir: str = "~/.cache/voxgate"
    engines: Mapping[str, EngineSettings] = field(default_factory=dict)
    #: ``[speech.aliases]``: engine names from other catalogues (SLNG's ``orpheus``,
    #: Deepgram's ``nova-3``…) → the engine that serves them. Overrides the built-in
    #: aliases (``voxgate.engines.registry.BUILTIN_ALIASES``), which name the default
    #: engine of their kind.
    aliases: Mapping[str, str] = field(default_factory=dict)


#: What a bare OpenAI model name (``gpt-realtime``) does: run the agent, or relay.
OPENAI_NAMES = ("agent", "relay")


@dataclass(frozen=True)
class RealtimeSettings:
    """``[realtime]``: how ``ws /v1/realtime?model=…`` treats the model it is given."""

    #: The agent a session runs when the client names no model, or a bare OpenAI name
    #: (``gpt-realtime``) that is not relayed.
    default_model: str = "voxgate/echo"
    #: ``agent``: bare OpenAI realtime names run ``default_model``. ``relay``: they are
    #: relayed to OpenAI when the gateway stores an OpenAI key (else they run the agent).
    openai_names: str = "agent"


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    state: StateSettings = field(default_factory=StateSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    accounts: Mapping[str, AccountSettings] = field(
        default_factory=lambda: {DEFAULT_ACCOUNT: default_account()}
    )
    llm: Mapping[str, LLMSettings] = field(default_factory=dict)
    local_llm: LocalLLMSettings = field(default_factory=LocalLLMSettings)
    #: Media-server apps. With none configured, a loopback server has the open
    #: built-in app ``default`` (see :func:`default_apps`).
    apps: Mapping[str, AppSettings] = field(default_factory=lambda: default_apps("127.0.0.1"))
    speech: SpeechSettings = field(default_factory=SpeechSettings)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    #: Where the settings came from, for start-up messages.
    source: str = "built-in defaults"

    def gateway(self, account: str, gateway: str) -> GatewaySettings | None:
        acc = self.accounts.get(account)
        return acc.gateways.get(gateway) if acc is not None else None

    def speech_gateway(self) -> GatewaySettings:
        """The gateway of addresses that name none (see ``server.default_gateway``)."""
        name = self.server.default_gateway
        if name is not None:
            account, _, gateway = name.partition("/")
            gw = self.gateway(account, gateway)
        else:
            gws = self.all_gateways()
            gw = gws[0] if len(gws) == 1 else self.gateway(DEFAULT_ACCOUNT, DEFAULT_GATEWAY)
        if gw is None:  # config validation makes this unreachable
            raise LookupError("no default gateway")
        return gw

    def all_gateways(self) -> list[GatewaySettings]:
        return [g for a in self.accounts.values() for g in a.gateways.values()]

    def secret_values(self) -> set[str]:
        """Every resolved secret, so the log filter can scrub them as a safety net."""
        out: set[str] = set()
        for gw in self.all_gateways():
            out.update(t.secret.value for t in gw.tokens if t.secret.value)
            out.update(k.value for k in gw.keys.values() if k.value)
        out.update(a.secret.value for a in self.apps.values() if a.secret.value)
        if self.cluster.secret.value:
            out.add(self.cluster.secret.value)
        out.update(m.api_key.value for m in self.llm.values() if m.api_key and m.api_key.value)
        return out

    def warnings(self) -> list[str]:
        """Things that work but are probably not what the operator meant."""
        out: list[str] = []
        for gw in self.all_gateways():
            where = f"accounts.{gw.account}.gateways.{gw.name}"
            for i, tok in enumerate(gw.tokens):
                if not tok.secret.available:
                    out.append(
                        f"{where}.tokens[{i}] ({tok.name}): {tok.secret.describe()}; "
                        "this token matches nothing"
                    )
            for prov, key in gw.keys.items():
                if not key.available:
                    out.append(
                        f"{where}.keys.{prov}: {key.describe()}; clients must bring their own key"
                    )
        return out


def default_apps(host: str) -> dict[str, AppSettings]:
    """The open app ``default`` on a loopback server (no secret); none elsewhere."""
    if not is_loopback(host):
        return {}
    return {"default": AppSettings(name="default", secret=Secret(env=None))}


def default_account() -> AccountSettings:
    gw = GatewaySettings(account=DEFAULT_ACCOUNT, name=DEFAULT_GATEWAY)
    return AccountSettings(name=DEFAULT_ACCOUNT, gateways={DEFAULT_GATEWAY: gw})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
