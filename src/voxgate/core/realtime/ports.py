"""The edges of a voice session: the audio it speaks goes out through an :class:`AudioSink`.

A transport binds a :class:`~voxgate.core.realtime.session.VoiceSession` by giving it
a sink for its voice and a function for its events, and by calling its commands
(``feed_audio``, ``commit``, ``respond``…). The sink is where the transport says what was
*heard*: a WebSocket client plays audio the server cannot see (``played_ms`` is ``None``;
the client truncates), while a WebRTC call or a media-server track plays it out at real
time, so the session truncates its history to what was actually played.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from voxgate.protocols.realtime.session import AudioSpec


@dataclass(frozen=True, slots=True)
class OutputAudio:
    """A piece of a response's spoken answer, in the sink's format."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    audio: bytes


class Playing(NamedTuple):
    """The answer whose audio is being played out."""

    response_id: str
    item_id: str


class AudioSink(Protocol):
    """Where a session's voice goes. One sink per session; calls come from one task."""

    @property
    def format(self) -> AudioSpec | None:
        """The audio :meth:`write` takes; ``None``: the session's ``audio.output.format``."""
        ...

    async def write(self, audio: OutputAudio) -> None:
        """Queue audio to be played. May wait (a socket's backpressure, a paced track's
        lead); the response is cancelled by cancelling the task that waits."""
        ...

    def finish(self, response_id: str) -> None:
        """No more audio will come for ``response_id``: once it has played, the answer is
        over (a WebRTC call says ``output_audio_buffer.stopped``)."""
        ...

    def clear(self) -> None:
        """Drop every queued, unplayed piece now (barge-in, ``output_audio_buffer.clear``)."""
        ...

    def played_ms(self, item_id: str) -> float | None:
        """Milliseconds of ``item_id``'s audio played out so far; ``None`` when this
        transport cannot know (the client plays it and truncates the item itself)."""
        ...

    @property
    def playing(self) -> Playing | None:
        """The answer whose audio is being played out now (written and not yet all
        played), if any; ``None`` also where the transport cannot know."""
        ...
