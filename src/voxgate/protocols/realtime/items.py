"""Conversation items: parsed from ``conversation.item.create``, rendered in every event.

An :class:`Item` is a message (``system``/``user``/``assistant`` with content parts), a
``function_call`` or a ``function_call_output``. Items are conversation state: the agent
fills an assistant item as its response streams, so they are mutable; the protocol only
parses and renders them.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pybase64

from voxgate.protocols.realtime.errors import ClientEventError

_USER_PARTS = ("input_text", "input_audio")
_ASSISTANT_PARTS = ("output_text", "output_audio", "text", "audio")
#: Beta content part names of assistant parts.
BETA_PARTS = {"output_text": "text", "output_audio": "audio"}
MAX_ITEM_ID = 32


@dataclass
class ContentPart:
    type: str  # input_text | input_audio | output_text | output_audio
    text: str | None = None
    transcript: str | None = None
    #: Raw audio bytes in the session's input format (``input_audio`` parts from the client).
    audio: bytes | None = None

    def to_json(self, *, beta: bool = False) -> dict[str, Any]:
        kind = BETA_PARTS.get(self.type, self.type) if beta else self.type
        if self.type in ("input_text", "output_text"):
            return {"type": kind, "text": self.text or ""}
        # audio itself is not echoed back (as OpenAI does): only its transcript
        return {"type": kind, "transcript": self.transcript}

    def spoken_text(self) -> str:
        return (self.text if self.type.endswith("text") else self.transcript) or ""


@dataclass
class Item:
    id: str
    type: str  # message | function_call | function_call_output
    status: str = "completed"  # in_progress | completed | incomplete
    role: str | None = None
    content: list[ContentPart] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""
    output: str = ""

    def to_json(self, *, beta: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "object": "realtime.item",
            "status": self.status,
        }
        if self.type == "message":
            out["role"] = self.role
            out["content"] = [p.to_json(beta=beta) for p in self.content]
        elif self.type == "function_call":
            out.update(call_id=self.call_id, name=self.name, arguments=self.arguments)
        else:
            out.update(call_id=self.call_id, output=self.output)
        return out

    def text(self) -> str:
        """What the message says (text and transcripts joined)."""
        return " ".join(t for p in self.content if (t := p.spoken_text().strip()))


def parse_item(raw: Any, new_id: Callable[[], str], *, param: str = "item") -> Item:
    """An item from the client, or :class:`ClientEventError` naming the bad field."""
    if not isinstance(raw, Mapping):
        raise ClientEventError("invalid_type", f"{param} must be an object", param=param)
    item_id = raw.get("id")
    if item_id is None:
        item_id = new_id()
    elif not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ITEM_ID:
        raise ClientEventError(
            "invalid_value", f"{param}.id must be 1–{MAX_ITEM_ID} characters", param=f"{param}.id"
        )
    kind = raw.get("type", "message")
    if kind == "message":
        return _message(raw, item_id, param)
    if kind == "function_call":
        call_id, name = raw.get("call_id") or new_id(), raw.get("name")
        args = raw.get("arguments", "")
        if not isinstance(name, str) or not name:
            raise _missing(f"{param}.name", "a function_call item needs its name")
        if not isinstance(args, str) or not isinstance(call_id, str):
            raise _type(f"{param}.arguments", "arguments and call_id must be strings")
        return Item(item_id, kind, call_id=call_id, name=name, arguments=args)
    if kind == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise _missing(f"{param}.call_id", "a function_call_output item needs the call_id")
        if not isinstance(output, str):
            raise _type(f"{param}.output", f"{param}.output must be a string")
        return Item(item_id, kind, call_id=call_id, output=output)
    raise ClientEventError(
        "invalid_value",
        f"{param}.type {kind!r} is not supported (message, function_call, function_call_output)",
        param=f"{param}.type",
    )


def _missing(param: str, message: str) -> ClientEventError:
    return ClientEventError("missing_required_parameter", message, param=param)


def _type(param: str, message: str) -> ClientEventError:
    return ClientEventError("invalid_type", message, param=param)


def _message(raw: Mapping[str, Any], item_id: str, param: str) -> Item:
    role = raw.get("role")
    if role not in ("system", "user", "assistant"):
        raise ClientEventError(
            "invalid_value",
            f"{param}.role must be system, user or assistant",
            param=f"{param}.role",
        )
    content = raw.get("content")
    if not isinstance(content, list) or not content:
        raise _missing(f"{param}.content", f"{param}.content must be a non-empty array")
    allowed = (
        ("input_text",) if role == "system" else _USER_PARTS if role == "user" else _ASSISTANT_PARTS
    )
    parts = []
    for i, c in enumerate(content):
        p = f"{param}.content[{i}]"
        if not isinstance(c, Mapping):
            raise _type(p, f"{p} must be an object")
        kind = c.get("type")
        if kind not in allowed:
            raise ClientEventError(
                "invalid_value",
                f"{p}.type must be one of {', '.join(allowed)} for a {role} message",
                param=f"{p}.type",
            )
        kind = {"text": "output_text", "audio": "output_audio"}.get(str(kind), str(kind))
        parts.append(_part(c, kind, p))
    return Item(item_id, "message", role=role, content=parts)


def _part(c: Mapping[str, Any], kind: str, p: str) -> ContentPart:
    if kind.endswith("text"):
        text = c.get("text")
        if not isinstance(text, str):
            raise _missing(f"{p}.text", f"{p}.text must be a string")
        return ContentPart(kind, text=text)
    transcript = c.get("transcript")
    if transcript is not None and not isinstance(transcript, str):
        raise _type(f"{p}.transcript", f"{p}.transcript must be a string")
    audio = c.get("audio")
    data = None
    if audio is not None:
        if not isinstance(audio, str):
            raise _type(f"{p}.audio", f"{p}.audio must be base64 text")
        try:
            data = pybase64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientEventError(
                "invalid_value", f"{p}.audio is not valid base64", param=f"{p}.audio"
            ) from None
    elif transcript is None:
        raise _missing(f"{p}.audio", f"{p} needs audio or a transcript")
    return ContentPart(kind, transcript=transcript, audio=data)
