"""Cutting text for speech: complete sentences out of a stream, clauses out of a sentence.

Synthesis of a sentence costs time in proportion to its length, and nothing plays until
the first piece is done. So a streaming text buffer hands out each sentence as soon as
its end arrives (:class:`SentenceBuffer`), and an engine speaks a text clause by clause
(:func:`split_clauses`), with the first clause kept short so the first audio comes early.

Every piece :func:`split_clauses` returns is bounded — at most ``max_words`` words and
:data:`MAX_PIECE_CHARS` characters, a word with no break cut where it must be — because
a synthesis model's memory grows with the length of what it is given at once (a
20,000-character word took piper to 5.6 GB). :func:`speakable` removes what no engine
should be handed (control characters, a NUL among them).
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+|\s+(?=[—–]\s)")
_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e.", "jr.", "sr.", "no."}
)
#: Words a long first clause is best cut before (its second part starts with one).
_CUT_BEFORE = frozenset(
    {"and", "but", "or", "so", "to", "of", "in", "on", "at", "for", "with", "from", "that"}
    | {"which", "who", "when", "while", "because", "if", "then", "into", "after", "before"}
)


#: The longest piece of text handed to a synthesis engine at once.
MAX_PIECE_CHARS = 200
#: How far back from a sentence end its last word is looked for (abbreviations are short).
_WORD_LOOKBACK = 16
#: How far back a rescan of a growing buffer starts, so an end split across two
#: additions (``"Hello."`` then ``" How"``) is found.
_RESCAN = 64
_UNSPEAKABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]+")


def speakable(text: str) -> str:
    """``text`` without control characters and lone surrogates (each becomes a space)."""
    return _UNSPEAKABLE.sub(" ", text)


def sentence_ends(text: str, start: int = 0) -> list[int]:
    """Offsets just past each sentence end in ``text`` whose following space has arrived,
    looking at ends from ``start`` on. Linear in the length scanned."""
    out = []
    for m in _SENTENCE_END.finditer(text, start):
        before = text[max(0, m.start() - _WORD_LOOKBACK) : m.start()]
        word = before.rsplit(None, 1)[-1].lower() if before.strip() else ""
        if word in _ABBREVIATIONS or re.fullmatch(r"\d+\.", word):
            continue
        out.append(m.end())
    return out


#: A complete word (followed by a space), group 1 set when it ends a clause or sentence.
_CLAUSE_OR_WORD = re.compile(r"\S+?([,;:.!?])?(?=\s)")


class SentenceBuffer:
    """Accumulates streamed text; :meth:`take_sentences` returns whole sentences only.

    Each call scans only what arrived since the last one (plus a short overlap), so a
    stream of small additions costs time linear in its length.
    """

    def __init__(self) -> None:
        self._text = ""
        self._scanned = 0

    def __len__(self) -> int:
        return len(self._text)

    def add(self, text: str) -> None:
        self._text += text

    def take_sentences(self) -> str:
        """The complete sentences buffered so far (``""`` if none), removed from the buffer."""
        ends = sentence_ends(self._text, max(0, self._scanned - _RESCAN))
        self._scanned = len(self._text)
        if not ends:
            return ""
        cut = ends[-1]
        done, self._text = self._text[:cut], self._text[cut:]
        self._scanned = len(self._text)
        return done.strip()

    def take_clause(self, max_words: int) -> str:
        """The text up to the first clause boundary (``,``/``;``/``:`` then a space) or
        the first ``max_words`` complete words, whichever comes first, once either is
        there (``""`` before); removed from the buffer. A sentence end counts too."""
        for words, m in enumerate(_CLAUSE_OR_WORD.finditer(self._text), 1):
            if m.group(1) or words >= max_words:
                cut = m.end()
                done, self._text = self._text[:cut], self._text[cut:]
                self._scanned = 0
                return done.strip()
        return ""

    def take_all(self) -> str:
        done, self._text = self._text, ""
        self._scanned = 0
        return done.strip()

    def clear(self) -> str:
        """Drop the buffered text; returns what was dropped."""
        return self.take_all()


def split_clauses(
    text: str,
    *,
    first_max_words: int = 6,
    max_words: int = 30,
    max_chars: int = MAX_PIECE_CHARS,
) -> list[str]:
    """Pieces of ``text`` to synthesize one after another.

    The first piece ends at the first clause or sentence boundary, or — when none comes
    within ``first_max_words`` words — at a word boundary (before a conjunction or
    preposition where one is near). The rest is split into sentences, and sentences over
    ``max_words`` words at their clause boundaries. No piece is longer than ``max_words``
    words or ``max_chars`` characters: a longer one is cut between words, and a word
    longer than ``max_chars`` is cut inside. Control characters are dropped.
    """
    text = " ".join(speakable(text).split())
    if not text:
        return []
    sentences = _split_sentences(text)
    first, rest = _first_piece(sentences[0], first_max_words)
    pieces = [first]
    remaining = ([rest] if rest else []) + sentences[1:]
    for sentence in remaining:
        pieces.extend(_split_long(sentence, max_words))
    return [bounded for piece in pieces for bounded in _bound(piece, max_words, max_chars)]


def _bound(piece: str, max_words: int, max_chars: int) -> list[str]:
    """``piece`` cut into runs of at most ``max_words`` words and ``max_chars`` characters."""
    if len(piece) <= max_chars and piece.count(" ") < max_words:
        return [piece]
    out: list[str] = []
    current: list[str] = []
    size = 0
    for word in piece.split(" "):
        while len(word) > max_chars:  # a word with no break: cut it where it must be
            if current:
                out.append(" ".join(current))
                current, size = [], 0
            out.append(word[:max_chars])
            word = word[max_chars:]
        if current and (size + 1 + len(word) > max_chars or len(current) >= max_words):
            out.append(" ".join(current))
            current, size = [], 0
        if word:
            size += len(word) + (1 if current else 0)
            current.append(word)
    if current:
        out.append(" ".join(current))
    return out


def _split_sentences(text: str) -> list[str]:
    out, start = [], 0
    for end in sentence_ends(text):
        out.append(text[start:end].strip())
        start = end
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def _first_piece(sentence: str, max_words: int) -> tuple[str, str]:
    words = sentence.split(" ")
    if len(words) <= max_words:
        return sentence, ""
    for i, word in enumerate(words[: max_words - 1]):
        if word[-1:] in ",;:" and i >= 1:
            return " ".join(words[: i + 1]), " ".join(words[i + 1 :])
    cut = max_words
    for i in range(max_words, 2, -1):
        if words[i].lower() in _CUT_BEFORE and words[i - 1].lower() not in _CUT_BEFORE:
            cut = i
            break
    if len(words) - cut < 2:  # not worth a piece of its own
        return sentence, ""
    return " ".join(words[:cut]), " ".join(words[cut:])


def _split_long(sentence: str, max_words: int) -> list[str]:
    if len(sentence.split(" ")) <= max_words:
        return [sentence]
    out: list[str] = []
    current = ""
    for clause in _CLAUSE_END.split(sentence):
        candidate = f"{current} {clause}".strip()
        if current and len(candidate.split(" ")) > max_words:
            out.append(current)
            candidate = clause
        current = candidate
    if current:
        out.append(current)
    return out
