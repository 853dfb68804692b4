"""Evaluating ranking on labelled queries: nDCG@10, MRR@10, Recall@5 and Hit@1, per query kind.

The unit judged is a review, identified by (file name, topic, reviewer); a
review ranks where its best passage ranks. Queries with no relevant review
(kind `absent`) have no ranking to score; for them the report keeps the top
score instead, which is what a "no good match" threshold is set from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadRequest
from .searcher import Searcher
from .request import DEFAULT_MODE, Group, Mode, SearchRequest

CUTOFF = 10


@dataclass(frozen=True)
class LabelledQuery:
    id: str
    query: str
    kind: str
    grades: dict[tuple[str, str, str], int]  # (file, topic, reviewer) -> grade 1 or 2


def read_queries(path: Path | str) -> list[LabelledQuery]:
    """Parse a queries.jsonl file (see the dev corpus README for the format)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadRequest(f"{path}: cannot read ({e})") from e
    queries = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            grades = {(r["file"], r["topic"].strip(), r["reviewer"].strip()): int(r["grade"]) for r in obj["relevant"]}
            queries.append(LabelledQuery(str(obj["id"]), obj["query"], obj.get("kind", "all"), grades))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadRequest(f"{path}:{n}: not a labelled query ({type(e).__name__}: {e})") from e
    if not queries:
        raise BadRequest(f"{path}: no queries")
    return queries


def dcg(gains: list[int]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


@dataclass
class QueryResult:
    id: str
    kind: str
    ranked: list[tuple[str, str, str]]  # review identities, best first
    top_score: float | None
    ndcg: float | None = None
    mrr: float | None = None
    recall5: float | None = None
    hit1: float | None = None


def score_query(q: LabelledQuery, ranked: list[tuple[str, str, str]], top_score: float | None) -> QueryResult:
    """Metrics for one query's ranked reviews."""
    r = QueryResult(q.id, q.kind, ranked, top_score)
    if not q.grades:
        return r
    gains = [q.grades.get(key, 0) for key in ranked[:CUTOFF]]
    ideal = dcg(sorted(q.grades.values(), reverse=True)[:CUTOFF])
    r.ndcg = dcg(gains) / ideal
    r.mrr = next((1 / (i + 1) for i, g in enumerate(gains) if g > 0), 0.0)
    grade2 = {k for k, g in q.grades.items() if g == 2}
    r.recall5 = len(grade2 & set(ranked[:5])) / len(grade2) if grade2 else None
    r.hit1 = float(bool(gains) and gains[0] == 2)
    return r


@dataclass
class Report:
    mode: str
    results: list[QueryResult] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean of each metric overall and per kind (queries without labels only count in `n`)."""
        groups: dict[str, list[QueryResult]] = {"all": self.results}
        for r in self.results:
            groups.setdefault(r.kind, []).append(r)
        out = {}
        for kind, rs in groups.items():
            row: dict[str, float] = {"n": len(rs)}
            for metric in ("ndcg", "mrr", "recall5", "hit1"):
                vals = [getattr(r, metric) for r in rs if getattr(r, metric) is not None]
                if vals:
                    row[metric] = round(sum(vals) / len(vals), 4)
            out[kind] = row
        return out


def evaluate(searcher: Searcher, queries: list[LabelledQuery], mode: Mode = DEFAULT_MODE) -> Report:
    """Rank reviews for every query with `mode` and score them against the labels."""
    report = Report(Mode(mode).value)
    for q in queries:
        hits = searcher.search(SearchRequest.parse(q.query, k=CUTOFF, mode=mode, group=Group.REVIEW)).hits
        ranked = [(h.passage.file, h.passage.topic, h.passage.reviewer) for h in hits]
        report.results.append(score_query(q, ranked, hits[0].score if hits else None))
    return report
