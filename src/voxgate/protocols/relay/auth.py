"""Reading credentials from a WebSocket handshake (sans-I/O).

A client presents two different secrets:

- the **gateway token**, which proves it may use this gateway: header
  ``voxgate-authorization: Bearer <token>`` (or Cloudflare's ``cf-aig-authorization``),
  or, for browsers, a ``Sec-WebSocket-Protocol`` entry ``voxgate-authorization.<token>``;
- optionally its **own provider key**, in the provider's own header, query parameter
  or a browser subprotocol entry (``openai-insecure-api-key.<key>``, ``xi-api-key.<key>``,
  ``fal-api-key.<key>``, Deepgram's ``token, <key>`` pair).

:func:`read_credentials` separates them and returns the subprotocols that remain for
the upstream. Neither secret is ever forwarded as the client sent it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from voxgate.protocols.relay.providers import Provider

GATEWAY_HEADERS = ("voxgate-authorization", "cf-aig-authorization")
GATEWAY_SUBPROTOCOL_PREFIXES = ("voxgate-authorization.", "cf-aig-authorization.")


@dataclass(frozen=True)
class Credentials:
    gateway_token: str | None
    #: The subprotocol entry that carried the gateway token, if any.
    gateway_entry: str | None
    client_key: str | None
    #: The query parameter that carried the client key, if it came in the query.
    client_key_param: str | None
    #: The subprotocol entry (or entries) that carried the client key.
    key_entries: tuple[str, ...]
    #: Every subprotocol the client offered, in order.
    offered: tuple[str, ...]
    #: What remains to offer upstream: ``offered`` less gateway and key entries.
    upstream_subprotocols: tuple[str, ...]
    #: Query parameters that must not reach the upstream: a gateway token sent where
    #: the provider's key goes (``?api_key=<gateway token>``).
    drop_query: tuple[str, ...] = ()

    @property
    def client_key_in_query(self) -> bool:
        return self.client_key_param is not None

    def __repr__(self) -> str:  # never show secrets
        return (
            f"Credentials(gateway_token={'***' if self.gateway_token else None}, "
            f"client_key={'***' if self.client_key else None}, "
            f"upstream_subprotocols={self.upstream_subprotocols!r})"
        )


def parse_subprotocols(values: Iterable[str]) -> tuple[str, ...]:
    """Split ``Sec-WebSocket-Protocol`` header values into entries."""
    out: list[str] = []
    for value in values:
        out.extend(p.strip() for p in value.split(",") if p.strip())
    return tuple(out)


def bearer(value: str | None) -> str | None:
    """The token in ``Bearer <token>`` (scheme case-insensitive), or a bare token."""
    if value is None:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


def token_from_headers(
    headers: Mapping[str, str], names: Iterable[str] = GATEWAY_HEADERS
) -> str | None:
    """The first bearer token found in ``names`` (case-insensitive ``headers``)."""
    for name in names:
        token = bearer(headers.get(name))
        if token:
            return token
    return None


def _never(_: str) -> bool:
    return False


def read_credentials(
    provider: Provider,
    headers: Mapping[str, str],
    subprotocols: tuple[str, ...],
    query: Mapping[str, str],
    *,
    is_gateway_token: Callable[[str], bool] = _never,
) -> Credentials:
    """Separate the gateway token and the client's own key from the handshake.

    ``headers`` must be case-insensitive (aiohttp's ``CIMultiDictProxy`` is); ``query``
    may repeat a name (aiohttp's ``MultiDictProxy``: its ``items()`` has them all). Every
    credential found where the provider's key may go (its key headers, subprotocol
    entries and query parameters) that ``is_gateway_token`` recognises is the gateway
    token and nothing else: it never becomes the client key, so it never reaches an
    upstream. The client key is the first other credential: headers first, then
    subprotocol entries, then the query.
    """
    token = token_from_headers(headers)
    names = {*provider.key_query, *provider.moved_key_query}
    gateway_entry = None
    keys: list[tuple[str, str | None]] = []  # (credential, query parameter)
    drop: list[str] = []
    key_entries: list[str] = []
    remaining: list[str] = []
    pair_next = False
    for hname, hprefix in provider.key_headers:
        value = headers.get(hname) or ""
        if value[: len(hprefix)].lower() == hprefix.lower() and value[len(hprefix) :].strip():
            keys.append((value[len(hprefix) :].strip(), None))
    for entry in subprotocols:
        if pair_next:
            keys.append((entry, None))
            key_entries.append(entry)
            pair_next = False
            continue
        prefix = next((p for p in GATEWAY_SUBPROTOCOL_PREFIXES if entry.startswith(p)), None)
        if prefix is not None:
            gateway_entry = gateway_entry or entry
            token = token or entry[len(prefix) :] or None
            continue
        kp = next((p for p in provider.key_subprotocols if entry.startswith(p)), None)
        if kp is not None:
            if entry[len(kp) :]:
                keys.append((entry[len(kp) :], None))
            key_entries.append(entry)
            continue
        if provider.key_subprotocol_pair is not None and entry == provider.key_subprotocol_pair:
            key_entries.append(entry)
            pair_next = True
            continue
        if not is_gateway_token(entry):  # a bare token entry is not offered upstream either
            remaining.append(entry)
    # a token in any other query parameter is not the provider's to see: dropped
    drop.extend(k for k, v in query.items() if k not in names and v and is_gateway_token(v))
    # every value of a repeated parameter counts (``?key=own&key=<token>``): items(), not get()
    keys.extend((v, k) for k, v in query.items() if k in names and v)
    key: str | None = None
    key_param: str | None = None
    for value, param in keys:
        if is_gateway_token(value):
            token = token or value
            if param is not None:
                drop.append(param)
        elif key is None:
            key, key_param = value, param
    return Credentials(
        gateway_token=token,
        gateway_entry=gateway_entry,
        client_key=key,
        client_key_param=key_param,
        key_entries=tuple(key_entries),
        offered=subprotocols,
        upstream_subprotocols=tuple(remaining),
        drop_query=tuple(drop),
    )


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison of a presented token with a configured one."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def select_subprotocol(creds: Credentials, upstream_selected: str | None) -> str | None:
    """The subprotocol to answer the client with, or ``None`` if it offered none.

    Browsers fail a handshake whose offered subprotocols are not answered, so when any
    was offered one of them is chosen: the one the upstream selected, else the first
    real protocol the client offered, else the gateway (or key) entry itself.
    """
    if not creds.offered:
        return None
    if upstream_selected and upstream_selected in creds.offered:
        return upstream_selected
    if creds.upstream_subprotocols:
        return creds.upstream_subprotocols[0]
    if creds.gateway_entry is not None:
        return creds.gateway_entry
    return creds.offered[0]
