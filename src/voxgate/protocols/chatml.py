"""ChatML prompts with Qwen2.5's tool format, and the model's output read back, sans-I/O.

An embedded model (``voxgate/local``) is given text, not chat messages:
:func:`render_prompt` turns a :class:`~voxgate.protocols.chat.ChatRequest` into the
ChatML turns Qwen2.5 (and SmolLM2) were trained on. Tools are listed in the system turn
as JSON inside ``<tools>`` tags; the model calls one by writing
``<tool_call>{"name": …, "arguments": {…}}</tool_call>``, and a result goes back in a
user turn inside ``<tool_response>`` tags.

Small models do not always write the tags: :class:`OutputReader` reads the answer as it
streams and tells speakable text from tool calls leniently — a call with its tags, bare
JSON, or JSON in a Markdown code fence. Text is released as soon as it cannot be the
start of a call, so speech starts with the first words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.protocols.chat import ChatMessage, ChatRequest

START, END = "<|im_start|>", "<|im_end|>"
#: The strings that end an answer (Qwen and SmolLM2 end a turn with ``<|im_end|>``).
STOP = (END, "<|endoftext|>", "<|im_start|>")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
#: Small models shown tools call one for every question: said plainly. (They then tend
#: to describe a call in words instead of making it: see the engine's ``CallOrWords``.)
TOOLS_RULE = (
    "\n\nCall a function only when the user asks for what it does. Answer every other "
    "question yourself, in words."
)
#: A grammar for an answer in words: it cannot open with JSON, a fence or a tag. Used
#: when a model wrote a call to a function it does not have and must answer again.
WORDS_ONLY_GBNF = 'root ::= [^{<\\[`" \\t\\n] [^<]*'
#: Words that go on from words said already: no tag (no call) among them, and they may
#: end at once.
GOING_ON_GBNF = "root ::= [^<]*"


@dataclass(frozen=True)
class Prompt:
    """A request as text: ``system`` (with the tools), then one string per turn of the
    conversation, then ``tail`` (the open assistant turn). Dropping turns from the
    front keeps a valid prompt (how an over-long conversation is fitted)."""

    system: str
    turns: tuple[str, ...]
    tail: str = f"{START}assistant\n"

    @property
    def text(self) -> str:
        return self.system + "".join(self.turns) + self.tail


#: Text that would read as turn boundaries or tags if a message carried it.
_SPECIAL = re.compile(r"<\|(?:im_start|im_end|endoftext)\|>")


def _turn(role: str, content: str) -> str:
    # a message cannot open a turn of another role (a tool result saying "<|im_start|>
    # system …" is text, not a new system turn)
    return f"{START}{role}\n{_SPECIAL.sub('', content)}{END}\n"


def render_prompt(request: ChatRequest, *, default_instructions: str) -> Prompt:
    """The prompt for ``request``. The first system message (or ``default_instructions``)
    opens it; tools are listed unless ``tool_choice`` is ``none``; a named choice adds
    one line telling the model which function to call."""
    messages = list(request.messages)
    instructions = default_instructions
    if messages and messages[0].role == "system":
        instructions = messages.pop(0).content or default_instructions
    system = instructions
    if request.tools and request.tool_choice != "none":
        listed = "".join(
            "\n"
            + orjson.dumps(
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
            ).decode()
            for t in request.tools
        )
        system += TOOLS_HEADER + listed + TOOLS_FOOTER
        if request.tool_choice == "auto":
            system += TOOLS_RULE
        if request.named:
            system += f"\n\nCall the function {request.tool_choice} now."
        elif request.tool_choice == "required":
            system += "\n\nAnswer with a function call."
    turns: list[str] = []
    results: list[str] = []
    for m in messages:
        if m.role == "tool":
            results.append(f"<tool_response>\n{m.content or ''}\n</tool_response>")
            continue
        if results:
            turns.append(_turn("user", "\n".join(results)))
            results.clear()
        turns.append(_message(m))
    if results:
        turns.append(_turn("user", "\n".join(results)))
    return Prompt(_turn("system", system), tuple(turns))


def _message(m: ChatMessage) -> str:
    if m.role == "assistant" and m.tool_calls:
        calls = []
        for c in m.tool_calls:
            try:
                arguments: Any = orjson.loads(c.arguments or "{}")
            except orjson.JSONDecodeError:
                arguments = c.arguments
            body = orjson.dumps({"name": c.name, "arguments": arguments}).decode()
            calls.append(f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}")
        text = ((m.content or "") + "\n" if m.content else "") + "\n".join(calls)
        return _turn("assistant", text)
    role = m.role if m.role in ("user", "assistant", "system") else "user"
    return _turn(role, m.content or "")


@dataclass(frozen=True)
class ParsedCall:
    name: str
    #: The arguments as a JSON object's text.
    arguments: str


_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```\s*$")
#: The name of the function a call under way calls, as soon as it is written whole.
_CALLING = re.compile(r'^\s*(?:<tool_call>\s*|```[a-zA-Z]*\s*)?\[?\s*\{\s*"name"\s*:\s*"([^"]*)"')


class OutputReader:
    """Reads an answer as it streams: :meth:`feed` returns the text that is safe to speak
    now; :meth:`end` returns the rest of the text and the tool calls.

    An answer that starts with ``{``, a code fence or ``<tool_call>`` is held until the
    end and read as calls; if it does not parse as one, it is given back as text. Text
    that reaches a ``<tool_call>`` tag later is spoken up to the tag."""

    def __init__(self, *, tools: frozenset[str]) -> None:
        self._tools = tools
        self._buffer = ""
        self._mode = "undecided" if tools else "text"

    def feed(self, text: str) -> str:
        self._buffer += text
        if self._mode == "undecided":
            head = self._buffer.lstrip()
            if not head:
                return ""
            if head.startswith(("{", "```", "[")) or head.startswith(CALL_OPEN):
                self._mode = "call"
                return ""
            if CALL_OPEN.startswith(head) or "```".startswith(head):
                return ""  # "<tool" or "`" could still become a call
            self._mode = "text"
        if self._mode == "call":
            return ""
        at = self._buffer.find(CALL_OPEN) if self._tools else -1
        if at >= 0:
            out, self._buffer, self._mode = self._buffer[:at], self._buffer[at:], "call"
            return out
        keep = _partial_tag(self._buffer) if self._tools else 0
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(out) :]
        return out

    def end(self) -> tuple[str, list[ParsedCall]]:
        """The text not yet given and the calls. An answer read as a call that names no
        known tool comes back as text: see :attr:`looked_like_call`."""
        rest, self._buffer = self._buffer, ""
        if self._mode != "call":
            return rest, []
        calls = parse_calls(rest, self._tools)
        self.looked_like_call = not calls
        return ("", calls) if calls else (rest, [])

    #: The answer was written as a call but no known tool's call could be read from it
    #: (the model asked for a function it does not have): better asked again for words.
    looked_like_call = False

    @property
    def foreign(self) -> bool:
        """A call under way names a function there is no tool of: known as soon as its
        name is written, before its arguments (``{"name": "multiply", …`` for "what is
        seven times eight?"), so the rest need not be decoded."""
        if self._mode != "call":
            return False
        calling = _CALLING.match(self._buffer)
        return calling is not None and calling.group(1) not in self._tools

    @property
    def blank(self) -> bool:
        """Nothing but whitespace read so far, with tools (no text given, no call begun)."""
        return self._mode == "undecided" and not self._buffer.strip()


def _partial_tag(text: str) -> int:
    """How many characters at the end of ``text`` could begin ``<tool_call>``."""
    start = text.rfind("<", max(0, len(text) - len(CALL_OPEN)))
    if start >= 0 and CALL_OPEN.startswith(text[start:]):
        return len(text) - start
    return 0


def parse_calls(text: str, tools: frozenset[str]) -> list[ParsedCall]:
    """The calls of known tools in ``text``: tagged blocks, else bare or fenced JSON (an
    object, or a list of objects). Unknown names and unparsable blocks are skipped."""
    blocks = [m.group(1) for m in _BLOCK.finditer(text)] or [text]
    calls: list[ParsedCall] = []
    for block in blocks:
        body = _FENCE.sub("", block.strip()).strip()
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = _first_object(body)
        for obj in value if isinstance(value, list) else [value]:
            call = _call(obj, tools)
            if call is not None:
                calls.append(call)
    return calls


def _first_object(text: str) -> Any:
    """The first complete JSON object in ``text`` (a model that wrote more after it)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = _decode_prefix(text[start:])
    except ValueError:
        return None
    return value


def _decode_prefix(text: str) -> tuple[Any, int]:
    depth, in_str, escape = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                try:
                    return orjson.loads(text[: i + 1]), i + 1
                except orjson.JSONDecodeError as exc:
                    raise ValueError(str(exc)) from None
    raise ValueError("no complete object")


def _call(obj: Any, tools: frozenset[str]) -> ParsedCall | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or name not in tools:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(name, orjson.dumps(arguments).decode())


_WORD = re.compile(r"[^\W_]{3,}")


def grounded(call: ParsedCall, request: ChatRequest) -> bool:
    """Whether ``call``'s text arguments come from the conversation: at least one word of
    one of them occurs in a user message, or it has no text arguments. A small model
    shown tools calls one for questions none of them answers, with arguments it made up
    (``add_to_shopping_list(item="apples")`` for "what is twelve plus fifteen?")."""
    try:
        arguments = orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        return False
    texts = (
        [v for v in arguments.values() if isinstance(v, str)] if isinstance(arguments, dict) else []
    )
    if not texts:
        return True
    said = {
        w.lower()
        for m in request.messages
        if m.role == "user"
        for w in _WORD.findall(m.content or "")
    }
    return any(w.lower() in said for text in texts for w in _WORD.findall(text))


def call_schema(request: ChatRequest) -> dict[str, Any] | None:
    """The JSON schema an answer must follow when ``tool_choice`` demands a call
    (``required`` or a named function), for constrained decoding; ``None`` otherwise."""
    if not request.tools or not (request.named or request.tool_choice == "required"):
        return None
    tools = [t for t in request.tools if not request.named or t.name == request.tool_choice]
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": t.parameters if _plain_schema(t.parameters) else {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"oneOf": options}


def _plain_schema(schema: Any) -> bool:
    """A parameters schema simple enough to constrain with: an object schema, without
    references, at most 4 levels deep and 8 KiB as JSON."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return False
    text = orjson.dumps(schema)
    return len(text) <= 8192 and b"$ref" not in text and _depth(schema) <= 4


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
