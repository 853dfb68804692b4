"""Related reviews: what the group has said before about a paper's neighbours.

A paper is named by (part of) its title. Each review is represented by the
mean of its passage vectors (centred on the corpus mean), the paper by the
mean of its reviews, and every other review is ranked by cosine similarity to
the paper. Reviews of the
same paper, under any week, are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AmbiguousTopic, TopicNotFound, shorten
from .searcher import Hit, allowed_rows
from .request import RelatedGroup
from ..storage import Backend, Filters, StoredPassage
from ..notes.titles import match_titles


def match_topic(query: str, titles: list[str]) -> str:
    """The one reviewed title `query` names (`titles.match_titles`, loose tiers too); several are an error listing them."""
    if not query.strip():
        raise TopicNotFound("the paper title is empty")
    matches = match_titles(query, titles, loose=True)
    if not matches:
        raise TopicNotFound(f"no reviewed paper matches {shorten(query, 80)!r}")
    if len(matches) > 1:
        raise AmbiguousTopic(query, [m.title for m in matches])
    return matches[0].title


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
    index: Backend,
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

    rows = allowed_rows(index, filters)
    allowed = None if rows is None else set(rows.tolist())
    candidates = [
        (float(review_vec[key] @ paper), ps)
        for key, ps in by_review.items()
        if ps[0].topic != title and (allowed is None or ps[0].row in allowed)
    ]
    candidates.sort(key=lambda c: (-c[0], c[1][0].row))
    entries: list[Related] = []
    papers: dict[tuple, int] = {}
    for score, ps in candidates:
        # Show the passage closest to the paper as the review's excerpt.
        best = max(ps, key=lambda p: float(vectors[p.row] @ paper))
        if group == RelatedGroup.PAPER:
            pkey = best.paper_key
            if pkey in papers:
                i = papers[pkey]
                entries[i] = Related(entries[i].hit, entries[i].reviewers + (best.reviewer,))
                continue
            papers[pkey] = len(entries)
        entries.append(Related(Hit(best, score, score, None, len(ps)), (best.reviewer,)))
    return title, entries[:k]
