"""The provider table and upstream request building (sans-I/O).

Each provider is one :class:`Provider` entry: where its realtime endpoint lives, how
a key reaches it, which paths and headers pass through, and where a client may put
its own key. Built-in entries are in :data:`BUILTIN_PROVIDERS`; ``[providers.NAME]``
config entries override or add to them (:func:`build_registry`).
"""

from __future__ import annotations

import fnmatch
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import quote, urlsplit

from voxgate.errors import BadRequest, ConfigError
from voxgate.settings import ProviderAuth, Settings


@dataclass(frozen=True)
class Provider:
    name: str
    #: ``ws://`` or ``wss://`` base; a client path is appended after a ``/``.
    base_url: str
    auth: ProviderAuth
    #: Path used when the client gives none ("" for the base URL itself).
    default_path: str = ""
    #: Paths used when the client gives none but its query has the parameter:
    #: (parameter, path) pairs, the first present wins (ElevenLabs' ``agent_id``).
    query_paths: tuple[tuple[str, str], ...] = ()
    #: Glob patterns a client path must match; empty means no path may be given.
    paths: tuple[str, ...] = ()
    #: Client headers that carry the client's own key, with the prefix to strip.
    key_headers: tuple[tuple[str, str], ...] = ()
    #: Query parameters that carry the client's own key (left in place upstream).
    key_query: tuple[str, ...] = ()
    #: Query parameters that carry the client's own key in a place the provider does
    #: not read: removed, and the key given the provider's way (Google's ``api_key``).
    moved_key_query: tuple[str, ...] = ()
    #: Subprotocol prefixes carrying the client's own key (``openai-insecure-api-key.``).
    key_subprotocols: tuple[str, ...] = ()
    #: A subprotocol entry whose *next* entry is the key (Deepgram's ``token, <key>``).
    key_subprotocol_pair: str | None = None
    #: Client headers passed upstream as they are (besides the key).
    forward_headers: tuple[str, ...] = ()
    #: Query parameters added when the client did not give them.
    query_defaults: Mapping[str, str] = field(default_factory=dict)
    #: Query defaults a client header stands for: not added when the client sent that
    #: header (Cartesia's ``cartesia_version`` query and ``Cartesia-Version`` header).
    default_headers: Mapping[str, str] = field(default_factory=dict)
    #: Query parameter naming the model, for usage records.
    model_param: str | None = "model"
    #: Which provider-usage reader applies: "openai", "gemini" or None.
    usage: str | None = None


BUILTIN_PROVIDERS: Mapping[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            name="openai",
            base_url="wss://api.openai.com/v1/realtime",
            auth=ProviderAuth(header="Authorization", format="Bearer {key}"),
            key_headers=(("authorization", "Bearer "),),
            key_subprotocols=("openai-insecure-api-key.",),
            forward_headers=("OpenAI-Beta", "OpenAI-Organization", "OpenAI-Project"),
            usage="openai",
        ),
        Provider(
            name="google",
            base_url="wss://generativelanguage.googleapis.com",
            default_path="ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
            paths=("ws/google.ai.generativelanguage.*",),
            auth=ProviderAuth(query="key"),
            key_headers=(("x-goog-api-key", ""),),
            key_query=("key", "access_token"),
            # Cloudflare's example puts the key in api_key: it goes upstream as key
            moved_key_query=("api_key",),
            usage="gemini",
        ),
        Provider(
            name="cartesia",
            base_url="wss://api.cartesia.ai",
            default_path="tts/websocket",
            paths=("tts/websocket", "stt/websocket"),
            auth=ProviderAuth(query="api_key"),
            # Cartesia's SDKs send the key as a bearer token
            key_headers=(("x-api-key", ""), ("authorization", "Bearer ")),
            key_query=("api_key", "access_token"),
            forward_headers=("Cartesia-Version",),
            query_defaults={"cartesia_version": "2025-04-16"},
            default_headers={"cartesia_version": "Cartesia-Version"},
            model_param="model_id",
        ),
        Provider(
            name="elevenlabs",
            base_url="wss://api.elevenlabs.io/v1",
            paths=("*",),
            query_paths=(("agent_id", "convai/conversation"),),
            auth=ProviderAuth(header="xi-api-key"),
            key_headers=(("xi-api-key", ""),),
            key_subprotocols=("xi-api-key.",),
            model_param="model_id",
        ),
        Provider(
            name="deepgram",
            base_url="wss://api.deepgram.com/v1",
            default_path="listen",
            paths=("listen", "speak"),
            auth=ProviderAuth(header="Authorization", format="Token {key}"),
            key_headers=(("authorization", "Token "), ("authorization", "Bearer ")),
            key_subprotocol_pair="token",
        ),
        Provider(
            name="fal",
            base_url="wss://fal.run",
            paths=("*",),
            auth=ProviderAuth(header="Authorization", format="Key {key}"),
            key_headers=(("authorization", "Key "),),
            key_subprotocols=("fal-api-key.",),
            model_param=None,
        ),
    )
}

#: Names a provider may not take: they are addresses of the server itself.
RESERVED_PROVIDER_NAMES = frozenset({"logs"})


def build_registry(settings: Settings) -> dict[str, Provider]:
    """Merge built-in providers with the config's ``[providers.*]`` entries.

    Raises :class:`ConfigError` for a custom provider without a URL, a reserved name,
    or a gateway key for a provider that does not exist.
    """
    registry = dict(BUILTIN_PROVIDERS)
    errors: list[str] = []
    for name, ps in settings.providers.items():
        if name in RESERVED_PROVIDER_NAMES:
            errors.append(f"providers.{name}: the name {name!r} is reserved")
            continue
        base = registry.get(name)
        if base is None:
            if ps.url is None:
                errors.append(f"providers.{name}.url: is required for a custom provider")
                continue
            base = Provider(
                name=name,
                base_url=ps.url,
                auth=ps.auth or ProviderAuth(header="Authorization", format="Bearer {key}"),
                paths=("*",),
            )
        registry[name] = replace(
            base,
            base_url=ps.url or base.base_url,
            auth=ps.auth or base.auth,
            paths=ps.paths if ps.paths is not None else base.paths,
            forward_headers=(
                ps.forward_headers if ps.forward_headers is not None else base.forward_headers
            ),
            query_defaults=(
                ps.query_defaults if ps.query_defaults is not None else base.query_defaults
            ),
            model_param=ps.model_param or base.model_param,
        )
    for gw in settings.all_gateways():
        for prov in gw.keys:
            if prov not in registry:
                errors.append(
                    f"accounts.{gw.account}.gateways.{gw.name}.keys.{prov}: unknown provider "
                    f"(known: {', '.join(sorted(registry))})"
                )
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return registry


@dataclass(frozen=True)
class UpstreamRequest:
    """Everything needed to dial the upstream; holds the key, so never log it whole."""

    url: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]

    def redacted_url(self) -> str:
        return redact_query(self.url)


_PATH_CHARS = frozenset(string.ascii_letters + string.digits + "-._~%:@!$&'()*+,;=/")


def validate_path(provider: Provider, path: str, query_string: str = "") -> str:
    """Return the upstream path for a client path, or raise :class:`BadRequest`.

    A path may repeat the end of the provider's base URL: SDKs that append their own
    ``/v1/listen`` to a host dial ``…/deepgram/v1/listen``, and the OpenAI SDK dials
    ``…/openai/realtime``; both mean the same as ``listen`` and no path.
    """
    path = _without_base_suffix(provider.base_url, path)
    if not path:
        names = _query_names(query_string)
        return next((p for q, p in provider.query_paths if q in names), provider.default_path)
    if not provider.paths:
        raise BadRequest(f"provider {provider.name!r} takes no path after its name")
    if not set(path) <= _PATH_CHARS:
        raise BadRequest("path contains characters that are not allowed")
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise BadRequest("path has an empty, '.' or '..' segment")
    if not any(fnmatch.fnmatchcase(path, pat) for pat in provider.paths):
        raise BadRequest(
            f"path {path!r} is not served by provider {provider.name!r} "
            f"(allowed: {', '.join(provider.paths)})"
        )
    return path


def _without_base_suffix(base_url: str, path: str) -> str:
    """``path`` less its longest start that repeats the end of ``base_url``'s path."""
    base = [s for s in urlsplit(base_url).path.split("/") if s]
    segments = path.split("/")
    for k in range(min(len(base), len(segments)), 0, -1):
        if base[-k:] == segments[:k]:
            return "/".join(segments[k:])
    return path


def build_upstream_request(
    provider: Provider,
    *,
    path: str,
    query_string: str,
    client_headers: Iterable[tuple[str, str]],
    upstream_subprotocols: tuple[str, ...],
    client_key: str | None,
    stored_key: str | None,
    client_key_param: str | None = None,
    drop_query: Iterable[str] = (),
) -> UpstreamRequest:
    """Build the upstream URL, headers and subprotocols.

    The client's query string passes through, less ``drop_query`` (a gateway token
    sent where a key goes); query defaults and an injected key are appended. The
    client's own key wins over the stored one. A client key that came in the query
    stays there, unless it came in one of the provider's ``moved_key_query`` (``api_key``
    for Google's ``key``): then it moves to where the provider takes it. Only the
    provider's ``forward_headers`` pass through from the client.
    """
    upstream_path = validate_path(provider, path, query_string)
    url = provider.base_url.rstrip("/")
    if upstream_path:
        url += "/" + upstream_path
    auth = provider.auth
    drop = set(drop_query)
    # a parameter that also carried a gateway token is dropped whole: the client's key
    # from it is then given the provider's way, like a moved one
    key_in_place = (
        client_key_param is not None
        and client_key_param not in provider.moved_key_query
        and client_key_param not in drop
    )
    if client_key_param is not None and not key_in_place:
        drop.add(client_key_param)
    query = _drop_params(query_string, drop) if drop else query_string
    present = _query_names(query)
    sent = {k.lower() for k, _ in client_headers}
    extra = [
        (k, v)
        for k, v in provider.query_defaults.items()
        if k not in present and provider.default_headers.get(k, "").lower() not in sent
    ]
    key = client_key if client_key is not None else stored_key
    headers: list[tuple[str, str]] = []
    if key is not None and not key_in_place:
        if auth.query is not None:
            if auth.query in present:
                query = _drop_params(query, {auth.query})
            extra.append((auth.query, key))
        elif auth.header is not None:
            headers.append((auth.header, auth.format.replace("{key}", key)))
    forward = {h.lower() for h in provider.forward_headers}
    headers.extend((k, v) for k, v in client_headers if k.lower() in forward)
    if extra:
        tail = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in extra)
        query = f"{query}&{tail}" if query else tail
    if query:
        url += "?" + query
    return UpstreamRequest(url=url, headers=tuple(headers), subprotocols=upstream_subprotocols)


def _query_names(query: str) -> set[str]:
    return {part.split("=", 1)[0] for part in query.split("&") if part}


def _drop_params(query: str, names: set[str]) -> str:
    return "&".join(p for p in query.split("&") if p and p.split("=", 1)[0] not in names)


#: Query parameters whose values are secrets, redacted wherever a URL is logged.
SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "access_token", "token", "xi-api-key"})


def redact_query(url: str) -> str:
    """``url`` with the values of secret-bearing query parameters replaced by ``***``."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts = []
    for p in query.split("&"):
        name = p.split("=", 1)[0]
        parts.append(f"{name}=***" if name.lower() in SECRET_QUERY_PARAMS else p)
    return base + "?" + "&".join(parts)
