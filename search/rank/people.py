"""Who knows about X: members ranked by what they wrote (and presented) on a subject.

The query is searched like `query --group review`, over the index's reviews;
the best `DEPTH` (10) reviews are the evidence. Each is credited to its reviewer
and, as "presented", to the presenter of its paper (once per paper, at the
paper's best review: presenting a paper is knowing it, however many people
reviewed it). An item at rank r is worth 1 / log2(r + 1), the discount of
nDCG: rank 1 is worth 1, rank 3 0.5, rank 10 0.29. A person's score is the
sum of their best `TOP_ITEMS` (3) items, so a few strong, relevant reviews
count and one long review or a pile of loosely related ones does not
dominate. Ranks rather than raw scores keep this the same in every mode
(hybrid fusion scores are nearly flat, cosines bunch near 0.85).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .searcher import Hit, Searcher
from .request import DEPTH, Filters, Group, Mode, SearchRequest

TOP_ITEMS = 3  # items summed per person


@dataclass(frozen=True)
class Evidence:
    """One review that supports a person: one they wrote, or one of the paper they presented."""

    hit: Hit  # the review (its best passage) as the search ranked it
    rank: int  # 1-based rank of the review for the query
    presented: bool  # True: the person presented this paper; the review is someone else's

    @property
    def gain(self) -> float:
        return 1.0 / math.log2(self.rank + 1)

    def as_dict(self) -> dict:
        return {"role": "presented" if self.presented else "reviewed", "rank": self.rank,
                "gain": round(self.gain, 4), **self.hit.as_dict()}


@dataclass(frozen=True)
class Person:
    """A member, their score for the query and the evidence, best first."""

    name: str
    score: float
    evidence: list[Evidence] = field(default_factory=list)  # every item found; the first TOP_ITEMS scored

    @property
    def reviewed(self) -> int:
        return sum(not e.presented for e in self.evidence)

    @property
    def presented(self) -> int:
        return sum(e.presented for e in self.evidence)

    def as_dict(self) -> dict:
        return {"name": self.name, "score": round(self.score, 4), "reviewed": self.reviewed,
                "presented": self.presented, "evidence": [e.as_dict() for e in self.evidence]}


def who(
    searcher: Searcher,
    query: str,
    k: int = 5,
    mode: Mode | str | None = None,
    filters: Filters = Filters(),
    depth: int = DEPTH,
) -> list[Person]:
    """The k people with the strongest evidence of knowing about `query`, best first (see module doc)."""
    request = SearchRequest.parse(query, k=depth, mode=mode, group=Group.REVIEW)
    request = replace(request, filters=filters)
    hits = searcher.search(request).hits
    items: dict[str, list[Evidence]] = {}
    presented: set[tuple[str, int]] = set()
    for rank, hit in enumerate(hits, start=1):
        p = hit.passage
        if p.reviewer:
            items.setdefault(p.reviewer, []).append(Evidence(hit, rank, presented=False))
        if p.presenter and p.paper_key not in presented:
            presented.add(p.paper_key)
            items.setdefault(p.presenter, []).append(Evidence(hit, rank, presented=True))
    people = [
        Person(name, sum(e.gain for e in evidence[:TOP_ITEMS]), evidence)  # evidence is in rank order
        for name, evidence in items.items()
    ]
    people.sort(key=lambda person: (-person.score, person.name))
    return people[:k]
