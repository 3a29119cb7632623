"""Cutting text for speech: complete sentences out of a stream, clauses out of a sentence.

Synthesis of a sentence costs time in proportion to its length, and nothing plays until
the first piece is done. So a streaming text buffer hands out each sentence as soon as
its end arrives (:class:`SentenceBuffer`), and an engine speaks a text clause by clause
(:func:`split_clauses`), with the first clause kept short so the first audio comes early.
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


def sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence end in ``text`` whose following space has arrived."""
    out = []
    for m in _SENTENCE_END.finditer(text):
        word = text[: m.start()].rsplit(None, 1)[-1].lower() if text[: m.start()].strip() else ""
        if word in _ABBREVIATIONS or re.fullmatch(r"\d+\.", word):
            continue
        out.append(m.end())
    return out


class SentenceBuffer:
    """Accumulates streamed text; :meth:`take_sentences` returns whole sentences only."""

    def __init__(self) -> None:
        self._text = ""

    def __len__(self) -> int:
        return len(self._text)

    def add(self, text: str) -> None:
        self._text += text

    def take_sentences(self) -> str:
        """The complete sentences buffered so far (``""`` if none), removed from the buffer."""
        ends = sentence_ends(self._text)
        if not ends:
            return ""
        cut = ends[-1]
        done, self._text = self._text[:cut], self._text[cut:]
        return done.strip()

    def take_all(self) -> str:
        done, self._text = self._text, ""
        return done.strip()

    def clear(self) -> str:
        """Drop the buffered text; returns what was dropped."""
        return self.take_all()


def split_clauses(text: str, *, first_max_words: int = 6, max_words: int = 30) -> list[str]:
    """Pieces of ``text`` to synthesize one after another.

    The first piece ends at the first clause or sentence boundary, or — when none comes
    within ``first_max_words`` words — at a word boundary (before a conjunction or
    preposition where one is near). The rest is split into sentences, and sentences over
    ``max_words`` words at their clause boundaries.
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences = _split_sentences(text)
    first, rest = _first_piece(sentences[0], first_max_words)
    pieces = [first]
    remaining = ([rest] if rest else []) + sentences[1:]
    for sentence in remaining:
        pieces.extend(_split_long(sentence, max_words))
    return pieces


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
