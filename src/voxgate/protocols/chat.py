"""OpenAI-compatible chat completions (OpenAI, Ollama, llama.cpp server, vLLM…), sans-I/O.

:func:`request_body` renders a :class:`ChatRequest` as the JSON body of a streamed
``POST {base_url}/chat/completions``; :class:`ChatStreamParser` takes the response's
server-sent-event lines and gives :data:`ChatEvent` values: text deltas, tool-call
deltas (``index``, then ``id``/``name`` once and ``arguments`` in pieces) and one
:class:`ChatDone` with the finish reason and token usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from voxgate.errors import RemoteProtocolError
from voxgate.protocols.relay.usage import reported_count

T = TypeVar("T")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[FunctionSpec, ...] = ()
    #: ``auto``, ``none``, ``required``, or a function name when ``named``.
    tool_choice: str = "auto"
    named: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    #: Whose conversation this is (a realtime session's id): an embedded model keeps a
    #: context for each, so its next request evaluates only what is new. ``None``: no
    #: one's; engines that keep nothing ignore it.
    conversation: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatDone:
    #: ``stop``, ``length`` (max_tokens reached) or ``tool_calls``.
    finish_reason: str
    input_tokens: int = 0
    output_tokens: int = 0


ChatEvent = TextDelta | ToolCallDelta | ChatDone


class ChatProtocolError(RemoteProtocolError):
    code = "llm_protocol_error"


def request_body(req: ChatRequest) -> dict[str, Any]:
    messages = []
    for m in req.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if req.tools and req.tool_choice != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in req.tools
        ]
        body["tool_choice"] = (
            {"type": "function", "function": {"name": req.tool_choice}}
            if req.named
            else req.tool_choice
        )
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    return body


class ChatStreamParser:
    """Feed each line of the event stream; :meth:`end` after the body ends.

    A chunk that is not what the chat-completions protocol says (not JSON, a field of
    the wrong type, a negative token count) raises :class:`ChatProtocolError` naming
    the field; nothing else escapes. Token counts above
    :data:`~voxgate.protocols.relay.usage.MAX_TOKENS_PER_REPORT` are clamped to it.
    """

    def __init__(self) -> None:
        self._finish: str | None = None
        self._usage: tuple[int, int] | None = None
        self.done = False

    def feed(self, line: bytes) -> list[ChatEvent]:
        line = line.strip()
        if not line.startswith(b"data:") or self.done:
            return []  # comments, event names, keep-alives
        data = line[5:].strip()
        if data == b"[DONE]":
            return self.end()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ChatProtocolError("the model sent a chunk that is not JSON") from None
        if not isinstance(chunk, dict):
            raise ChatProtocolError(
                f"the model sent a chunk that is not an object ({_kind(chunk)})"
            )
        error = chunk.get("error")
        if error is not None:
            detail = error.get("message", "error") if isinstance(error, dict) else error
            message = f"model error: {str(detail)[:200]}"
            raise ChatProtocolError(message, public_message=message)
        usage = _optional(chunk, "usage", dict, "usage")
        if usage is not None:
            self._usage = (
                _count(usage, "prompt_tokens", "usage.prompt_tokens"),
                _count(usage, "completion_tokens", "usage.completion_tokens"),
            )
        out: list[ChatEvent] = []
        choices = _optional(chunk, "choices", list, "choices") or ()
        for i, choice in enumerate(choices):
            where = f"choices[{i}]"
            if not isinstance(choice, dict):
                raise _wrong(where, "an object", choice)
            delta = _optional(choice, "delta", dict, f"{where}.delta") or {}
            content = _optional(delta, "content", str, f"{where}.delta.content")
            if content:
                out.append(TextDelta(content))
            calls = _optional(delta, "tool_calls", list, f"{where}.delta.tool_calls") or ()
            for j, call in enumerate(calls):
                out.append(_tool_call(call, f"{where}.delta.tool_calls[{j}]"))
            finish = _optional(choice, "finish_reason", str, f"{where}.finish_reason")
            if finish:
                self._finish = finish
        return out

    def end(self) -> list[ChatEvent]:
        if self.done:
            return []
        self.done = True
        if self._finish is None:
            raise ChatProtocolError("the model's stream ended before a finish reason")
        inp, outp = self._usage or (0, 0)
        return [ChatDone(self._finish, inp, outp)]


def _tool_call(call: object, where: str) -> ToolCallDelta:
    if not isinstance(call, dict):
        raise _wrong(where, "an object", call)
    index = call.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise _wrong(f"{where}.index", "a non-negative integer", index)
    fn = _optional(call, "function", dict, f"{where}.function") or {}
    return ToolCallDelta(
        index,
        _optional(call, "id", str, f"{where}.id"),
        _optional(fn, "name", str, f"{where}.function.name"),
        _optional(fn, "arguments", str, f"{where}.function.arguments") or "",
    )


def _optional(obj: dict[str, Any], key: str, kind: type[T], where: str) -> T | None:
    """``obj[key]`` when it is a ``kind``; None when absent or null; else the error."""
    value = obj.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise _wrong(where, _KIND_NAMES[kind], value)


def _count(usage: dict[str, Any], key: str, where: str) -> int:
    value = usage.get(key)
    if value is None:
        return 0
    n = reported_count(value)
    if n is None:
        raise _wrong(where, "a non-negative integer", value)
    return n


_KIND_NAMES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _wrong(where: str, expected: str, got: object) -> ChatProtocolError:
    return ChatProtocolError(
        f"the model sent a malformed chunk: {where}: expected {expected}, got {_kind(got)}"
    )
