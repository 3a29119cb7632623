"""OpenAI-compatible chat completions (OpenAI, Ollama, llama.cpp server, vLLM…), sans-I/O.

:func:`request_body` renders a :class:`ChatRequest` as the JSON body of a streamed
``POST {base_url}/chat/completions``; :class:`ChatStreamParser` takes the response's
server-sent-event lines and gives :data:`ChatEvent` values: text deltas, tool-call
deltas (``index``, then ``id``/``name`` once and ``arguments`` in pieces) and one
:class:`ChatDone` with the finish reason and token usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from voxgate.errors import RemoteProtocolError


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
    """Feed each line of the event stream; :meth:`end` after the body ends."""

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
            raise ChatProtocolError("the model sent a chunk that is not an object")
        if isinstance(chunk.get("error"), dict):
            message = str(chunk["error"].get("message", "error"))
            raise ChatProtocolError(
                f"model error: {message}", public_message=f"model error: {message}"
            )
        out: list[ChatEvent] = []
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = (
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
            )
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(TextDelta(str(delta["content"])))
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                out.append(
                    ToolCallDelta(
                        int(call.get("index", 0)),
                        call.get("id"),
                        fn.get("name"),
                        fn.get("arguments") or "",
                    )
                )
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return out

    def end(self) -> list[ChatEvent]:
        if self.done:
            return []
        self.done = True
        if self._finish is None:
            raise ChatProtocolError("the model's stream ended before a finish reason")
        inp, outp = self._usage or (0, 0)
        return [ChatDone(self._finish, inp, outp)]
