"""Ranking: a query to the best passages or reviews, dense, lexical or both.

Dense scores are cosine similarities from FAISS; lexical scores are BM25 over
Korean morphemes; late scores are MaxSim over token states (rank/late.py).
Late mode (the default) fuses the MaxSim and BM25 rankings (of reviews,
passages and papers: rank/late.py has the weights), hybrid mode the
dense and BM25 rankings, with reciprocal rank fusion, which needs no score
calibration between very different scales (docs/ranking.md has
the measurements that chose them).
Filters narrow the candidate rows before the top-k cut, so a filtered search
still returns k results when k exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import BadRequest, ModelMismatch, shorten
from ..model import encoders as embedding
from ..model.protocol import Encoder
from ..storage import Backend, Filters, LateScores, StoredPassage
from . import late
from .fusion import rrf
from .request import Group, Mode, SearchRequest

CANDIDATES = 1000  # rows taken from each ranking before fusion: all of them for small indexes
# MaxSim scores every row of an index up to this size; on a larger one, only this many
# rows: the head of the dense and BM25 rankings fused. On 1,392 passages that took a
# warm query from 57 ms to 38 ms; on the labelled sets (186 passages) a pool of 100 rows
# left nDCG@10 unchanged on both, 60 lost 0.014 on dev-corpus-2 (bench/late_pool.py).
LATE_POOL = 400


@dataclass(frozen=True)
class Hit:
    """One result: a passage (the best of its review when grouped) and its scores."""

    passage: StoredPassage
    score: float  # shown to people, never above the hit before it: see `shown_scores`
    dense: float | None  # cosine similarity to the query, when computed
    lexical: float | None  # BM25 score, when computed
    passages: int = 1  # passages of the same review that matched, when grouped
    maxsim: float | None = None  # MaxSim of the query against the whole review's tokens (late mode)
    fused: float | None = None  # the reciprocal-rank-fusion value the order came from (late, hybrid)

    def as_dict(self) -> dict:
        """The JSON shape of `query --json` and the HTTP API."""
        scores = {name: getattr(self, name) for name in ("score", "dense", "lexical", "maxsim", "fused")}
        return {**self.passage.public(), **{k: None if v is None else round(float(v), 6) for k, v in scores.items()}}


@dataclass(frozen=True)
class SearchResult:
    """The hits of one search, best first, and the query terms the lexical side matched (for highlighting)."""

    request: SearchRequest
    hits: list[Hit]
    terms: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Embedded:
    """What the model gave for a query: its vector and its MaxSim token rows, where the search needs them."""

    query: str
    vector: np.ndarray | None = None
    tokens: np.ndarray | None = None


class Searcher:
    """Answers queries against one loaded index; keeps the model and index in memory between queries."""

    def __init__(self, index: Backend, encoder: Encoder | None = None):
        self.index = index
        self._encoder = encoder
        if encoder is not None:
            self._check(encoder)

    def _check(self, encoder: Encoder) -> None:
        m = self.index.info
        if encoder.model_id != m.model_id or encoder.dim != m.dim:
            raise ModelMismatch(
                f"the index was built with {m.model_id} ({m.dim}-d) but the query model is "
                f"{encoder.model_id} ({encoder.dim}-d); rebuild the index with the model you want"
            )

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = embedding.load_encoder(self.index.info.model_id)
            self._check(self._encoder)
        return self._encoder

    def dense_scores(self, vector: np.ndarray, allowed: np.ndarray | None, limit: int) -> dict[int, float]:
        """Cosine similarity of the query `vector` to its `limit` nearest (allowed) rows."""
        n = min(limit, self.index.size if allowed is None else len(allowed))
        if n == 0:
            return {}
        return self.index.dense_search(vector, n, allowed)

    def late_scores(self, tokens: np.ndarray, rows: np.ndarray) -> LateScores:
        """Paper-, review- and passage-level MaxSim of the query's `tokens` for the given rows (Backend.late_scores)."""
        if not len(rows):
            return LateScores({}, {}, {})
        return self.index.late_scores(tokens, self.index.paper_groups(rows))

    def _scores_every_row(self) -> bool:
        """Whether MaxSim scores every row (small indexes) rather than a pool from the dense and BM25 rankings."""
        return self.index.size <= LATE_POOL

    def _late_candidates(self, allowed: np.ndarray | None, dense: dict, lexical: dict) -> np.ndarray:
        """Rows MaxSim is computed for: all (allowed) rows of a small index, else the LATE_POOL best of dense and BM25 fused."""
        if self._scores_every_row():
            return allowed if allowed is not None else np.arange(self.index.size)
        fused = rrf([dense, lexical])
        return np.array(sorted(sorted(fused, key=lambda r: (-fused[r], r))[:LATE_POOL]), dtype=np.int64)

    def _needs(self, request: SearchRequest) -> tuple[bool, bool]:
        """Whether `search(request)` needs the query's vector, and its MaxSim token rows.

        Late ranking needs a vector too on large indexes (for the dense
        candidates); it then takes both from one pass.
        """
        late_mode = request.mode == Mode.LATE
        vector = request.mode in (Mode.DENSE, Mode.HYBRID) or (late_mode and not self._scores_every_row())
        return vector, late_mode

    def embed(self, request: SearchRequest) -> Embedded:
        """Run the model on the query for what `search(request)` needs (a server does it off its index thread)."""
        vector, tokens = self._needs(request)
        if vector and tokens:
            return Embedded(request.query, *self.encoder.embed_query_and_tokens(request.query))
        if tokens:
            return Embedded(request.query, tokens=self.encoder.embed_query_tokens(request.query))
        return Embedded(request.query, vector=self.encoder.embed_query(request.query) if vector else None)

    def search(self, request: SearchRequest, embedded: Embedded | None = None) -> SearchResult:
        """The top `request.k` passages (or reviews) for the request's query, best first.

        `embedded` is `embed(request)` done beforehand by this searcher's model;
        it is embedded again when it lacks what this index needs. `min_score`
        drops hits whose shown score (`shown_scores`) is below it.
        """
        query, mode = request.query, request.mode
        allowed = allowed_rows(self.index, request.filters)
        # Fusion only needs each side's head; a few reviews have many passages each.
        limit = max(CANDIDATES, request.k * 50)
        terms = self.index.query_terms(query) if mode != Mode.DENSE else []
        need_vector, need_tokens = self._needs(request)
        if (embedded is None or embedded.query != query or (need_vector and embedded.vector is None)
                or (need_tokens and embedded.tokens is None)):
            embedded = self.embed(request)
        vector, tokens = embedded.vector, embedded.tokens
        dense = self.dense_scores(vector, allowed, limit) if vector is not None else {}
        lexical = self.index.lexical_scores(terms, allowed, limit) if mode != Mode.DENSE else {}
        if mode == Mode.DENSE:
            fused, maxsim = dense, {}
        elif mode == Mode.LEXICAL:
            fused, maxsim = lexical, {}
        elif mode == Mode.HYBRID:
            fused, maxsim = rrf([dense, lexical]), {}
        else:
            ms = self.late_scores(tokens, self._late_candidates(allowed, dense, lexical))
            fused, maxsim = late.fuse(ms, lexical, self.index.paper_lexical_scores(terms, ms.review)), ms.review
        hits = shown_scores(self._hits(request, fused, dense, lexical, maxsim), mode)
        if request.min_score is not None:
            hits = [h for h in hits if h.score >= request.min_score]
        return SearchResult(request, hits, terms or query.split())

    def _hits(self, request: SearchRequest, fused: dict[int, float], dense: dict[int, float],
              lexical: dict[int, float], maxsim: dict[int, float]) -> list[Hit]:
        """The best `request.k` rows of `fused` as hits, one per review unless raw passages are asked for."""
        k, mode = request.k, request.mode
        order = sorted(fused, key=lambda r: (-fused[r], r))
        by_review = request.group == Group.REVIEW
        # Reviews have a handful of passages each, so k*50 rows hold k reviews in practice.
        hits: list[Hit] = []
        seen: dict[tuple, int] = {}
        for p in self.index.passages(order[: k * 50 if by_review else k]):
            row = p.row
            if by_review:
                if p.review_key in seen:
                    i = seen[p.review_key]
                    hits[i] = replace(hits[i], passages=hits[i].passages + 1)
                    continue
                seen[p.review_key] = len(hits)
            hits.append(Hit(p, 0.0, dense.get(row), lexical.get(row), maxsim=maxsim.get(row),
                            fused=fused[row] if mode in (Mode.LATE, Mode.HYBRID) else None))
        return hits[:k]


def allowed_rows(index: Backend, filters: Filters) -> np.ndarray | None:
    """The rows `filters` allow (None: all of them); a BadRequest saying which filter matched nothing,
    with the nearest values the index holds, when they allow none."""
    if not filters.active:
        return None
    rows = index.rows_matching(filters)
    if not len(rows):
        raise BadRequest(f"no review matches: {_why_nothing(index, filters)}")
    return rows


def _why_nothing(index: Backend, f: Filters) -> str:
    papers = index.papers()
    if f.reviewer is not None:
        names = sorted({r for p in papers for r in p.reviewers if r})
        if f.reviewer not in names:
            return f"no reviewer is named {f.reviewer!r}{_nearest(f.reviewer, names, 'reviewers')}"
    if f.topic is not None:
        titles = list(dict.fromkeys(p.topic for p in papers))
        if not any(f.topic.casefold() in t.casefold() for t in titles):
            return f"no paper title contains {f.topic!r}{_nearest(f.topic, titles, 'papers')}"
    if f.weeks is not None:
        lo, hi = f.weeks
        weeks = sorted({p.week for p in papers if p.week is not None})
        if not any(lo <= w <= hi for w in weeks):
            asked = f"week {lo}" if lo == hi else f"weeks {lo}-{hi}"
            held = f"; the index holds weeks {', '.join(map(str, weeks))}" if weeks else "; no file has a week"
            return f"no {asked} in the index{held}"
    if f.section is not None and not len(index.rows_matching(Filters(section=f.section))):
        return f"no passage is of the kind {f.section.value}"
    return "each filter matches, but not together"


def _nearest(value: str, known: list[str], what: str, n: int = 3) -> str:
    """`; closest: a, b` (values containing it, or with a word spelled alike), else a few of the known values."""
    from difflib import SequenceMatcher

    folded = value.casefold()

    def likeness(k: str) -> float:
        if folded in k.casefold() or k.casefold() in folded:
            return 1.0
        return max(SequenceMatcher(None, folded, w).ratio() for w in [k.casefold(), *k.casefold().split()])

    scored = sorted(((likeness(k), k) for k in known), key=lambda x: -x[0])
    close = [k for score, k in scored if score >= 0.6][:n]
    shown = [shorten(k, 60) for k in (close or known[:n])]
    if not shown:
        return ""
    return f"; closest: {', '.join(shown)}" if close else f"; {what}: {', '.join(shown)}" + (", …" if len(known) > n else "")


def shown_scores(hits: list[Hit], mode: Mode) -> list[Hit]:
    """The hits with the score people see: each hit's own evidence, capped by the score above it.

    The evidence is the review's MaxSim in late mode (a cosine-like value), the
    cosine in dense and hybrid mode, BM25 in lexical mode. Fused modes do not
    order by it, so it alone would go up and down the list; the cap keeps the
    number monotone in the rank, and a hit's score depends only on the hits
    above it, so a `min_score` floor keeps exactly a head of the list. A hit
    without evidence (outside the late pool, past the dense head) takes the
    score above it, or its cosine where known.
    """
    shown, cap = [], float("inf")
    for h in hits:
        evidence = {Mode.LATE: h.maxsim, Mode.HYBRID: h.dense, Mode.DENSE: h.dense, Mode.LEXICAL: h.lexical}[mode]
        if evidence is None:
            evidence = h.dense if h.dense is not None else (cap if cap != float("inf") else 0.0)
        cap = min(cap, evidence)
        shown.append(replace(h, score=cap))
    return shown
