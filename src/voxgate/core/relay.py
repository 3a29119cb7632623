"""The relay session: counters, limit decisions and the usage record (no I/O).

The transport calls :meth:`RelaySession.client_frame` for every frame the client
sends and :meth:`RelaySession.upstream_frame` for every frame the upstream sends,
passing the current monotonic time. A non-zero return from ``client_frame`` is the
close code the transport must close the session with; the frame must not be relayed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from voxgate.core.limits import CloseCode, TokenBucket
from voxgate.core.records import SessionCapture, UsageRecord
from voxgate.protocols.relay.capture import Capture
from voxgate.protocols.relay.usage import UsageMeter
from voxgate.settings import Limits


@dataclass(frozen=True)
class SessionInfo:
    """Who and what a session is; its fields open the session's :class:`UsageRecord`."""

    session_id: str
    account: str
    gateway: str
    provider: str
    model: str | None
    token_name: str | None
    client_address: str | None
    kind: str = "relay"
    transport: str = "websocket"


class RelaySession:
    __slots__ = (
        "_bucket",
        "_capture",
        "_max_bytes",
        "_meter",
        "audio_seconds",
        "characters",
        "client_bytes",
        "client_frames",
        "info",
        "last_activity",
        "limits",
        "started_mono",
        "started_wall",
        "upstream_bytes",
        "upstream_frames",
    )

    def __init__(
        self,
        info: SessionInfo,
        limits: Limits,
        *,
        now: float,
        wall: float,
        meter: UsageMeter,
        capture: Capture | None = None,
    ) -> None:
        self.info = info
        self.limits = limits
        self.started_mono = now
        self.started_wall = wall
        self.last_activity = now
        self.client_frames = 0
        self.client_bytes = 0
        self.upstream_frames = 0
        self.upstream_bytes = 0
        #: Speech sessions meter text and audio here.
        self.characters = 0
        self.audio_seconds = 0.0
        self._bucket = TokenBucket(limits.messages_per_minute, now)
        self._max_bytes = limits.max_message_bytes
        self._meter = meter
        self._capture = capture

    def client_frame(self, now: float, data: str | bytes) -> int:
        """Account a client frame. Returns 0 to relay it, else the close code."""
        size = len(data)
        if size > self._max_bytes:
            return CloseCode.MESSAGE_TOO_LARGE
        if not self._bucket.take(now):
            return CloseCode.RATE_LIMITED
        self.client_frames += 1
        self.client_bytes += size
        self.last_activity = now
        if self._capture is not None:
            self._capture.add("client", now - self.started_mono, data)
        return 0

    def upstream_frame(self, now: float, data: str | bytes) -> int:
        """Account an upstream frame. Always 0: upstream frames are not limited."""
        self.upstream_frames += 1
        self.upstream_bytes += len(data)
        self.last_activity = now
        if isinstance(data, str):
            self._meter.feed_text(data)
        else:
            self._meter.feed_binary(data)
        if self._capture is not None:
            self._capture.add("upstream", now - self.started_mono, data)
        return 0

    def requests_left(self, now: float) -> tuple[int, int, float]:
        """The messages-per-minute limit: (limit, messages left now, seconds until the
        full minute's worth is back)."""
        tokens, reset = self._bucket.level(now)
        return self.limits.messages_per_minute, int(tokens), reset

    def idle_deadline(self) -> float:
        """Monotonic time at which the session is idle unless a frame comes first."""
        return self.last_activity + self.limits.idle_seconds

    def add_tokens(self, input_tokens: int, output_tokens: int) -> None:
        """Tokens a session's own model used (the voice agent's language model)."""
        self._meter.add(input_tokens, output_tokens)

    def session_deadline(self) -> float:
        return self.started_mono + self.limits.max_session_seconds

    def record(
        self,
        *,
        now: float,
        wall: float,
        client_close_code: int | None,
        upstream_close_code: int | None,
        error: str | None,
    ) -> UsageRecord:
        m = self._meter
        return UsageRecord(
            **asdict(self.info),
            started_at=self.started_wall,
            ended_at=wall,
            duration_seconds=round(now - self.started_mono, 6),
            client_frames=self.client_frames,
            client_bytes=self.client_bytes,
            upstream_frames=self.upstream_frames,
            upstream_bytes=self.upstream_bytes,
            client_close_code=client_close_code,
            upstream_close_code=upstream_close_code,
            error=error,
            input_tokens=m.input_tokens,
            output_tokens=m.output_tokens,
            total_tokens=m.total_tokens,
            characters=self.characters,
            audio_seconds=round(self.audio_seconds, 3),
        )

    def capture(self) -> SessionCapture | None:
        if self._capture is None:
            return None
        return SessionCapture(
            self.info.session_id, tuple(self._capture.frames), self._capture.dropped
        )
