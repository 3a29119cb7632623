"""The Realtime session object: ``session.update`` in, ``session.created/updated`` out.

:func:`apply_update` takes the current :class:`SessionConfig` and one ``session`` object
from the client — partial, in the GA nested shape (``audio.input.turn_detection``) or the
beta flat shape (``turn_detection``, ``input_audio_format``) — and returns the new
config, or raises :class:`ClientEventError` whose ``param`` is the path of the first bad
field. Nothing is applied when any field is bad. :func:`render_session` gives the object
back in the GA or beta shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from voxgate.audio import Encoding
from voxgate.protocols.realtime.errors import ClientEventError

MAX_VOICE = 256
#: The longest ``audio.output.model`` (an engine name or another catalogue's TTS model).
MAX_TTS_MODEL = 128
MAX_METADATA_PAIRS = 16
EAGERNESS = ("low", "medium", "high", "auto")
TOOL_CHOICES = ("auto", "none", "required")
DEFAULT_MODEL = "voxgate/echo"


@dataclass(frozen=True)
class AudioSpec:
    encoding: Encoding = Encoding.PCM16
    rate: int = 24000

    def to_json(self) -> dict[str, Any]:
        if self.encoding is Encoding.MULAW:
            return {"type": "audio/pcmu"}
        if self.encoding is Encoding.ALAW:
            return {"type": "audio/pcma"}
        return {"type": "audio/pcm", "rate": self.rate}

    def beta_name(self) -> str:
        return {Encoding.MULAW: "g711_ulaw", Encoding.ALAW: "g711_alaw"}.get(self.encoding, "pcm16")


@dataclass(frozen=True)
class Transcription:
    #: A speech engine name (``pocketsphinx``, ``whisper``); OpenAI model names map to
    #: the default.
    model: str | None = None
    language: str | None = None
    prompt: str | None = None

    def to_json(self, engine: str) -> dict[str, Any]:
        """``engine``: the engine that transcribes when no model is named. ``model`` is
        always a string: the official types (and Pipecat's) refuse ``null`` there."""
        return {"model": self.model or engine, "language": self.language, "prompt": self.prompt}


@dataclass(frozen=True)
class TurnDetection:
    type: str = "server_vad"  # or "semantic_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    idle_timeout_ms: int | None = None
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str = "auto"

    def to_json(self) -> dict[str, Any]:
        common = {
            "type": self.type,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
        }
        if self.type == "semantic_vad":
            return {**common, "eagerness": self.eagerness}
        return {
            **common,
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "idle_timeout_ms": self.idle_timeout_ms,
        }


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


#: ``"auto"``, ``"none"``, ``"required"`` or the name of the one function to call.
ToolChoice = str


@dataclass(frozen=True)
class SessionConfig:
    model: str = DEFAULT_MODEL
    instructions: str = ""
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: AudioSpec = AudioSpec()
    transcription: Transcription | None = Transcription()
    turn_detection: TurnDetection | None = TurnDetection()
    output_format: AudioSpec = AudioSpec()
    #: ``None``: the TTS engine's default voice.
    voice: str | None = None
    #: The TTS engine (Inworld's ``audio.output.model``); ``None``: the default one.
    tts_model: str | None = None
    speed: float = 1.0
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"
    function_choice: bool = False  # True when tool_choice names one function
    max_output_tokens: int | None = None
    temperature: float | None = None
    truncation: Any = "auto"


# --- parsing -----------------------------------------------------------------------------


def _bad(param: str, message: str) -> ClientEventError:
    return ClientEventError("invalid_value", message, param=param)


def _obj(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ClientEventError("invalid_type", f"{param} must be an object", param=param)
    return value


def _str(value: Any, param: str, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise ClientEventError("invalid_type", f"{param} must be a string", param=param)
    return value


def _num(value: Any, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClientEventError("invalid_type", f"{param} must be a number", param=param)
    if not lo <= value <= hi:
        raise _bad(param, f"{param} must be between {lo:g} and {hi:g}, got {value:g}")
    return float(value)


def _int(value: Any, param: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClientEventError("invalid_type", f"{param} must be an integer", param=param)
    if not lo <= value <= hi:
        raise _bad(param, f"{param} must be between {lo} and {hi}, got {value}")
    return value


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise ClientEventError("invalid_type", f"{param} must be true or false", param=param)
    return value


def parse_format(value: Any, param: str) -> AudioSpec:
    """``{type: "audio/pcm", rate}``, ``audio/pcmu``, ``audio/pcma`` or a beta name."""
    beta = {"pcm16": AudioSpec(), "g711_ulaw": AudioSpec(Encoding.MULAW, 8000)}
    beta["g711_alaw"] = AudioSpec(Encoding.ALAW, 8000)
    if isinstance(value, str):
        if value not in beta:
            raise _bad(param, f"{param} must be one of pcm16, g711_ulaw, g711_alaw")
        return beta[value]
    fmt = _obj(value, param)
    kind = fmt.get("type", "audio/pcm")
    if kind == "audio/pcmu":
        return AudioSpec(Encoding.MULAW, 8000)
    if kind == "audio/pcma":
        return AudioSpec(Encoding.ALAW, 8000)
    if kind != "audio/pcm":
        raise _bad(f"{param}.type", f"{param}.type must be audio/pcm, audio/pcmu or audio/pcma")
    # OpenAI takes 24000 only; voxgate also takes other PCM rates (8–48 kHz).
    rate = _int(fmt.get("rate", 24000), f"{param}.rate", 8000, 48000)
    return AudioSpec(Encoding.PCM16, rate)


def _turn_detection(value: Any, current: TurnDetection | None, param: str) -> TurnDetection | None:
    if value is None:
        return None
    td = _obj(value, param)
    kind = td.get("type", current.type if current else "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise _bad(f"{param}.type", f"{param}.type must be server_vad or semantic_vad")
    base = current if current is not None and current.type == kind else TurnDetection(type=kind)
    out = base
    if "threshold" in td:
        out = replace(out, threshold=_num(td["threshold"], f"{param}.threshold", 0.0, 1.0))
    if "prefix_padding_ms" in td:
        v = _int(td["prefix_padding_ms"], f"{param}.prefix_padding_ms", 0, 5000)
        out = replace(out, prefix_padding_ms=v)
    if "silence_duration_ms" in td:
        v = _int(td["silence_duration_ms"], f"{param}.silence_duration_ms", 30, 10000)
        out = replace(out, silence_duration_ms=v)
    if "idle_timeout_ms" in td:
        idle = td["idle_timeout_ms"]
        v2 = None if idle is None else _int(idle, f"{param}.idle_timeout_ms", 5000, 30000)
        out = replace(out, idle_timeout_ms=v2)
    if td.get("create_response") is not None:
        v3 = _bool(td["create_response"], f"{param}.create_response")
        out = replace(out, create_response=v3)
    if td.get("interrupt_response") is not None:
        v3 = _bool(td["interrupt_response"], f"{param}.interrupt_response")
        out = replace(out, interrupt_response=v3)
    if "eagerness" in td and td["eagerness"] is not None:
        if td["eagerness"] not in EAGERNESS:
            raise _bad(f"{param}.eagerness", f"{param}.eagerness must be one of {EAGERNESS}")
        out = replace(out, eagerness=td["eagerness"])
    return out


def parse_tools(value: Any, param: str) -> tuple[Tool, ...]:
    if not isinstance(value, list):
        raise ClientEventError("invalid_type", f"{param} must be an array", param=param)
    tools = []
    for i, raw in enumerate(value):
        p = f"{param}[{i}]"
        t = _obj(raw, p)
        if t.get("type", "function") != "function":
            raise _bad(f"{p}.type", f"{p}.type {t.get('type')!r} is not supported (function)")
        name = _str(t.get("name"), f"{p}.name")
        assert name is not None
        if not name or len(name) > 64:
            raise _bad(f"{p}.name", f"{p}.name must be 1–64 characters")
        desc = _str(t.get("description", ""), f"{p}.description", allow_none=True) or ""
        params = _obj(t.get("parameters", {}), f"{p}.parameters")
        tools.append(Tool(name, desc, dict(params)))
    return tuple(tools)


def parse_tool_choice(value: Any, param: str) -> tuple[ToolChoice, bool]:
    """The choice and whether it names one function."""
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise _bad(param, f"{param} must be auto, none, required or a function")
        return value, False
    choice = _obj(value, param)
    name = _str(choice.get("name"), f"{param}.name")
    assert name is not None
    return name, True


def check_tool_choice(choice: str, named: bool, tools: tuple[Tool, ...], param: str) -> None:
    """A ``tool_choice`` that names a function must name one of ``tools``."""
    if named and choice not in {t.name for t in tools}:
        raise _bad(param, f"tool_choice names {choice!r}, which is not in tools")


def parse_voice(value: Any, param: str) -> str | None:
    """A voice name, or ``{id}`` (a custom voice); ``None`` for the engine's default voice.
    The name is kept as the client sent it, in a session and a response: the engine maps
    other catalogues' names (OpenAI's ``alloy``, Inworld's ``Clive``…) to its own voices
    (``TextToSpeech.voice_for``), and the session echoes the voice in force."""
    if isinstance(value, Mapping):
        value = value.get("id")
        param = f"{param}.id"
    voice = _str(value, param, allow_none=True)
    if voice is not None and not 0 < len(voice) <= MAX_VOICE:
        raise _bad(param, f"{param} must be 1–{MAX_VOICE} characters")
    return voice


def parse_tts_model(value: Any, param: str) -> str | None:
    """``audio.output.model``: a TTS engine, or a TTS model name of another catalogue
    (Inworld's ``inworld-tts-1.5-mini``, OpenAI's ``tts-1``…) that the server maps to an
    engine; ``None``: the default engine."""
    model = _str(value, param, allow_none=True)
    if model is not None and not 0 < len(model) <= MAX_TTS_MODEL:
        raise _bad(param, f"{param} must be 1–{MAX_TTS_MODEL} characters")
    return model


def parse_metadata(value: Any, param: str) -> dict[str, str] | None:
    """OpenAI's metadata: at most 16 pairs, keys ≤ 64 and values ≤ 512 characters."""
    if value is None:
        return None
    meta = _obj(value, param)
    if len(meta) > MAX_METADATA_PAIRS:
        raise _bad(param, f"{param} may have at most {MAX_METADATA_PAIRS} pairs")
    for key, v in meta.items():
        if len(key) > 64:
            raise _bad(param, f"{param} keys must be at most 64 characters")
        if not isinstance(v, str) or len(v) > 512:
            raise ClientEventError(
                "invalid_type", f"{param}.{key} must be a string of ≤512 characters", param=param
            )
    return dict(meta)


def parse_truncation(value: Any, param: str) -> str | dict[str, Any]:
    """``auto``, ``disabled`` or ``{type: "retention_ratio", retention_ratio: 0–1,
    token_limits?: {post_instructions?}}``: stored and echoed (voxgate bounds the
    conversation its own way)."""
    if value in ("auto", "disabled"):
        return str(value)
    if not isinstance(value, Mapping):
        raise _bad(param, f"{param} must be auto, disabled or a retention_ratio object")
    if value.get("type") != "retention_ratio":
        raise _bad(f"{param}.type", f"{param}.type must be retention_ratio")
    ratio = _num(value.get("retention_ratio"), f"{param}.retention_ratio", 0.0, 1.0)
    out: dict[str, Any] = {"type": "retention_ratio", "retention_ratio": ratio}
    limits = value.get("token_limits")
    if limits is not None:
        lp = f"{param}.token_limits"
        post = _obj(limits, lp).get("post_instructions")
        tokens = None if post is None else _int(post, f"{lp}.post_instructions", 1, 2**31 - 1)
        out["token_limits"] = {"post_instructions": tokens}
    return out


def parse_max_tokens(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    return _int(value, param, 1, 4096)


def parse_modalities(value: Any, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(m not in ("text", "audio") for m in value):
        raise _bad(param, f'{param} must be ["audio"] or ["text"]')
    # audio output always carries its transcript: ["audio","text"] (beta) means audio
    return ("audio",) if "audio" in value else ("text",)


_BETA_FLAT = (
    "modalities",
    "voice",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "turn_detection",
    "max_response_output_tokens",
    "speed",
)


def _from_beta(s: Mapping[str, Any]) -> dict[str, Any]:
    """The flat beta fields moved to their GA places; GA fields are kept as they are."""
    out = {k: v for k, v in s.items() if k not in _BETA_FLAT}
    audio = dict(_obj(out.get("audio", {}), "session.audio"))
    inp = dict(_obj(audio.get("input", {}), "session.audio.input"))
    outp = dict(_obj(audio.get("output", {}), "session.audio.output"))
    moves = {
        "input_audio_format": (inp, "format"),
        "input_audio_transcription": (inp, "transcription"),
        "turn_detection": (inp, "turn_detection"),
        "output_audio_format": (outp, "format"),
        "voice": (outp, "voice"),
        "speed": (outp, "speed"),
    }
    for key, (target, name) in moves.items():
        if key in s:
            target[name] = s[key]
    if "modalities" in s:
        out["output_modalities"] = s["modalities"]
    if "max_response_output_tokens" in s:
        out["max_output_tokens"] = s["max_response_output_tokens"]
    if inp:
        audio["input"] = inp
    if outp:
        audio["output"] = outp
    if audio:
        out["audio"] = audio
    return out


def apply_update(current: SessionConfig, session: Any) -> SessionConfig:
    """``current`` with the fields of one ``session.update`` applied (all or none)."""
    s = _from_beta(_obj(session, "session"))
    if "type" in s and s["type"] not in ("realtime", None):
        raise _bad("session.type", "session.type must be realtime")
    c = current
    if "model" in s:
        model = _str(s["model"], "session.model")
        assert model is not None
        c = replace(c, model=model)
    if "instructions" in s:
        c = replace(c, instructions=_str(s["instructions"], "session.instructions") or "")
    if "output_modalities" in s:
        c = replace(
            c,
            output_modalities=parse_modalities(s["output_modalities"], "session.output_modalities"),
        )
    audio = _obj(s.get("audio", {}), "session.audio")
    c = _apply_input(c, _obj(audio.get("input", {}), "session.audio.input"))
    c = _apply_output(c, _obj(audio.get("output", {}), "session.audio.output"))
    if "tools" in s:
        c = replace(c, tools=parse_tools(s["tools"], "session.tools"))
    if "tool_choice" in s:
        choice, named = parse_tool_choice(s["tool_choice"], "session.tool_choice")
        c = replace(c, tool_choice=choice, function_choice=named)
    if "max_output_tokens" in s:
        c = replace(
            c,
            max_output_tokens=parse_max_tokens(s["max_output_tokens"], "session.max_output_tokens"),
        )
    if "temperature" in s and s["temperature"] is not None:
        c = replace(c, temperature=_num(s["temperature"], "session.temperature", 0.0, 2.0))
    if "truncation" in s:
        c = replace(c, truncation=parse_truncation(s["truncation"], "session.truncation"))
    check_tool_choice(c.tool_choice, c.function_choice, c.tools, "session.tool_choice")
    return c


def _apply_input(c: SessionConfig, inp: Mapping[str, Any]) -> SessionConfig:
    p = "session.audio.input"
    if "format" in inp:
        c = replace(c, input_format=parse_format(inp["format"], f"{p}.format"))
    if "transcription" in inp:
        t = inp["transcription"]
        if t is None:
            c = replace(c, transcription=None)
        else:
            tr = _obj(t, f"{p}.transcription")
            c = replace(
                c,
                transcription=Transcription(
                    model=_str(tr.get("model"), f"{p}.transcription.model", allow_none=True),
                    language=_str(
                        tr.get("language"), f"{p}.transcription.language", allow_none=True
                    ),
                    prompt=_str(tr.get("prompt"), f"{p}.transcription.prompt", allow_none=True),
                ),
            )
    if "turn_detection" in inp:
        c = replace(
            c,
            turn_detection=_turn_detection(
                inp["turn_detection"], c.turn_detection, f"{p}.turn_detection"
            ),
        )
    return c


def _apply_output(c: SessionConfig, out: Mapping[str, Any]) -> SessionConfig:
    p = "session.audio.output"
    if "format" in out:
        c = replace(c, output_format=parse_format(out["format"], f"{p}.format"))
    if "voice" in out:
        c = replace(c, voice=parse_voice(out["voice"], f"{p}.voice"))
    if "model" in out:
        c = replace(c, tts_model=parse_tts_model(out["model"], f"{p}.model"))
    if "speed" in out and out["speed"] is not None:
        c = replace(c, speed=_num(out["speed"], f"{p}.speed", 0.25, 4.0))
    return c


# --- rendering ---------------------------------------------------------------------------


def render_session(
    c: SessionConfig,
    *,
    session_id: str,
    expires_at: int,
    beta: bool = False,
    voice: str = "",
    stt: str = "",
) -> dict[str, Any]:
    """The session object of ``session.created``/``session.updated``; ``voice`` and
    ``stt`` are the voice and the speech engine in use when the config leaves them to
    the defaults."""
    tools = [t.to_json() for t in c.tools]
    choice: Any = (
        {"type": "function", "name": c.tool_choice} if c.function_choice else c.tool_choice
    )
    transcription = c.transcription.to_json(stt) if c.transcription else None
    turns = c.turn_detection.to_json() if c.turn_detection else None
    voice_out = c.voice or voice
    if beta:
        return {
            "id": session_id,
            "object": "realtime.session",
            # the beta schema lists OpenAI's models only: a provider/model name is not one
            "model": None if "/" in c.model else c.model,
            "expires_at": expires_at,
            "modalities": ["audio", "text"] if c.output_modalities == ("audio",) else ["text"],
            "instructions": c.instructions,
            "voice": voice_out,
            "input_audio_format": c.input_format.beta_name(),
            "output_audio_format": c.output_format.beta_name(),
            "input_audio_transcription": transcription,
            "turn_detection": turns,
            "tools": tools,
            "tool_choice": choice,
            "temperature": c.temperature if c.temperature is not None else 0.8,
            "max_response_output_tokens": c.max_output_tokens or "inf",
            "speed": c.speed,
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": c.model,
        "expires_at": expires_at,
        "output_modalities": list(c.output_modalities),
        "instructions": c.instructions,
        "audio": {
            "input": {
                "format": c.input_format.to_json(),
                "transcription": transcription,
                "noise_reduction": None,
                "turn_detection": turns,
            },
            "output": {
                "format": c.output_format.to_json(),
                "voice": voice_out,
                "speed": c.speed,
                "model": c.tts_model,
            },
        },
        "tools": tools,
        "tool_choice": choice,
        "max_output_tokens": c.max_output_tokens or "inf",
        "truncation": c.truncation,
        "tracing": None,
        "prompt": None,
        "include": None,
    }
