"""Every realtime server event voxgate renders, checked against the official ``openai`` types.

The autouse fixture ``official_realtime_events`` (``conftest.py``) records each event
:meth:`RealtimeProtocol.event` renders during a test; at teardown each one must validate
with the ``openai`` package's pydantic model of its ``type``: strictly (no coercion: a
``null`` where the type wants a string, a float where it wants an integer, a value outside
a ``Literal`` all fail), unknown fields aside (the models allow extra fields, and voxgate
adds some). A beta session's events are checked against the beta models
(``openai.types.beta.realtime``); an event type the beta API never had (such as
``input_audio_buffer.timeout_triggered``) against the GA one.

One value is let through: a PCM ``rate`` other than 24000. OpenAI takes 24 kHz only and
its types say so; voxgate also takes 8–48 kHz, a client's opt-in (or the 48 kHz of a call
agent's bridge), and echoes the rate in use — nothing an unchanged OpenAI client sees.
"""

from __future__ import annotations

import typing
from functools import cache

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Models = dict[str, type[BaseModel]]


def _by_type(union: object) -> Models:
    """``type`` literal → model, for a discriminated union ``Annotated[Union[...], ...]``."""
    members = typing.get_args(typing.get_args(union)[0]) if typing.get_args(union) else ()
    out: Models = {}
    for model in members:
        (name,) = typing.get_args(model.model_fields["type"].annotation)
        out[name] = model
    return out


@cache
def ga_models() -> Models:
    from openai.types.realtime import RealtimeServerEvent

    return _by_type(RealtimeServerEvent)


@cache
def beta_models() -> Models:
    from openai.types.beta.realtime import RealtimeServerEvent

    return _by_type(RealtimeServerEvent)


def event_model(kind: str, *, beta: bool) -> type[BaseModel] | None:
    if beta and kind in beta_models():
        return beta_models()[kind]
    return ga_models().get(kind)


def problem(text: str, *, beta: bool) -> tuple[str, str] | None:
    """Why the official types refuse one rendered event (a key for the kind of refusal,
    and a message showing the event), or ``None``."""
    kind = str(orjson.loads(text).get("type"))
    model = event_model(kind, beta=beta)
    shown = text if len(text) < 2000 else text[:2000] + "…"
    mode = "beta " if beta else ""
    if model is None:
        return f"{mode}{kind}", f"no official {mode}server event has this type: {shown}"
    try:
        model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        errors = relevant(exc)
        if not errors:
            return None
        key = f"{mode}{model.__name__} " + repr([(e["loc"], e["type"]) for e in errors])
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors]
        return key, f"{mode}{model.__name__} refuses {shown}\n" + "\n".join(lines)
    return None


def relevant(exc: ValidationError) -> list[ErrorDetails]:
    """The errors of the union members the value meant (a member whose ``type`` or
    ``role`` literal does not match is another kind of object, not a failure of this
    one), less voxgate's PCM rates; empty when only those are left."""
    errors = exc.errors()
    wrong: set[tuple[int | str, ...]] = set()
    for e in errors:
        loc = e["loc"]
        member = len(loc) > 1 and isinstance(loc[-2], str) and loc[-2][:1].isupper()
        if e["type"] == "literal_error" and member and loc[-1] in ("type", "role"):
            wrong.add(loc[:-1])
    kept = [e for e in errors if not any(e["loc"][: len(w)] == w for w in wrong)]
    return [e for e in kept or errors if not _voxgate_rate(e)]


def _voxgate_rate(e: ErrorDetails) -> bool:
    rate = e["input"]
    return (
        e["type"] == "literal_error"
        and e["loc"][-2:] == ("AudioPCM", "rate")
        and isinstance(rate, int)
        and 8000 <= rate <= 48000
    )


def problems(events: list[tuple[bool, str]]) -> list[str]:
    """One message per kind of refusal (its first example)."""
    found: dict[str, str] = {}
    for beta, text in events:
        why = problem(text, beta=beta)
        if why is not None:
            found.setdefault(*why)
    return list(found.values())
