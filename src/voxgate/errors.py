"""The one exception hierarchy of voxgate.

::

    VoxgateError
    ├── ConfigError                 settings file or environment is invalid (names the key)
    ├── LocalProtocolError          we were asked to do something the protocol forbids
    ├── RemoteProtocolError         a peer sent something the protocol forbids
    ├── GatewayRejection            a request is refused before a WebSocket upgrade
    │   ├── NotFound                unknown account, gateway or provider (HTTP 404)
    │   ├── AuthenticationFailed    missing or wrong gateway token (HTTP 401)
    │   ├── LimitExceeded           over a limit at connect time (HTTP 429)
    │   ├── BadRequest              malformed path or parameters (HTTP 400)
    │   ├── StateUnavailable        the shared state server is down (HTTP 503)
    │   └── Draining                the node is shutting down (HTTP 503)
    ├── UpstreamError               the provider could not be reached or refused (HTTP 502)
    ├── SfuError                    a media-server request refused (spec/sfu.md error codes)
    └── StoreError                  the usage store failed

Third-party exceptions (aiohttp, sqlite3, OSError) are translated into these at the
boundary where they happen. The ``public_message`` of an error is safe to send to a
peer; ``str(exc)`` may contain internal detail and goes to logs only.
"""

from __future__ import annotations


class VoxgateError(Exception):
    """Base class of every error voxgate raises on purpose."""

    #: Stable machine-readable code sent to peers.
    code: str = "internal_error"

    def __init__(self, message: str, *, public_message: str | None = None) -> None:
        super().__init__(message)
        self.public_message = public_message if public_message is not None else message


class ConfigError(VoxgateError):
    """The configuration is invalid. The message names the offending key."""

    code = "invalid_config"


class LocalProtocolError(VoxgateError):
    code = "local_protocol_error"


class RemoteProtocolError(VoxgateError):
    code = "protocol_error"


class GatewayRejection(VoxgateError):
    """A request refused before the upgrade; ``status`` is the HTTP status to answer."""

    status: int = 400
    code = "bad_request"


class NotFound(GatewayRejection):
    status = 404
    code = "not_found"


class AuthenticationFailed(GatewayRejection):
    status = 401
    code = "unauthorized"


class LimitExceeded(GatewayRejection):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class BadRequest(GatewayRejection):
    status = 400
    code = "bad_request"


class StateUnavailable(GatewayRejection):
    """The shared state server (Redis) did not answer: no new session can begin."""

    status = 503
    code = "state_unavailable"


class Draining(GatewayRejection):
    """The node is shutting down: new sessions go to another node."""

    status = 503
    code = "draining"


class UpstreamError(VoxgateError):
    """The upstream refused the handshake, was unreachable or timed out.

    ``upstream_status`` is the HTTP status the upstream answered, if it answered.
    """

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        upstream_status: int | None = None,
        public_message: str | None = None,
    ) -> None:
        super().__init__(message, public_message=public_message)
        self.reason = reason
        self.upstream_status = upstream_status


class StoreError(VoxgateError):
    code = "store_error"


class SfuError(VoxgateError):
    """A media-server request refused; ``code`` is one of the spec's ``errorCode``s."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
