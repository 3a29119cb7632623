"""The evaluation set of ``voxgate bench agent``, and how its answers are judged.

20 short spoken questions a small (1.5B) instruct model answers, each with the keywords
any of which makes an answer right; 8 requests that call one of :data:`TOOLS`, each with
the function expected and the argument values expected of it.

Judging works on :func:`words`: lower case, no punctuation, numbers as digits whether
they were written as digits or as words (``Fifty-six.`` and ``56`` are both ``56``,
``1,000`` and ``one thousand`` both ``1000``). A keyword matches when its words occur
in the answer's words in a row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voxgate.bench.sentences import edit_distance


@dataclass(frozen=True)
class Question:
    text: str
    #: Any of these in the answer makes it right.
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class ToolPrompt:
    text: str
    function: str
    #: Argument → the value expected (a string: found in the argument; a number: equal).
    arguments: Mapping[str, str | int]


INSTRUCTIONS = (
    "You are a helpful voice assistant. Your answers are spoken aloud: answer in one or "
    "two short sentences, plainly, with no markdown, lists or emoji. When a request "
    "matches one of your tools, call the tool."
)

#: A spoken turn before the timed ones (loads what loads on first use); not judged.
WARM_UP = "Hello, can you hear me?"

QUESTIONS = (
    Question("What is the capital of France?", ("paris",)),
    Question("What is seven times eight?", ("56", "fifty-six", "fifty six")),
    Question("How many days are in a week?", ("7", "seven")),
    Question("What is the largest planet in our solar system?", ("jupiter",)),
    Question("How many legs does a spider have?", ("8", "eight")),
    Question("Who wrote Romeo and Juliet?", ("shakespeare",)),
    Question("What is the opposite of hot?", ("cold",)),
    Question("What is twelve plus fifteen?", ("27", "twenty-seven", "twenty seven")),
    Question("What is the capital of Japan?", ("tokyo",)),
    Question("How many minutes are in an hour?", ("60", "sixty")),
    Question("Which planet is known as the red planet?", ("mars",)),
    Question("What do bees make?", ("honey",)),
    Question(
        "What is the boiling point of water in degrees Celsius?",
        ("100", "one hundred", "a hundred"),
    ),
    Question("Which ocean is the largest?", ("pacific",)),
    Question("How many sides does a triangle have?", ("3", "three")),
    Question("What is one hundred minus thirty?", ("70", "seventy")),
    Question("Who painted the Mona Lisa?", ("leonardo", "da vinci", "vinci")),
    Question("What is the capital of Italy?", ("rome", "roma")),
    Question("What color do you get when you mix blue and yellow?", ("green",)),
    Question("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
)


def _function(name: str, description: str, **params: tuple[str, str]) -> dict[str, Any]:
    """A Realtime session tool; ``params``: name → (JSON type, description), all required."""
    return {
        "type": "function",
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {k: {"type": t, "description": d} for k, (t, d) in params.items()},
            "required": list(params),
        },
    }


TOOLS = (
    _function(
        "get_weather", "Get the current weather and forecast for a city.", city=("string", "City")
    ),
    _function("set_timer", "Start a countdown timer.", minutes=("number", "Length in minutes")),
    _function(
        "send_message",
        "Send a text message to a contact.",
        to=("string", "The contact's name"),
        text=("string", "The message"),
    ),
    _function("turn_on_lights", "Turn on the lights in a room.", room=("string", "The room")),
    _function(
        "add_to_shopping_list", "Add an item to the shopping list.", item=("string", "The item")
    ),
    _function("play_music", "Play music by an artist.", artist=("string", "The artist")),
)

#: What the client answers each function with (``function_call_output``).
TOOL_RESULTS: Mapping[str, str] = {
    "get_weather": '{"forecast": "sunny", "temperature_celsius": 21}',
    "set_timer": '{"status": "started"}',
    "send_message": '{"status": "sent"}',
    "turn_on_lights": '{"status": "on"}',
    "add_to_shopping_list": '{"status": "added"}',
    "play_music": '{"status": "playing"}',
}

TOOL_PROMPTS = (
    ToolPrompt("What is the weather like in London today?", "get_weather", {"city": "london"}),
    ToolPrompt("Set a timer for ten minutes.", "set_timer", {"minutes": 10}),
    ToolPrompt(
        "Send a message to John saying I am running late.",
        "send_message",
        {"to": "john", "text": "late"},
    ),
    ToolPrompt("Turn on the lights in the kitchen.", "turn_on_lights", {"room": "kitchen"}),
    ToolPrompt("Add milk to my shopping list.", "add_to_shopping_list", {"item": "milk"}),
    ToolPrompt("Is it going to rain in Berlin tomorrow?", "get_weather", {"city": "berlin"}),
    ToolPrompt("Set a timer for five minutes.", "set_timer", {"minutes": 5}),
    ToolPrompt("Play some music by the Beatles.", "play_music", {"artist": "beatles"}),
)

# ------------------------------------------------------------------------------- judging

# fmt: off
_UNITS = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
))}
_TENS = {w: 10 * i for i, w in enumerate((
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
), 2)}
# fmt: on
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}


def _number_at(tokens: Sequence[str], i: int) -> tuple[int, int] | None:
    """The number that the number words from ``tokens[i]`` on spell (``one hundred and
    five``, ``a hundred``, ``twenty four``), and the index after them; ``None`` when
    ``tokens[i]`` starts no number. A run stops where a number could not go on (``one
    two`` is two numbers)."""
    total, current, prev, start = 0, 0, "", i
    if tokens[i] == "a" and i + 1 < len(tokens) and tokens[i + 1] in _SCALES:
        current, prev, i = 1, "unit", i + 1
    while i < len(tokens):
        w = tokens[i]
        follows = i + 1 < len(tokens) and (tokens[i + 1] in _UNITS or tokens[i + 1] in _TENS)
        if w == "and" and prev == "scale" and follows:
            i += 1
            continue
        if w in _UNITS and (prev in ("", "scale") or (prev == "tens" and 0 < _UNITS[w] < 10)):
            current, prev = current + _UNITS[w], "unit"
        elif w in _TENS and prev in ("", "scale"):
            current, prev = current + _TENS[w], "tens"
        elif w == "hundred":
            current, prev = max(current, 1) * 100, "scale"
        elif w in _SCALES:
            total, current, prev = total + max(current, 1) * _SCALES[w], 0, "scale"
        else:
            break
        i += 1
    return (total + current, i) if i > start else None


def _numbers(tokens: Sequence[str]) -> list[str]:
    """``tokens`` with each run of number words replaced by its value in digits."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        found = _number_at(tokens, i)
        if found is None:
            out.append(tokens[i])
            i += 1
        else:
            out.append(str(found[0]))
            i = found[1]
    return out


def words(text: str) -> list[str]:
    """``text`` as judged: lower-case words and numbers, number words as digits."""
    text = text.lower().replace("'", " ").replace("’", " ")  # Shakespeare's: shakespeare s
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000
    tokens = re.findall(r"\d+(?:\.\d+)?|[^\W\d_]+", text)
    return _numbers(tokens)


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i : i + n]) == list(needle) for i in range(len(haystack)))


def says(answer: str, keywords: Sequence[str]) -> bool:
    """Whether ``answer`` contains any of ``keywords`` (in the sense of :func:`words`)."""
    heard = words(answer)
    return any(_contains(heard, words(k)) for k in keywords)


def argument_matches(expected: str | int, actual: object) -> bool:
    """A number: equal to ``actual`` (a number, or digits or number words in a string); a
    string: found in ``actual``."""
    if isinstance(expected, int):
        if isinstance(actual, bool):
            return False
        if isinstance(actual, int | float):
            return math.isclose(actual, expected)
        found = [w for w in words(str(actual)) if re.fullmatch(r"\d+(?:\.\d+)?", w)]
        return bool(found) and math.isclose(float(found[0]), expected)
    return _contains(words(str(actual)), words(expected))


def call_matches(prompt: ToolPrompt, name: str, arguments: Mapping[str, Any]) -> bool:
    """Whether a call of ``name`` with ``arguments`` is the one ``prompt`` asks for."""
    if name.lower() != prompt.function.lower():
        return False
    args = {k.lower(): v for k, v in arguments.items()}
    return all(
        k.lower() in args and argument_matches(v, args[k.lower()])
        for k, v in prompt.arguments.items()
    )


def word_errors(heard: str, said: str) -> tuple[int, int]:
    """(word-level edit distance from ``said`` to ``heard``, words in ``said``)."""
    a = words(said)
    return edit_distance(a, words(heard)), len(a)
