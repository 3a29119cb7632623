"""Hostile inputs shared by the property tests and the socket-level fuzz: valid templates
of every client message, and mutations of them (one field at a time, or anything)."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pybase64

AUDIO = pybase64.b64encode(b"\0\0" * 480).decode()
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
TEXT_ITEM = {
    "id": "item_tpl",
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "hello"}],
}

#: One valid example of every realtime client event, with every field it may carry.
REALTIME_TEMPLATES: list[dict[str, Any]] = [
    {
        "type": "session.update",
        "event_id": "ev_1",
        "session": {
            "type": "realtime",
            "model": "voxgate/echo",
            "instructions": "Be brief.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "whisper-1", "language": "en", "prompt": ""},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "idle_timeout_ms": None,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                    "noise_reduction": None,
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "voice": "alloy",
                    "speed": 1.0,
                },
            },
            "tools": [TOOL],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "temperature": 0.8,
            "truncation": "auto",
        },
    },
    {
        "type": "session.update",
        "session": {
            "modalities": ["audio", "text"],
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
            "tool_choice": {"type": "function", "name": "get_weather"},
            "tools": [TOOL],
            "max_response_output_tokens": 200,
            "speed": 1.1,
        },
    },
    {"type": "input_audio_buffer.append", "audio": AUDIO},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "output_audio_buffer.clear"},
    {"type": "conversation.item.create", "previous_item_id": None, "item": TEXT_ITEM},
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": AUDIO, "transcript": None}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "c1", "output": '{"ok":true}'},
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "earlier answer"}],
        },
    },
    {"type": "conversation.item.retrieve", "item_id": "item_tpl"},
    {
        "type": "conversation.item.truncate",
        "item_id": "item_tpl",
        "content_index": 0,
        "audio_end_ms": 0,
    },
    {"type": "conversation.item.delete", "item_id": "item_tpl"},
    {
        "type": "response.create",
        "response": {
            "conversation": "none",
            "output_modalities": ["text"],
            "instructions": "Say hi.",
            "input": [TEXT_ITEM | {"id": "item_in"}, {"type": "item_reference", "id": "item_tpl"}],
            "tools": [TOOL],
            "tool_choice": "none",
            "max_output_tokens": 16,
            "audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"}},
            "metadata": {"topic": "test"},
        },
    },
    {"type": "response.cancel", "response_id": "resp_nope"},
]

#: Messages of the unified speech protocol, TTS and STT.
TTS_TEMPLATES: list[dict[str, Any]] = [
    {"type": "init", "voice_id": None, "sample_rate": 16000, "encoding": "pcm16", "binary": True},
    {"type": "input_text", "text": "Hello there."},
    {"type": "flush"},
    {"type": "configure", "speed": 1.2, "sample_rate": 24000, "encoding": "mulaw"},
    {"type": "clear"},
    {"type": "stop"},
    {"type": "ping"},
]
#: Mostly text and flushes, so that synthesis runs; a ``stop`` now and then.
TTS_WEIGHTS = [2.0, 10.0, 4.0, 1.0, 1.0, 0.3, 1.0]
#: Texts that broke or bloated synthesis (issue 12): a NUL, a word with no break, emoji
#: and letters with digits (each phonemizes long), piper's raw-phoneme syntax.
HOSTILE_TEXTS = (
    "a\u0000b.",
    "y" * 1000,
    "\U0001f600" * 40,
    "abc123" * 33,
    "[[ " + "ə" * 400 + " ]]",
    "\u202e\u200b\ufeff.",
    "Mr. " * 500,
)
STT_TEMPLATES: list[dict[str, Any]] = [
    {"type": "start", "sample_rate": 16000, "encoding": "pcm16", "interim_results": True},
    {"type": "audio", "data": AUDIO},
    {"type": "finalize"},
    {"type": "ping"},
]
STT_WEIGHTS = [1.0, 10.0, 2.0, 1.0]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict | list):
        items: Any = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            out.append((*prefix, key))
            out.extend(paths(child, (*prefix, key)))
    return out


def replaced(template: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``template`` with the value at ``path`` replaced (or removed, for
    the sentinel :data:`DELETE`)."""
    out = copy.deepcopy(template)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


DELETE = object()


class Mutator:
    """Seeded hostile values and messages, for the socket-level fuzz."""

    def __init__(self, seed: int, *, favourites: tuple[Any, ...] = ()) -> None:
        """``favourites``: values this surface finds hardest, chosen one time in five."""
        self.r = random.Random(seed)
        self.favourites = favourites
        self._deep: list[str] = []

    def scalar(self) -> Any:
        r = self.r
        return r.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                2**63,
                -(2**63) - 1,
                10**30,
                1e308,
                -0.0,
                0.5,
                "",
                "x",
                "alloy",
                "auto",
                "audio/pcm",
                "\u0000",
                "\ud83d\ude00" * 3,
                "y" * r.choice([100, 5000, 30000]),
                "AAAA" * r.choice([1, 100, 5000]),
                "\u202e\u200b",
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.r
        roll = r.random()
        if self.favourites and r.random() < 0.2:
            return r.choice(self.favourites)
        if roll < 0.05:
            # nesting too deep to build and dump as objects: a placeholder the frame's
            # text replaces with the nested JSON itself
            levels = r.choice([33, 100, 300, 900])
            opener, closer = ("[", "]") if r.random() < 0.5 else ('{"a":', "}")
            self._deep.append(opener * levels + "1" + closer * levels)
            return f"__deep_{len(self._deep) - 1}__"
        if depth > 2 or roll < 0.6:
            return self.scalar()
        if roll < 0.8:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {r.choice(["type", "id", "x", "audio"]): self.value(depth + 1) for _ in range(3)}

    def mutate(self, template: dict[str, Any]) -> dict[str, Any]:
        """``template`` with one to three of its fields replaced or removed."""
        out = template
        choices = paths(template)
        for _ in range(self.r.randint(1, 3)):
            path = self.r.choice(choices)
            try:
                out = replaced(out, path, DELETE if self.r.random() < 0.15 else self.value())
            except (KeyError, IndexError, TypeError):
                continue  # an earlier change removed or replaced its parent
        return out

    def frame(
        self, templates: list[dict[str, Any]], weights: list[float] | None = None
    ) -> str | bytes:
        """A hostile frame: mostly a mutated template (picked by ``weights``), sometimes
        a template as it is, sometimes garbage."""
        r = self.r
        roll = r.random()
        template = r.choices(templates, weights)[0]
        if roll < 0.05:
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 300)))
        if roll < 0.1:
            return r.choice(["", "{", "[]", "null", '{"type":1}', "\u0000", "{" * 5000])
        if roll < 0.3:
            return json.dumps(template)
        self._deep.clear()
        text = json.dumps(self.mutate(template))
        for i, deep in enumerate(self._deep):
            text = text.replace(f'"__deep_{i}__"', deep)
        return text
