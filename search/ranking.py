"""Ranking: a query to the best passages or reviews, dense, lexical or both.

Dense scores are cosine similarities from FAISS; lexical scores are BM25 over
Korean morphemes. Hybrid mode fuses the two rankings with reciprocal rank
fusion, which needs no score calibration between the two very different
scales (see README, "Retrieval quality", for the measurements that chose it).
Filters narrow the candidate rows before the top-k cut, so a filtered search
still returns k results when k exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from . import embedding
from .embedding import Encoder, EncoderError
from .store import Index

Mode = Literal["hybrid", "dense", "lexical"]
Group = Literal["passage", "review"]
MODES: tuple[str, ...] = ("hybrid", "dense", "lexical")
GROUPS: tuple[str, ...] = ("review", "passage")
CANDIDATES = 1000  # rows taken from each ranking before fusion: all of them for small indexes
RRF_K = 60  # the constant from Cormack et al. (2009); damps the weight of rank 1 vs rank 2


@dataclass(frozen=True)
class Filters:
    """Which passages a search may return; None means no restriction."""

    reviewer: str | None = None
    topic: str | None = None  # case-insensitive substring of the paper title
    weeks: tuple[int, int] | None = None  # inclusive range

    def sql(self) -> tuple[str, list]:
        """A WHERE clause over the passages table and its parameters (the index evaluates it)."""
        clauses, params = [], []
        if self.reviewer is not None:
            clauses.append("reviewer = ?")
            params.append(self.reviewer.strip())
        if self.topic is not None:
            clauses.append("contains_casefold(topic, ?)")
            params.append(self.topic.strip())
        if self.weeks is not None:
            clauses.append("week BETWEEN ? AND ?")
            params += list(self.weeks)
        return " AND ".join(clauses) or "1", params

    @classmethod
    def parse(cls, reviewer: str | None = None, topic: str | None = None, week: str | None = None) -> "Filters":
        """Filters from user input, where blank means no restriction; a bad week raises ValueError."""
        reviewer, topic, week = ((v or "").strip() or None for v in (reviewer, topic, week))
        return cls(reviewer=reviewer, topic=topic, weeks=parse_weeks(week) if week else None)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.reviewer, self.topic, self.weeks))


def parse_weeks(text: str) -> tuple[int, int]:
    """`3` → (3, 3), `3-5` → (3, 5); raises ValueError with a readable message otherwise."""
    parts = [p.strip() for p in text.split("-")]
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
            if lo <= hi:
                return lo, hi
    except ValueError:
        pass
    raise ValueError(f"--week takes a week or a range like 3-5, not {text!r}")


@dataclass(frozen=True)
class Hit:
    """One result: a passage (the best of its review when grouped) and its scores."""

    passage: StoredPassage
    score: float  # what the ranking used: cosine, BM25 or fused
    dense: float | None  # cosine similarity to the query, when computed
    lexical: float | None  # BM25 score, when computed
    passages: int = 1  # passages of the same review that matched, when grouped

    def as_dict(self) -> dict:
        """The JSON shape of `query --json` and the HTTP API."""
        p = self.passage
        return {
            "file": p.file,
            "path": p.path,
            "line": p.line,
            "end_line": p.end_line,
            "week": p.week,
            "topic_no": p.topic_no,
            "topic": p.topic,
            "presenter": p.presenter,
            "review_no": p.review_no,
            "reviewer": p.reviewer,
            "text": p.text,
            "score": round(float(self.score), 6),
            "dense": None if self.dense is None else round(float(self.dense), 6),
            "lexical": None if self.lexical is None else round(float(self.lexical), 6),
        }


class ModelMismatch(EncoderError):
    pass


class Searcher:
    """Answers queries against one loaded index; keeps the model and index in memory between queries."""

    def __init__(self, index: Index, encoder: Encoder | None = None):
        self.index = index
        self._encoder = encoder
        if encoder is not None:
            self._check(encoder)

    def _check(self, encoder: Encoder) -> None:
        m = self.index.manifest
        if encoder.model_id != m.model_id or encoder.dim != m.dim:
            raise ModelMismatch(
                f"the index was built with {m.model_id} ({m.dim}-d) but the query model is "
                f"{encoder.model_id} ({encoder.dim}-d); rebuild with `review-search index --full --model ...`"
            )

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = embedding.load_encoder(self.index.manifest.model_id)
            self._check(self._encoder)
        return self._encoder

    def _allowed_rows(self, filters: Filters) -> np.ndarray | None:
        return self.index.rows_where(*filters.sql()) if filters.active else None

    def dense_scores(self, query: str, allowed: np.ndarray | None, limit: int) -> dict[int, float]:
        """Cosine similarity of the query to its `limit` nearest (allowed) rows."""
        n = min(limit, self.index.size if allowed is None else len(allowed))
        if n == 0:
            return {}
        return self.index.dense_search(self.encoder.embed_query(query), n, allowed)

    def lexical_scores(self, query: str, allowed: np.ndarray | None, limit: int) -> dict[int, float]:
        """BM25 scores of the `limit` best (allowed) rows with at least one matching term."""
        scores = self.index.lexical.scores(query)
        rows = np.nonzero(scores > 0)[0]
        if allowed is not None:
            rows = np.intersect1d(rows, allowed)
        if len(rows) > limit:
            rows = rows[np.argpartition(-scores[rows], limit - 1)[:limit]]
        return {int(r): float(scores[r]) for r in rows}

    def search(
        self,
        query: str,
        k: int = 10,
        mode: Mode = "hybrid",
        group: Group = "passage",
        filters: Filters = Filters(),
        min_score: float | None = None,
    ) -> list[Hit]:
        """The top `k` passages (or reviews, with group="review") for `query`, best first.

        `min_score` drops hits whose cosine similarity to the query is below it
        (in lexical mode too, which then also embeds the query).
        """
        query = query.strip()
        if not query:
            raise ValueError("the query is empty")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")
        allowed = self._allowed_rows(filters)
        # Fusion only needs each side's head; a few reviews have many passages each.
        limit = max(CANDIDATES, k * 50)
        dense = self.dense_scores(query, allowed, limit) if mode != "lexical" or min_score is not None else {}
        lexical = self.lexical_scores(query, allowed, limit) if mode != "dense" else {}
        if min_score is not None:
            floor = {r for r, s in dense.items() if s >= min_score}
            dense = {r: s for r, s in dense.items() if r in floor}
            lexical = {r: s for r, s in lexical.items() if r in floor}
        if mode == "dense":
            fused = dense
        elif mode == "lexical":
            fused = lexical
        else:
            fused = rrf([dense, lexical])
        order = sorted(fused, key=lambda r: (-fused[r], r))
        # Reviews have a handful of passages each, so k*50 rows hold k reviews in practice.
        hits: list[Hit] = []
        seen: dict[tuple, int] = {}
        for p in self.index.passages(order[: k if group == "passage" else k * 50]):
            row = p.row
            if group == "review":
                if p.review_key in seen:
                    i = seen[p.review_key]
                    hits[i] = replace(hits[i], passages=hits[i].passages + 1)
                    continue
                seen[p.review_key] = len(hits)
            hits.append(Hit(p, fused[row], dense.get(row), lexical.get(row)))
        return hits[:k]


def rrf(rankings: list[dict[int, float]], k: int = RRF_K) -> dict[int, float]:
    """Reciprocal rank fusion of several {row: score} rankings."""
    fused: dict[int, float] = {}
    for scores in rankings:
        for rank, row in enumerate(sorted(scores, key=lambda r: (-scores[r], r)), start=1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank)
    return fused
