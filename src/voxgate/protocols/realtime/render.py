"""Canonical voice-session events → OpenAI Realtime server events (field dictionaries).

:func:`wire_event` names each event as the GA API does and gives its fields;
:meth:`voxgate.protocols.realtime.protocol.RealtimeProtocol.render` adds the
``event_id`` and, for a beta client, the beta name. Events a client's API version does
not have (``conversation.item.done`` for beta) render as ``None``: not sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.session import render_session

#: The GA name of each event whose fields render as they are (items and parts rendered).
NAMES: dict[type, str] = {
    ev.ItemAdded: "conversation.item.added",
    ev.ItemDone: "conversation.item.done",
    ev.ItemRetrieved: "conversation.item.retrieved",
    ev.ItemTruncated: "conversation.item.truncated",
    ev.ItemDeleted: "conversation.item.deleted",
    ev.InputCommitted: "input_audio_buffer.committed",
    ev.InputCleared: "input_audio_buffer.cleared",
    ev.SpeechStarted: "input_audio_buffer.speech_started",
    ev.SpeechStopped: "input_audio_buffer.speech_stopped",
    ev.InputTimeout: "input_audio_buffer.timeout_triggered",
    ev.TranscriptionDelta: "conversation.item.input_audio_transcription.delta",
    ev.OutputItemAdded: "response.output_item.added",
    ev.OutputItemDone: "response.output_item.done",
    ev.ContentPartAdded: "response.content_part.added",
    ev.ContentPartDone: "response.content_part.done",
    ev.TextDelta: "response.output_text.delta",
    ev.TextDone: "response.output_text.done",
    ev.AudioTranscriptDelta: "response.output_audio_transcript.delta",
    ev.AudioTranscriptDone: "response.output_audio_transcript.done",
    ev.AudioDone: "response.output_audio.done",
    ev.ArgumentsDelta: "response.function_call_arguments.delta",
    ev.ArgumentsDone: "response.function_call_arguments.done",
    ev.OutputAudioStarted: "output_audio_buffer.started",
    ev.OutputAudioStopped: "output_audio_buffer.stopped",
    ev.OutputAudioCleared: "output_audio_buffer.cleared",
}
#: GA server events the beta API never had: a beta client is not sent them.
GA_ONLY = frozenset({"conversation.item.done"})


def wire_event(event: ev.Event, *, beta: bool) -> tuple[str, dict[str, Any]] | None:
    """The GA name and fields of ``event``; ``None`` when a beta client has no such event."""
    special = _SPECIAL.get(type(event))
    if special is not None:
        name, body = special(event, beta)
    else:
        name = NAMES[type(event)]
        body = {f.name: _value(getattr(event, f.name), beta) for f in fields(event)}
    if beta and name in GA_ONLY:
        return None
    return name, body


def _value(value: Any, beta: bool) -> Any:
    if isinstance(value, Item):
        return value.to_json(beta=beta)
    if isinstance(value, ContentPart):
        # a part as content_part.added/.done carry it: typed ``text``/``audio`` for GA and
        # beta clients alike (inside an item, a GA part is ``output_text``/``output_audio``)
        return value.to_json(beta=True)
    return value


def _session(state: ev.SessionState, beta: bool) -> dict[str, Any]:
    return render_session(
        state.config,
        session_id=state.session_id,
        expires_at=state.expires_at,
        beta=beta,
        voice=state.voice,
        stt=state.stt,
    )


def response_json(r: ev.ResponseState, *, beta: bool) -> dict[str, Any]:
    """The ``response`` object of ``response.created``/``response.done``."""
    details: dict[str, Any] | None = None
    if r.status not in ("in_progress", "completed"):
        details = {"type": r.status, "reason": r.reason}
        if r.error is not None:
            code, message = r.error
            details["error"] = {"type": "server_error", "code": code, "message": message}
    inp, out = r.usage
    return {
        "object": "realtime.response",
        "id": r.id,
        "status": r.status,
        "status_details": details,
        "output": [item.to_json(beta=beta) for item in r.output],
        "conversation_id": "conv_default" if r.in_conversation else None,
        "output_modalities": list(r.modalities),
        "max_output_tokens": r.max_output_tokens or "inf",
        "audio": {"output": {"format": r.output_format.to_json(), "voice": r.voice}},
        "metadata": dict(r.metadata) if r.metadata else None,
        "usage": None
        if r.status == "in_progress"
        else {
            "total_tokens": inp + out,
            "input_tokens": inp,
            "output_tokens": out,
            "input_token_details": {"text_tokens": inp, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": out, "audio_tokens": 0},
            # voxgate's own meter: seconds of audio this response produced
            "output_audio_seconds": round(r.audio_ms / 1000, 3),
        },
    }


def _transcription_completed(e: ev.TranscriptionCompleted) -> dict[str, Any]:
    return {
        "item_id": e.item_id,
        "content_index": e.content_index,
        "transcript": e.transcript,
        "usage": {"type": "duration", "seconds": round(e.seconds, 3)},
    }


def _transcription_failed(e: ev.TranscriptionFailed) -> dict[str, Any]:
    error = {"type": "server_error", "code": e.code, "message": e.message, "param": None}
    return {"item_id": e.item_id, "content_index": e.content_index, "error": error}


def _error(e: ev.Error) -> dict[str, Any]:
    return {
        "error": {
            "type": e.kind,
            "code": e.code,
            "message": e.message,
            "param": e.param,
            "event_id": e.event_id,
        }
    }


def _rate_limits(e: ev.RateLimitsUpdated) -> dict[str, Any]:
    return {
        "rate_limits": [
            {
                "name": r.name,
                "limit": r.limit,
                "remaining": r.remaining,
                "reset_seconds": round(r.reset_seconds, 3),
            }
            for r in e.rate_limits
        ]
    }


_Special = Callable[[Any, bool], tuple[str, dict[str, Any]]]
_SPECIAL: dict[type, _Special] = {
    ev.SessionCreated: lambda e, beta: ("session.created", {"session": _session(e.session, beta)}),
    ev.SessionUpdated: lambda e, beta: ("session.updated", {"session": _session(e.session, beta)}),
    ev.ResponseCreated: lambda e, beta: (
        "response.created",
        {"response": response_json(e.response, beta=beta)},
    ),
    ev.ResponseDone: lambda e, beta: (
        "response.done",
        {"response": response_json(e.response, beta=beta)},
    ),
    ev.TranscriptionCompleted: lambda e, _beta: (
        "conversation.item.input_audio_transcription.completed",
        _transcription_completed(e),
    ),
    ev.TranscriptionFailed: lambda e, _beta: (
        "conversation.item.input_audio_transcription.failed",
        _transcription_failed(e),
    ),
    ev.ConversationCreated: lambda e, _beta: (
        "conversation.created",
        {"conversation": {"id": e.conversation_id, "object": "realtime.conversation"}},
    ),
    ev.RateLimitsUpdated: lambda e, _beta: ("rate_limits.updated", _rate_limits(e)),
    ev.Error: lambda e, _beta: ("error", _error(e)),
}
