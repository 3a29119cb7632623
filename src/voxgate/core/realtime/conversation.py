"""The conversation: ordered items, and what the user heard of each spoken answer.

Every operation that can be refused raises :class:`ClientEventError` before it changes
anything, so a bad ``conversation.item.*`` event never loses an item.

The conversation is bounded, as OpenAI's is by its model's context: past
:data:`MAX_ITEMS` items or :data:`MAX_CHARS` characters of content, the oldest items are
dropped when a new one is added (never the new one). :meth:`Conversation.take_evicted`
gives their ids, so the client is told with ``conversation.item.deleted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxgate.protocols.chat import ChatMessage, ToolCall
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import Item

#: OpenAI's code and wording for an item that is not there, per action: clients branch on
#: them (Pipecat resolves a retrieve by ``item_retrieve_invalid_item_id``; a missed delete or
#: truncate is a race most clients ignore by its code).
_MISSING = {
    "retrieve": ("item_retrieve_invalid_item_id", "retrieving"),
    "truncate": ("item_truncate_invalid_item_id", "truncating"),
    "delete": ("item_delete_invalid_item_id", "deleting"),
}


def not_found(item_id: str, param: str = "item_id", action: str = "") -> ClientEventError:
    """An item that is not in the conversation: OpenAI's code for ``action`` (``retrieve``,
    ``truncate``, ``delete``), else ``item_not_found``."""
    code, verb = _MISSING.get(action, ("item_not_found", ""))
    if verb:
        message = f"Error {verb} item: the item with id {item_id!r} does not exist."
    else:
        message = f"there is no item with id {item_id!r} in the conversation"
    return ClientEventError(code, message, param=param)


@dataclass
class SpokenText:
    """Which words of an answer were spoken in which stretch of its audio."""

    #: (text, start_ms, end_ms) of each synthesized piece, in order.
    pieces: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def audio_ms(self) -> float:
        return self.pieces[-1][2] if self.pieces else 0.0

    def add(self, text: str, duration_ms: float) -> None:
        start = self.audio_ms
        self.pieces.append((text, start, start + duration_ms))

    def extend_last(self, duration_ms: float) -> None:
        text, start, end = self.pieces[-1]
        self.pieces[-1] = (text, start, end + duration_ms)

    def heard(self, until_ms: float) -> str:
        """The text of the audio up to ``until_ms``: whole pieces, then the share of the
        words of the piece that was cut, in proportion to the time heard of it."""
        out: list[str] = []
        for text, start, end in self.pieces:
            if until_ms >= end:
                out.append(text)
                continue
            if until_ms > start:
                words = text.split()
                n = int(len(words) * (until_ms - start) / max(end - start, 1e-9))
                if n:
                    out.append(" ".join(words[:n]))
            break
        return " ".join(out)

    def cut(self, until_ms: float) -> None:
        kept: list[tuple[str, float, float]] = []
        for text, start, end in self.pieces:
            if until_ms >= end:
                kept.append((text, start, end))
            elif until_ms > start:
                kept.append((SpokenText([(text, start, end)]).heard(until_ms), start, until_ms))
        self.pieces = kept


#: The most items a conversation keeps.
MAX_ITEMS = 1000
#: The most characters of content (text, transcripts, arguments, outputs) a conversation
#: keeps. (An item's audio is kept only until it is transcribed, and the agent bounds that.)
MAX_CHARS = 512_000


def item_size(item: Item) -> int:
    """What ``item`` counts against :data:`MAX_CHARS`."""
    size = len(item.arguments) + len(item.output)
    for part in item.content:
        size += len(part.text or "") + len(part.transcript or "")
    return size


class Conversation:
    def __init__(
        self, *, key: str | None = None, max_items: int = MAX_ITEMS, max_chars: int = MAX_CHARS
    ) -> None:
        #: Names the conversation to the model (``ChatRequest.conversation``).
        self.key = key
        self.items: list[Item] = []
        #: What was spoken of each assistant audio item, by item id.
        self.spoken: dict[str, SpokenText] = {}
        self.max_items = max_items
        self.max_chars = max_chars
        self._evicted: list[str] = []

    def take_evicted(self) -> list[str]:
        """Ids of the items dropped to keep the bound since the last call (oldest first)."""
        out, self._evicted = self._evicted, []
        return out

    def _evict(self, keep: Item) -> None:
        sizes = [item_size(i) for i in self.items]
        total = sum(sizes)
        i = 0
        while len(self.items) > self.max_items or total > self.max_chars:
            if i >= len(self.items):
                break
            item = self.items[i]
            if item is keep:
                i += 1
                continue
            del self.items[i]
            total -= sizes.pop(i)
            self.spoken.pop(item.id, None)
            self._evicted.append(item.id)

    def find(self, item_id: str) -> Item | None:
        """The item ``item_id``, or ``None``."""
        return next((item for item in self.items if item.id == item_id), None)

    def get(self, item_id: str, action: str = "") -> Item:
        """The item ``item_id``; raises :func:`not_found` with the code for ``action``."""
        item = self.find(item_id)
        if item is None:
            raise not_found(item_id, action=action)
        return item

    def __contains__(self, item_id: str) -> bool:
        return self.find(item_id) is not None

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert ``item`` after ``previous_item_id`` (``None``: at the end, ``"root"``: first).

        Returns the id of the item it now follows (``None`` if first)."""
        if item.id in self:
            raise ClientEventError(  # OpenAI's code: LiveKit's context sync relies on it
                "item_create_duplicate_item_id",
                f"an item with id {item.id!r} is already in the conversation",
                param="item.id",
            )
        prev: str | None
        if previous_item_id is None:
            prev = self.last_id()
            self.items.append(item)
        elif previous_item_id == "root":
            prev = None
            self.items.insert(0, item)
        else:
            at = next((i for i, x in enumerate(self.items) if x.id == previous_item_id), None)
            if at is None:
                raise not_found(previous_item_id, "previous_item_id")
            prev = previous_item_id
            self.items.insert(at + 1, item)
        self._evict(keep=item)
        return prev

    def delete(self, item_id: str) -> None:
        item = self.get(item_id, "delete")
        self.items.remove(item)
        self.spoken.pop(item_id, None)

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        """Cut an assistant item's audio at ``audio_end_ms``; its transcript keeps what was heard.

        Raises :class:`ClientEventError` (and changes nothing) for a bad item or position."""
        item = self.get(item_id, "truncate")
        if item.type != "message" or item.role != "assistant":
            raise ClientEventError(
                "invalid_value", "only assistant messages can be truncated", param="item_id"
            )
        if content_index >= len(item.content) or item.content[content_index].type != "output_audio":
            raise ClientEventError(
                "invalid_value",
                f"content_index {content_index} is not an audio part of item {item_id!r}",
                param="content_index",
            )
        spoken = self.spoken.get(item_id, SpokenText())
        if audio_end_ms > spoken.audio_ms + 1:
            raise ClientEventError(
                "invalid_value",
                f"audio_end_ms {audio_end_ms} is past the end of the item's audio "
                f"({spoken.audio_ms:.0f} ms)",
                param="audio_end_ms",
            )
        spoken.cut(audio_end_ms)
        item.content[content_index].transcript = spoken.heard(audio_end_ms)


def chat_messages(instructions: str, items: list[Item]) -> tuple[ChatMessage, ...]:
    """The items as chat-completions messages, instructions first."""
    out: list[ChatMessage] = []
    if instructions:
        out.append(ChatMessage("system", instructions))
    for item in items:
        if item.type == "message":
            text = item.text()
            if text or item.role == "user":
                out.append(ChatMessage(item.role or "user", text))
        elif item.type == "function_call":
            call = ToolCall(item.call_id or item.id, item.name or "", item.arguments or "{}")
            prev = out[-1] if out else None
            if prev is not None and prev.role == "assistant" and prev.tool_calls:
                out[-1] = ChatMessage("assistant", prev.content, (*prev.tool_calls, call))
            else:
                out.append(ChatMessage("assistant", None, (call,)))
        elif item.type == "function_call_output":
            out.append(ChatMessage("tool", item.output, tool_call_id=item.call_id))
    return tuple(out)
