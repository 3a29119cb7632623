"""Client frames → typed events; server events → frames. Beta names both ways.

:meth:`RealtimeProtocol.receive` parses one client frame into a frozen event, or raises
:class:`ClientEventError` carrying the code, the offending ``param`` and the client's
``event_id`` — the agent renders it with :meth:`RealtimeProtocol.error` and goes on.
:meth:`RealtimeProtocol.event` renders one server event, giving it an ``event_id`` and,
for a beta client, the beta name (``response.audio.delta`` for
``response.output_audio.delta``, ``conversation.item.created`` for ``…added``).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64

from voxgate.clock import IdFactory
from voxgate.protocols.nesting import MAX_DEPTH, nesting_error
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.events import Event
from voxgate.protocols.realtime.items import ContentPart, Item, parse_item
from voxgate.protocols.realtime.render import GA_ONLY, wire_event
from voxgate.protocols.realtime.session import (
    AudioSpec,
    Tool,
    parse_format,
    parse_max_tokens,
    parse_metadata,
    parse_modalities,
    parse_tool_choice,
    parse_tools,
    parse_voice,
)

# --- client events -----------------------------------------------------------------------


@dataclass(frozen=True)
class SessionUpdate:
    event_id: str | None
    session: Mapping[str, Any]


@dataclass(frozen=True)
class AudioAppend:
    event_id: str | None
    audio: bytes


@dataclass(frozen=True)
class AudioCommit:
    event_id: str | None


@dataclass(frozen=True)
class AudioClear:
    event_id: str | None


@dataclass(frozen=True)
class OutputAudioClear:
    event_id: str | None


@dataclass(frozen=True)
class ItemCreate:
    event_id: str | None
    item: Item
    #: ``None``: append; ``"root"``: insert first; else insert after that item.
    previous_item_id: str | None


@dataclass(frozen=True)
class ItemRetrieve:
    event_id: str | None
    item_id: str


@dataclass(frozen=True)
class ItemTruncate:
    event_id: str | None
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class ItemDelete:
    event_id: str | None
    item_id: str


@dataclass(frozen=True)
class ResponseParams:
    """``response.create``'s ``response``: each field ``None`` keeps the session's."""

    #: ``"auto"``: the default conversation; ``"none"``: out of band.
    conversation: str = "auto"
    #: The context instead of the conversation: items, or ids of existing items (str).
    input: tuple[Item | str, ...] | None = None
    instructions: str | None = None
    output_modalities: tuple[str, ...] | None = None
    tools: tuple[Tool, ...] | None = None
    tool_choice: tuple[str, bool] | None = None
    max_output_tokens: int | None = None
    max_output_tokens_set: bool = False
    voice: str | None = None
    output_format: AudioSpec | None = None
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ResponseCreate:
    event_id: str | None
    params: ResponseParams


@dataclass(frozen=True)
class ResponseCancel:
    event_id: str | None
    response_id: str | None


ClientEvent = (
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | OutputAudioClear
    | ItemCreate
    | ItemRetrieve
    | ItemTruncate
    | ItemDelete
    | ResponseCreate
    | ResponseCancel
)

#: Server event names as a beta client knows them.
BETA_NAMES = {
    "conversation.item.added": "conversation.item.created",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
MAX_EVENT_ID = 128


class RealtimeProtocol:
    def __init__(self, *, ids: IdFactory, beta: bool = False, max_audio_bytes: int = 256 * 1024):
        self.ids = ids
        self.beta = beta
        self.max_audio_bytes = max_audio_bytes

    # -- receiving ---------------------------------------------------------------------

    def receive(self, data: str | bytes) -> ClientEvent:
        if isinstance(data, bytes):
            raise ClientEventError(
                "invalid_message", "binary frames are not part of this protocol: send JSON text"
            )
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ClientEventError(
                "invalid_json", f"the message is not valid JSON ({exc.msg} at {exc.pos})"
            ) from None
        if not isinstance(msg, dict):
            raise ClientEventError("invalid_message", "a client event must be a JSON object")
        event_id = msg.get("event_id")
        if event_id is not None and (not isinstance(event_id, str) or len(event_id) > MAX_EVENT_ID):
            raise ClientEventError(
                "invalid_value", "event_id must be a string of ≤128 characters", param="event_id"
            )
        deep = nesting_error(data, msg)
        if deep is not None:
            raise ClientEventError(
                "invalid_value",
                f"{deep} nests more than {MAX_DEPTH} levels deep",
                param=deep,
                event_id=event_id,
            )
        kind = msg.get("type")
        parser = _PARSERS.get(kind) if isinstance(kind, str) else None
        if parser is None:
            raise ClientEventError(
                "invalid_value",
                f"unknown event type {kind!r}" if kind is not None else "the event has no type",
                param="type",
                event_id=event_id,
            )
        try:
            return parser(self, msg, event_id)
        except ClientEventError as exc:
            exc.event_id = event_id
            raise

    def _session_update(self, m: dict[str, Any], eid: str | None) -> SessionUpdate:
        session = m.get("session")
        if not isinstance(session, dict):
            raise ClientEventError(
                "missing_required_parameter",
                "session.update needs a session object",
                param="session",
            )
        return SessionUpdate(eid, session)

    def _append(self, m: dict[str, Any], eid: str | None) -> AudioAppend:
        audio = m.get("audio")
        if not isinstance(audio, str):
            raise ClientEventError(
                "missing_required_parameter", "audio must be base64 text", param="audio"
            )
        if len(audio) > self.max_audio_bytes * 4 // 3 + 4:
            raise ClientEventError(
                "audio_too_large",
                f"one append may carry at most {self.max_audio_bytes} bytes of audio",
                param="audio",
            )
        try:
            raw = pybase64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientEventError(
                "invalid_value", "audio is not valid base64", param="audio"
            ) from None
        return AudioAppend(eid, raw)

    def _item_create(self, m: dict[str, Any], eid: str | None) -> ItemCreate:
        prev = m.get("previous_item_id")
        if prev is not None and not isinstance(prev, str):
            raise ClientEventError(
                "invalid_type", "previous_item_id must be a string", param="previous_item_id"
            )
        return ItemCreate(eid, parse_item(m.get("item"), lambda: self.ids("item")), prev)

    def _item_id(self, m: dict[str, Any]) -> str:
        item_id = m.get("item_id")
        if not isinstance(item_id, str) or not item_id:
            raise ClientEventError(
                "missing_required_parameter", "item_id is required", param="item_id"
            )
        return item_id

    def _truncate(self, m: dict[str, Any], eid: str | None) -> ItemTruncate:
        item_id = self._item_id(m)
        idx, end = m.get("content_index", 0), m.get("audio_end_ms")
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ClientEventError(
                "invalid_value", "content_index must be an integer ≥ 0", param="content_index"
            )
        if isinstance(end, bool) or not isinstance(end, int) or end < 0:
            raise ClientEventError(
                "invalid_value", "audio_end_ms must be an integer ≥ 0", param="audio_end_ms"
            )
        return ItemTruncate(eid, item_id, idx, end)

    def _response_create(self, m: dict[str, Any], eid: str | None) -> ResponseCreate:
        r = m.get("response") or {}
        if not isinstance(r, dict):
            raise ClientEventError("invalid_type", "response must be an object", param="response")
        return ResponseCreate(eid, self._response_params(r))

    def _response_params(self, r: dict[str, Any]) -> ResponseParams:
        p = "response"
        conv = r.get("conversation", "auto")
        if conv not in ("auto", "none"):
            raise ClientEventError(
                "invalid_value",
                "response.conversation must be auto or none",
                param=f"{p}.conversation",
            )
        inputs: tuple[Item | str, ...] | None = None
        if r.get("input") is not None:
            raw_input = r["input"]
            if not isinstance(raw_input, list):
                raise ClientEventError(
                    "invalid_type", "response.input must be an array", param=f"{p}.input"
                )
            out: list[Item | str] = []
            for i, x in enumerate(raw_input):
                if isinstance(x, dict) and x.get("type") == "item_reference":
                    if not isinstance(x.get("id"), str):
                        raise ClientEventError(
                            "missing_required_parameter",
                            "an item_reference needs its id",
                            param=f"{p}.input[{i}].id",
                        )
                    out.append(x["id"])
                else:
                    out.append(parse_item(x, lambda: self.ids("item"), param=f"{p}.input[{i}]"))
            inputs = tuple(out)
        modalities = r.get("output_modalities", r.get("modalities"))
        audio = _object(r.get("audio"), f"{p}.audio")
        output = _object(audio.get("output"), f"{p}.audio.output")
        voice_param = f"{p}.audio.output.voice" if "voice" in output else f"{p}.voice"
        voice = parse_voice(output.get("voice", r.get("voice")), voice_param)
        fmt = output.get("format", r.get("output_audio_format"))
        max_tokens_key = (
            "max_output_tokens" if "max_output_tokens" in r else "max_response_output_tokens"
        )
        instructions = r.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ClientEventError(
                "invalid_type", "response.instructions must be a string", param=f"{p}.instructions"
            )
        metadata = parse_metadata(r.get("metadata"), f"{p}.metadata")
        return ResponseParams(
            conversation=conv,
            input=inputs,
            instructions=instructions,
            output_modalities=parse_modalities(modalities, f"{p}.output_modalities")
            if modalities is not None
            else None,
            tools=parse_tools(r["tools"], f"{p}.tools") if r.get("tools") is not None else None,
            tool_choice=parse_tool_choice(r["tool_choice"], f"{p}.tool_choice")
            if r.get("tool_choice") is not None
            else None,
            max_output_tokens=parse_max_tokens(r.get(max_tokens_key), f"{p}.{max_tokens_key}"),
            max_output_tokens_set=max_tokens_key in r,
            voice=voice,
            output_format=parse_format(fmt, f"{p}.audio.output.format")
            if fmt is not None
            else None,
            metadata=metadata,
        )

    def _cancel(self, m: dict[str, Any], eid: str | None) -> ResponseCancel:
        rid = m.get("response_id")
        if rid is not None and not isinstance(rid, str):
            raise ClientEventError(
                "invalid_type", "response_id must be a string", param="response_id"
            )
        return ResponseCancel(eid, rid)

    # -- sending -----------------------------------------------------------------------

    def knows(self, kind: str) -> bool:
        """Whether the client's version of the API has the server event ``kind``
        (a beta client has no ``conversation.item.done``): send it only then."""
        return not (self.beta and kind in GA_ONLY)

    def event(self, kind: str, **fields: Any) -> str:
        """One server event as JSON text (beta-named for a beta client)."""
        if self.beta:
            kind = BETA_NAMES.get(kind, kind)
        body = {"type": kind, "event_id": self.ids("event"), **fields}
        return orjson.dumps(body).decode()

    def render(self, event: Event) -> str | None:
        """A voice session's event as JSON text; ``None`` when the client's API version
        has no such event (it is not sent)."""
        wire = wire_event(event, beta=self.beta)
        if wire is None:
            return None
        name, body = wire
        return self.event(name, **body)

    def item(self, item: Item) -> dict[str, Any]:
        return item.to_json(beta=self.beta)

    def part(self, part: ContentPart) -> dict[str, Any]:
        """A content part as ``response.content_part.added``/``.done`` carry it: typed
        ``text`` or ``audio`` for GA and beta clients alike (inside an item, a GA part is
        ``output_text``/``output_audio``)."""
        return part.to_json(beta=True)

    def audio_delta(
        self, *, response_id: str, item_id: str, output_index: int, audio: bytes
    ) -> str:
        return self.event(
            "response.output_audio.delta",
            response_id=response_id,
            item_id=item_id,
            output_index=output_index,
            content_index=0,
            delta=pybase64.b64encode(audio).decode(),
        )

    def error(self, exc: ClientEventError) -> str:
        return self.event(
            "error",
            error={
                "type": exc.kind,
                "code": exc.code,
                "message": exc.public_message,
                "param": exc.param,
                "event_id": exc.event_id,
            },
        )


def _object(value: Any, param: str) -> dict[str, Any]:
    """An optional object field: ``{}`` when absent or null."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientEventError("invalid_type", f"{param} must be an object", param=param)
    return value


def _simple(cls: Callable[[str | None], ClientEvent]) -> Callable[..., ClientEvent]:
    return lambda _p, _m, eid: cls(eid)


_PARSERS: dict[str, Callable[[RealtimeProtocol, dict[str, Any], str | None], ClientEvent]] = {
    "session.update": RealtimeProtocol._session_update,
    "input_audio_buffer.append": RealtimeProtocol._append,
    "input_audio_buffer.commit": _simple(AudioCommit),
    "input_audio_buffer.clear": _simple(AudioClear),
    "output_audio_buffer.clear": _simple(OutputAudioClear),
    "conversation.item.create": RealtimeProtocol._item_create,
    "conversation.item.retrieve": lambda p, m, eid: ItemRetrieve(eid, p._item_id(m)),
    "conversation.item.truncate": RealtimeProtocol._truncate,
    "conversation.item.delete": lambda p, m, eid: ItemDelete(eid, p._item_id(m)),
    "response.create": RealtimeProtocol._response_create,
    "response.cancel": RealtimeProtocol._cancel,
}
