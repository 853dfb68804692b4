"""Related reviews: what the group has said before about a paper's neighbours.

A paper is named by (part of) its title. Each review is represented by the
mean of its passage vectors (centred on the corpus mean), the paper by the
mean of its reviews, and every other review is ranked by cosine similarity to
the paper. Reviews of the
same paper, under any week, are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import BadRequest, NotFound
from .ranking import Hit
from .request import Filters, RelatedGroup
from .store import Index, StoredPassage

FUZZY_CUTOFF = 70  # rapidfuzz WRatio (0-100); below this a title is not a match
FUZZY_TIE = 3  # runner-up within this many points of the best: ambiguous


class TopicNotFound(NotFound):
    """No reviewed paper matches the name given."""

    hint = "list"


class AmbiguousTopic(BadRequest):
    """Several reviewed papers match the name given; the caller must pick one."""


    def __init__(self, query: str, candidates: list[str]):
        self.candidates = candidates
        listed = "; ".join(candidates)
        super().__init__(f"{query!r} matches several papers, be more specific: {listed}")


def initials(title: str) -> str:
    """`Dense Passage Retrieval for ...` → `DPRF...`: how people abbreviate papers (DPR, RAG, CoT)."""
    return "".join(w[0] for w in re.split(r"[\s\-:]+", title) if w and w[0].isalnum()).upper()


def match_topic(query: str, titles: list[str]) -> str:
    """The one title `query` names: exact, else a unique substring or acronym, else a clear fuzzy winner."""
    q = query.strip().casefold()
    if not q:
        raise TopicNotFound("the paper title is empty")
    unique = sorted(set(titles))
    exact = [t for t in unique if t.casefold() == q]
    if exact:
        return exact[0]
    contains = [t for t in unique if q in t.casefold()]
    if len(contains) == 1:
        return contains[0]
    if len(contains) > 1:
        raise AmbiguousTopic(query, contains)
    q_upper = query.strip().upper()
    acronyms = [t for t in unique if len(q_upper) >= 2 and q_upper.isalnum() and initials(t).startswith(q_upper)]
    if len(acronyms) == 1:
        return acronyms[0]
    if len(acronyms) > 1:
        raise AmbiguousTopic(query, acronyms)
    from rapidfuzz import fuzz, process, utils

    scored = process.extract(query, unique, scorer=fuzz.WRatio, processor=utils.default_process, limit=3)
    good = [(t, s) for t, s, _ in scored if s >= FUZZY_CUTOFF]
    if not good:
        raise TopicNotFound(f"no reviewed paper matches {query!r}")
    if len(good) > 1 and good[0][1] - good[1][1] < FUZZY_TIE:
        raise AmbiguousTopic(query, [t for t, s in good if good[0][1] - s < FUZZY_TIE])
    return good[0][0]


@dataclass(frozen=True)
class Related:
    """A related review (or paper, when rolled up) with its similarity to the given paper."""

    hit: Hit
    reviewers: tuple[str, ...]  # all reviewers of the entry (one unless grouped by paper)

    def as_dict(self) -> dict:
        return {**self.hit.as_dict(), "reviewers": list(self.reviewers)}


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n else v


def related_reviews(
    index: Index,
    topic: str,
    k: int = 5,
    group: RelatedGroup = RelatedGroup.REVIEW,
    filters: Filters = Filters(),
) -> tuple[str, list[Related]]:
    """The paper matched by `topic` and the k most similar other reviews (or papers), best first."""
    passages = index.passages()
    title = match_topic(topic, [p.topic for p in passages])
    # e5 vectors share a large common component (cosines bunch around 0.9), which
    # drowns topical differences between whole reviews; removing the corpus mean
    # lets what is specific to each review decide.
    vectors = index.vectors()
    vectors = vectors - vectors.mean(axis=0)
    by_review: dict[tuple, list[StoredPassage]] = {}
    for p in passages:
        by_review.setdefault(p.review_key, []).append(p)
    review_vec = {key: _unit(vectors[[p.row for p in ps]].mean(axis=0)) for key, ps in by_review.items()}
    own = [key for key, ps in by_review.items() if ps[0].topic == title]
    paper = _unit(np.mean([review_vec[key] for key in own], axis=0))

    allowed = set(index.rows_where(*filters.sql()).tolist())
    candidates = [
        (float(review_vec[key] @ paper), ps)
        for key, ps in by_review.items()
        if ps[0].topic != title and ps[0].row in allowed
    ]
    candidates.sort(key=lambda c: (-c[0], c[1][0].row))
    entries: list[Related] = []
    papers: dict[tuple, int] = {}
    for score, ps in candidates:
        # Show the passage closest to the paper as the review's excerpt.
        best = max(ps, key=lambda p: float(vectors[p.row] @ paper))
        if group == RelatedGroup.PAPER:
            pkey = (best.path, best.topic_no)
            if pkey in papers:
                i = papers[pkey]
                entries[i] = Related(entries[i].hit, entries[i].reviewers + (best.reviewer,))
                continue
            papers[pkey] = len(entries)
        entries.append(Related(Hit(best, score, score, None, len(ps)), (best.reviewer,)))
    return title, entries[:k]
