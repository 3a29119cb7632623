"""In-memory twins and loopback fakes shared by voxgate's tests and its users.

- :class:`MemoryChannel` — a WebSocket :class:`~voxgate.transports.ws.Channel` pair
  with no socket, for driving a relay end to end in memory.
- :class:`FakeClock` — a clock tests move by hand.
- :class:`RecordingUpstream` — a real WebSocket server on 127.0.0.1 that records each
  handshake (path, query, headers, subprotocols) and runs a scripted behaviour.
"""

from voxgate.testing.clock import FakeClock
from voxgate.testing.memory import MemoryChannel, memory_pair
from voxgate.testing.upstream import Handshake, RecordingUpstream

__all__ = ["FakeClock", "Handshake", "MemoryChannel", "RecordingUpstream", "memory_pair"]
