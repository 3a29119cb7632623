"""A bound on how deep a client's JSON may nest, checked once where it is parsed.

``orjson`` parses up to 1,024 levels but renders only 254, and every recursive walk in
Python (redaction, copying, validation) pays per level: a 300-deep ``metadata`` or tool
``parameters`` accepted at parse time failed later, far from the cause. Protocols that
take JSON from a peer call :func:`nesting_error` on what they parsed and refuse the
message, naming the field, before anything is applied.
"""

from __future__ import annotations

from typing import Any

#: The deepest a client's JSON may nest (the event object itself is level 1). A tool's
#: JSON-schema ``parameters`` with five levels of nested objects is about 15.
MAX_DEPTH = 32
#: How many steps of the path an error names (``session.tools[0].parameters``).
_PATH_STEPS = 4


def nesting_error(raw: str | bytes, value: Any, *, max_depth: int = MAX_DEPTH) -> str | None:
    """The path of the first container in ``value`` nested deeper than ``max_depth``
    (cut after a few steps), or ``None`` when it nests no deeper. ``raw`` is the text
    ``value`` was parsed from: a message with fewer brackets than ``max_depth`` is
    passed without a walk. A flat object (an audio append: a few keys and one long
    string) is passed before that, as counting brackets in its audio costs more than
    parsing it."""
    if type(value) is dict and not any(type(v) is dict or type(v) is list for v in value.values()):
        return None
    if isinstance(raw, str):
        openers = raw.count("{") + raw.count("[")
    else:
        openers = raw.count(b"{") + raw.count(b"[")
    if openers <= max_depth:
        return None
    return _walk(value, max_depth)


def _walk(value: Any, max_depth: int) -> str | None:
    # each entry: (container, depth, path steps taken so far)
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            return _render(path)
        short = len(path) >= _PATH_STEPS
        if type(node) is dict:
            for key, child in node.items():
                if type(child) is dict or type(child) is list:
                    stack.append((child, depth + 1, path if short else (*path, f".{key}")))
        else:
            for i, child in enumerate(node):
                if type(child) is dict or type(child) is list:
                    stack.append((child, depth + 1, path if short else (*path, f"[{i}]")))
    return None


def _render(path: tuple[str, ...]) -> str:
    return "".join(path).lstrip(".")
