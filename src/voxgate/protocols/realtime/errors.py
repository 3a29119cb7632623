"""The error a client event earns: rendered as OpenAI's ``error`` event, the session goes on."""

from __future__ import annotations

from voxgate.errors import RemoteProtocolError


class ClientEventError(RemoteProtocolError):
    """A client event refused; ``param`` names the offending field (``session.voice``).

    ``kind`` is OpenAI's error ``type`` (``invalid_request_error`` for anything the
    client sent wrong, ``server_error`` for our own failures).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.event_id = event_id
        self.kind = kind
