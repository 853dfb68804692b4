"""Sections inside a review: what kind of paragraph a label line introduces.

Reviewers structure their notes with short label lines (`1. 문제 정의`,
`2. 방법`, `결과`, `후기`, `한계`, `Limitations`); chunking joins each label
to the paragraph it introduces, so a passage starts with its labels. This
module turns those labels into one of a few section kinds, so a search can
ask for, say, only what people criticised.

A label is normalised (numbering such as `1.`, `2)`, `①`, bullets, Markdown
emphasis and trailing colons removed, case folded), then matched against the
aliases below. Korean aliases match as substrings, because Korean glues words
together (`느낀점`, `문제의식`, `결과정리`); English aliases match whole words.
When a label names several kinds (`GPTQ 결과 정리`: results, summary), the
most specific wins, in the order of `KINDS`: a limitation or an opinion says
more about a paragraph than "summary" does. A passage with no label continues
the section of the passage before it in the same review (reviewers write
`후기` once, then several paragraphs); before any label the section is `other`.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Iterable


class Section(str, Enum):
    """The kind of paragraph a passage is, from its review's label lines."""

    SUMMARY = "summary"  # the problem, background, the paper's idea in brief
    METHOD = "method"
    RESULTS = "results"
    OPINION = "opinion"  # the reviewer's own take: 후기, 느낀점, 리뷰, 생각
    LIMITATIONS = "limitations"  # weaknesses, criticism: 한계, 아쉬운 점, 단점
    OTHER = "other"


# Most specific first: the first kind whose alias occurs in a label wins.
_ALIASES: list[tuple[Section, tuple[str, ...], tuple[str, ...]]] = [
    # (kind, Korean substrings, English words)
    (
        Section.LIMITATIONS,
        ("한계", "아쉬운", "아쉬움", "아쉬웠던", "단점", "약점", "개선점", "비판"),
        ("limitation", "limitations", "weakness", "weaknesses", "drawback", "drawbacks", "cons",
         "shortcoming", "shortcomings", "criticism", "critique"),
    ),
    (
        Section.OPINION,
        ("후기", "느낀점", "느낀 점", "리뷰", "생각", "감상", "소감", "의견", "총평", "코멘트"),
        ("review", "thoughts", "opinion", "opinions", "impression", "impressions", "comment", "comments",
         "takeaway", "takeaways", "reflection", "reflections"),
    ),
    (
        Section.RESULTS,
        ("결과", "실험", "성능", "평가"),
        ("result", "results", "experiment", "experiments", "evaluation", "performance", "findings"),
    ),
    (
        Section.METHOD,
        ("방법", "방식", "기법", "구조", "모델", "학습", "과정", "데이터", "알고리즘", "아키텍처", "수식"),
        ("method", "methods", "methodology", "approach", "architecture", "model", "training", "data",
         "algorithm", "design"),
    ),
    (
        # `문제점` in these notes is the problem a paper addresses, not its weakness.
        Section.SUMMARY,
        ("문제 정의", "문제정의", "문제의식", "문제점", "배경", "개요", "요약", "정리", "개념", "핵심", "주제",
         "소개", "동기", "이유"),
        ("problem", "motivation", "background", "overview", "summary", "introduction", "tl;dr", "tldr",
         "abstract", "idea"),
    ),
]

# `1.`, `2)`, `(3)`, `①`, `-`, `*`, `#`, `**` at the start; `:` and `**` at the end.
_LEADING = re.compile(r"^(?:[-*+#>\s]|\*\*|\(?\d{1,2}[.)]|[\u2460-\u2473])+")
_TRAILING = re.compile(r"[\s:：*]+$")
_WORD = re.compile(r"[a-z][a-z;]*")


def normalise_label(label: str) -> str:
    """`1. 문제 정의  ` → `문제 정의`, `**Limitations:**` → `limitations`."""
    text = _LEADING.sub("", label.strip())
    return _TRAILING.sub("", text).strip().casefold()


def classify_label(label: str) -> Section:
    """The section kind a label line names, `Section.OTHER` when it names none."""
    text = normalise_label(label)
    words = set(_WORD.findall(text))
    for kind, korean, english in _ALIASES:
        if any(k in text for k in korean) or words & set(english):
            return kind
    return Section.OTHER


def section_of(labels: Iterable[str]) -> Section:
    """The kind named by a passage's leading labels (the first that names one), else OTHER."""
    for label in labels:
        kind = classify_label(label)
        if kind is not Section.OTHER:
            return kind
    return Section.OTHER


def parse_section(value: str) -> Section:
    """A section from user input: a kind (`limitations`) or any label alias (`한계`, `후기`, `problem`).

    Raises ValueError naming the choices when the value names no section.
    """
    text = str(value).strip().casefold()
    try:
        return Section(text)
    except ValueError:
        pass
    kind = classify_label(text)
    if kind is Section.OTHER:
        choices = ", ".join(s.value for s in Section)
        raise ValueError(f"section takes one of {choices} (or a label such as 후기, 한계), not {value!r}")
    return kind
