"""Chunking: a review's body into passages that follow the notes' own structure.

A passage is one paragraph of a review. Reviewers introduce paragraphs with
short label lines (`후기`, `1. 문제 정의`, `RLVR 개념`), which carry little
meaning alone but tell what the paragraph is about, so a label is joined to
the paragraph it introduces. A paragraph longer than the token budget is cut
at sentence boundaries. What gets embedded carries the paper title as context
(a review rarely repeats the title, yet queries often name the paper); what
is shown is the passage itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

from .reader import PLACEHOLDER, Review
from .sections import Section, section_of

TokenCounter = Callable[[str], int]

# Room for the title, the e5 prefix and special tokens within the model's 512.
MAX_PASSAGE_TOKENS = 320
# A label is a heading-like line: short and not a sentence.
MAX_LABEL_CHARS = 40
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+")
_ENDS_LIKE_SENTENCE = re.compile(r"[.!?。:]$|다$")


@dataclass(frozen=True)
class Passage:
    """A span of one review: `text` is shown to people, `embed_text` is what the model sees."""

    review: Review
    passage_no: int
    line: int  # 1-based line of the passage's first line in the file
    end_line: int
    text: str
    embed_text: str
    section: str  # what its labels say it is (sections.py)


Line = tuple[int, str]  # (1-based line number in the file, stripped text)


def _blocks(review: Review) -> Iterator[list[Line]]:
    """Blank-line separated blocks of the body."""
    block: list[Line] = []
    for offset, raw in enumerate(review.body_lines):
        if raw.strip():
            block.append((review.body_start + offset, raw.strip()))
        elif block:
            yield block
            block = []
    if block:
        yield block


def is_label(line: str) -> bool:
    """True for a heading-like line that introduces the paragraph after it (`후기`, `1. 문제 정의`)."""
    line = line.strip()
    return 0 < len(line) <= MAX_LABEL_CHARS and not _ENDS_LIKE_SENTENCE.search(line)


_BULLET = re.compile(r"^[-*+]\s")


def _leading_labels(block: list[Line]) -> list[Line]:
    """The label lines a block starts with, before its text (bullets inside a block are list items)."""
    labels = []
    for line in block[:-1]:
        if not is_label(line[1]) or _BULLET.match(line[1]):
            break
        labels.append(line)
    return labels


def _paragraphs(review: Review) -> Iterator[tuple[list[Line], list[Line]]]:
    """Each paragraph's label lines and the paragraph itself (the labels included).

    Labels are the lone label lines before a block, joined to it, and the label
    lines the block itself starts with.
    """
    labels: list[Line] = []
    for block in _blocks(review):
        if [text for _, text in block] == [PLACEHOLDER]:
            continue  # a template slot left inside a real review carries nothing
        if len(block) == 1 and is_label(block[0][1]):
            labels.append(block[0])
            continue
        yield labels + _leading_labels(block), labels + block
        labels = []
    if labels:  # labels with nothing after them still say something
        yield labels, labels


def _render(units: list[Line]) -> str:
    """Sentences from one line are joined by a space, lines by a newline."""
    text, prev = "", None
    for line_no, sentence in units:
        text += sentence if prev is None else ((" " if line_no == prev else "\n") + sentence)
        prev = line_no
    return text


def _sentences(paragraph: list[Line], count: TokenCounter, budget: int) -> Iterator[Line]:
    """The paragraph's sentences; one sentence over the budget is cut into word runs."""
    for line_no, line in paragraph:
        for sentence in _SENTENCE_END.split(line):
            if not sentence:
                continue
            if count(sentence) <= budget:
                yield line_no, sentence
                continue
            words: list[str] = []
            for word in (piece for w in sentence.split() for piece in _cut_word(w, count, budget)):
                if words and count(" ".join(words + [word])) > budget:
                    yield line_no, " ".join(words)
                    words = []
                words.append(word)
            if words:
                yield line_no, " ".join(words)


def _cut_word(word: str, count: TokenCounter, budget: int) -> Iterator[str]:
    """The word, or character runs of it under the budget when it alone is over (a pasted blob, a URL)."""
    tokens = count(word)
    if tokens <= budget:
        yield word
        return
    step = max(1, len(word) * budget // tokens)
    start = 0
    while start < len(word):
        size = step
        while size > 1 and count(word[start:start + size]) > budget:
            size //= 2
        yield word[start:start + size]
        start += size


def _fit(paragraph: list[Line], count: TokenCounter, budget: int) -> Iterator[list[Line]]:
    """Pack a paragraph's sentences greedily into pieces that stay under the budget."""
    if count(_render(paragraph)) <= budget:
        yield paragraph
        return
    piece: list[Line] = []
    for unit in _sentences(paragraph, count, budget):
        if piece and count(_render(piece + [unit])) > budget:
            yield piece
            piece = []
        piece.append(unit)
    if piece:
        yield piece


def chunk_review(review: Review, count: TokenCounter, budget: int = MAX_PASSAGE_TOKENS) -> list[Passage]:
    """Split one review into passages under `budget` tokens, each with its file line numbers."""
    passages: list[Passage] = []
    section = Section.OTHER
    for labels, paragraph in _paragraphs(review):
        if labels:  # a new label starts a new section; unlabelled paragraphs continue the last one
            section = section_of(text for _, text in labels)
        for piece in _fit(paragraph, count, budget):
            text = _render(piece)
            passages.append(
                Passage(
                    review=review,
                    passage_no=len(passages) + 1,
                    line=piece[0][0],
                    end_line=piece[-1][0],
                    text=text,
                    embed_text=f"{review.topic}\n{text}",
                    section=section.value,
                )
            )
    return passages
