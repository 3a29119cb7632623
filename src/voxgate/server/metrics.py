"""Prometheus text metrics, aggregated at scrape time.

Per-frame counters live in each :class:`RelaySession` (plain integer adds on the hot
path); :meth:`Metrics.render` sums the open sessions with the totals of closed ones.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from voxgate.core.relay import RelaySession

CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    def __init__(self) -> None:
        self.open_sessions: set[RelaySession] = set()
        #: (provider, direction, "frames"|"bytes") → total of closed sessions
        self.closed_totals: Counter[tuple[str, str, str]] = Counter()
        self.connect_latency: dict[str, Histogram] = {}
        #: (side, code) → count; side is "client" or "upstream"
        self.close_codes: Counter[tuple[str, int]] = Counter()
        #: limit name → count
        self.limit_rejections: Counter[str] = Counter()
        #: (status, reason) → handshakes refused before the upgrade
        self.handshake_rejections: Counter[tuple[int, str]] = Counter()
        self.upstream_failures: Counter[tuple[str, str]] = Counter()
        self.speech_open: set[RelaySession] = set()
        #: (kind, engine) → sessions, characters and audio seconds of closed sessions
        self.speech_sessions: Counter[tuple[str, str]] = Counter()
        self.speech_characters: Counter[tuple[str, str]] = Counter()
        self.speech_audio_seconds: Counter[tuple[str, str]] = Counter()
        #: (kind, code) → count
        self.speech_close_codes: Counter[tuple[str, int]] = Counter()

    def speech_opened(self, s: RelaySession) -> None:
        self.speech_open.add(s)

    def speech_closed(self, s: RelaySession, code: int) -> None:
        self.speech_open.discard(s)
        key = (s.info.kind, s.info.provider)
        self.speech_sessions[key] += 1
        self.speech_characters[key] += s.characters
        self.speech_audio_seconds[key] += s.audio_seconds  # type: ignore[assignment]
        self.speech_close_codes[(s.info.kind, code)] += 1

    def session_opened(self, s: RelaySession) -> None:
        self.open_sessions.add(s)

    def session_closed(self, s: RelaySession, client_code: int, upstream_code: int) -> None:
        self.open_sessions.discard(s)
        _add_counts(self.closed_totals, s)
        self.close_codes[("client", client_code)] += 1
        self.close_codes[("upstream", upstream_code)] += 1

    def observe_connect(self, provider: str, seconds: float) -> None:
        h = self.connect_latency.get(provider)
        if h is None:
            h = self.connect_latency[provider] = Histogram(CONNECT_BUCKETS)
        h.observe(seconds)

    def _totals(self) -> tuple[Counter[str], Counter[tuple[str, str, str]]]:
        """Open sessions by provider, and frames/bytes of closed plus open sessions."""
        active: Counter[str] = Counter()
        totals = Counter(self.closed_totals)
        for s in self.open_sessions:
            active[s.info.provider] += 1
            _add_counts(totals, s)
        return active, totals

    def render(self, *, node: Mapping[str, int] | None = None) -> str:
        """The Prometheus text; ``node``: gauges of the node as a whole (name → value),
        each rendered as ``voxgate_NAME``."""
        out: list[str] = []
        for name, value in sorted((node or {}).items()):
            _family(out, f"voxgate_{name}", "gauge", _NODE_GAUGES.get(name, name), [("", value)])
        active, totals = self._totals()
        _family(
            out,
            "voxgate_relay_active_sessions",
            "gauge",
            "Open relayed sessions by provider.",
            ((f'provider="{p}"', n) for p, n in sorted(active.items())),
        )
        for unit in ("frames", "bytes"):
            _family(
                out,
                f"voxgate_relay_{unit}_total",
                "counter",
                f"{unit.capitalize()} relayed, by provider and direction.",
                (
                    (f'provider="{p}",direction="{d}"', n)
                    for (p, d, u), n in sorted(totals.items())
                    if u == unit
                ),
            )
        self._render_connect_latency(out)
        self._render_speech(out)
        for name, help_, counter, labels in (
            (
                "voxgate_relay_close_codes_total",
                "Close codes of relayed sessions, by side.",
                self.close_codes,
                ("side", "code"),
            ),
            (
                "voxgate_limit_rejections_total",
                "Connections refused or closed because of a limit.",
                self.limit_rejections,
                ("limit",),
            ),
            (
                "voxgate_handshake_rejections_total",
                "WebSocket handshakes refused before the upgrade.",
                self.handshake_rejections,
                ("status", "reason"),
            ),
            (
                "voxgate_upstream_failures_total",
                "Upstream connections that failed, by provider and reason.",
                self.upstream_failures,
                ("provider", "reason"),
            ),
        ):
            _family(out, name, "counter", help_, _labelled(counter, labels))
        return "\n".join(out) + "\n"

    def _render_speech(self, out: list[str]) -> None:
        active: Counter[tuple[str, str]] = Counter()
        chars = Counter(self.speech_characters)
        audio: Counter[tuple[str, str]] = Counter(self.speech_audio_seconds)
        for s in self.speech_open:
            key = (s.info.kind, s.info.provider)
            active[key] += 1
            chars[key] += s.characters
            audio[key] += s.audio_seconds  # type: ignore[assignment]
        labels = ("kind", "engine")
        for name, kind, help_, counter in (
            ("voxgate_speech_active_sessions", "gauge", "Open speech sessions.", active),
            (
                "voxgate_speech_sessions_total",
                "counter",
                "Closed speech sessions.",
                self.speech_sessions,
            ),
            (
                "voxgate_speech_characters_total",
                "counter",
                "Characters of text synthesized.",
                chars,
            ),
            (
                "voxgate_speech_audio_seconds_total",
                "counter",
                "Seconds of audio synthesized (tts) or received (stt).",
                audio,
            ),
            (
                "voxgate_speech_close_codes_total",
                "counter",
                "Close codes of speech sessions.",
                self.speech_close_codes,
            ),
        ):
            names = ("kind", "code") if name.endswith("close_codes_total") else labels
            _family(out, name, kind, help_, _labelled(counter, names))

    def _render_connect_latency(self, out: list[str]) -> None:
        name = "voxgate_upstream_connect_seconds"
        out.append(f"# HELP {name} Time to open the upstream WebSocket, by provider.")
        out.append(f"# TYPE {name} histogram")
        for p, h in sorted(self.connect_latency.items()):
            cum = 0
            for bound, c in zip(h.buckets, h.counts, strict=False):
                cum += c
                out.append(f'{name}_bucket{{provider="{p}",le="{bound:g}"}} {cum}')
            out.append(f'{name}_bucket{{provider="{p}",le="+Inf"}} {h.n}')
            out.append(f'{name}_sum{{provider="{p}"}} {h.total:.6f}')
            out.append(f'{name}_count{{provider="{p}"}} {h.n}')


#: What the node gauges of :meth:`Metrics.render` mean.
_NODE_GAUGES = {
    "live_sessions": "Sessions of every kind live on this node.",
    "state_available": "1 when the shared state (Redis) answered last, else 0.",
    "usage_records_pending": "Usage records not yet written to the store (memory and spill file).",
    "draining": "1 while the node drains (refuses new sessions), else 0.",
}


def _add_counts(totals: Counter[tuple[str, str, str]], s: RelaySession) -> None:
    p = s.info.provider
    totals[(p, "client_to_upstream", "frames")] += s.client_frames
    totals[(p, "client_to_upstream", "bytes")] += s.client_bytes
    totals[(p, "upstream_to_client", "frames")] += s.upstream_frames
    totals[(p, "upstream_to_client", "bytes")] += s.upstream_bytes


def _labelled(counter: Mapping[Any, int], names: tuple[str, ...]) -> Iterable[tuple[str, int]]:
    for key, value in sorted(counter.items()):
        parts = key if isinstance(key, tuple) else (key,)
        yield ",".join(f'{n}="{v}"' for n, v in zip(names, parts, strict=True)), value


def _family(
    out: list[str], name: str, kind: str, help_: str, samples: Iterable[tuple[str, int]]
) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
