"""What a Qdrant index holds and how it is read and changed, whichever way the engine is reached.

One point per passage carries its public fields and what a rebuild needs as payload, and three
vectors: `dense` (the passage vector), `tokens` (its token states, a MaxSim multivector in
float16) and `bm25` (its BM25 term weights without IDF, as a sparse vector the engine applies IDF
to). One point per review and one per paper carry the tokens of all their passages (`review`,
`paper`), so the engine computes late mode's three MaxSim levels exactly: a per-passage
multivector cannot give the MaxSim over a whole review.

Rows are not stored: a reader numbers the passages in the order the manifest lists their files,
and within a file in review order. Adding a week therefore changes no other passage's point.

`Engine` is the handful of engine calls this needs; embedded.py and server.py each provide one.
A build sends only the new passages (and the reviews and papers they belong to), the changed
payloads and the deletions: unchanged points are never sent again.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Callable, Iterable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np

from ..errors import IndexDamaged
from ..model.protocol import Encoder, Progress
from ..model.tokens import unit_rows
from ..notes.terms import QuerySegmenter
from ..storage import (CheckReport, ClosedOnExit, Filters, IndexInfo, LateScores, Paper, StoredPassage, counts,
                       paper_groups)
from ..store.bm25 import LexicalIndex
from ..store.index import created_now, unit_rows_ok
from ..store.update import EMBED_CHUNK

DENSE, TOKENS, REVIEW, PAPER, BM25 = "dense", "tokens", "review", "paper", "bm25"
KIND = "kind"  # payload field: passage, review or paper
UPSERT_BATCH = 64  # points sent per upsert


class Sparse(NamedTuple):
    """A sparse vector: term ids and their weights."""

    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class Where:
    """Which points an engine call may touch: one kind, optionally only some ids, and the passage filters."""

    kind: str
    ids: frozenset[str] | None = None
    reviewer: str | None = None
    topic_cf: str | None = None  # casefolded substring of the title
    weeks: tuple[int, int] | None = None
    section: str | None = None

    @classmethod
    def passages(cls, filters: Filters = Filters(), ids: Iterable[str] | None = None) -> "Where":
        return cls("passage", None if ids is None else frozenset(ids), filters.reviewer,
                   None if filters.topic is None else filters.topic.casefold(), filters.weeks,
                   None if filters.section is None else filters.section.value)


class NewPoint(NamedTuple):
    id: str
    payload: dict
    vectors: dict  # name -> list (dense), list of lists (multivector) or Sparse


class Engine(Protocol):
    """The engine calls a Qdrant index is read and written with. `query` returns (id, score) best first."""

    def query(self, using: str, vector, limit: int, where: Where) -> list[tuple[str, float]]: ...

    def scroll(self, where: Where, fields: list[str] | bool = True) -> Iterator[tuple[str, dict]]: ...

    def retrieve(self, ids: Sequence[str], using: str) -> dict[str, list]: ...

    def count(self, where: Where) -> int: ...

    def upsert(self, points: list[NewPoint]) -> None: ...

    def overwrite_payload(self, id: str, payload: dict) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def close(self) -> None: ...


def _uuid(*parts: object) -> str:
    return str(uuid.UUID(bytes=hashlib.blake2b("\0".join(map(str, parts)).encode("utf-8"), digest_size=16).digest()))


def _term_id(term: str) -> int:
    """A term's sparse-vector index: stable across builds, with no vocabulary to keep in sync."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


def passage_ids(records: Sequence[StoredPassage]) -> list[str]:
    """Point ids: the passage's file and content key, numbered when one file repeats a passage."""
    seen: Counter = Counter()
    ids = []
    for r in records:
        n = seen[(r.path, r.key)]
        seen[(r.path, r.key)] += 1
        ids.append(_uuid("passage", r.path, r.key, n))
    return ids


def _review_id(p: StoredPassage) -> str:
    return _uuid("review", p.path, p.topic_no, p.review_no)


def _paper_id(p: StoredPassage) -> str:
    return _uuid("paper", p.path, p.topic_no)


def _members_digest(ids: Iterable[str]) -> str:
    return hashlib.blake2b("\0".join(ids).encode(), digest_size=16).hexdigest()


def _payload(p: StoredPassage) -> dict:
    fields = asdict(p)
    del fields["row"]
    return {**fields, KIND: "passage", "topic_cf": p.topic.casefold()}


def _passage(payload: dict, row: int) -> StoredPassage:
    return StoredPassage(**{k: payload[k] for k in StoredPassage.__dataclass_fields__ if k != "row"}, row=row)


def manifest_of(records: Sequence[StoredPassage], backend: str, format: int, encoder: Encoder,
                roots: list[str]) -> dict:
    """What a build records beside the points: the model, the counts, and the files in row order."""
    return {"backend": backend, "format": format, "model_id": encoder.model_id, "dim": encoder.dim,
            "created": created_now(), **counts(records), "order": list(dict.fromkeys(r.path for r in records)),
            "roots": list(roots)}


def _in_row_order(payloads: list[tuple[str, dict]], order: list[str]) -> list[tuple[str, dict]]:
    """Passages as the build numbered them: files in manifest order, then review by review."""
    place = {path: i for i, path in enumerate(order)}
    return sorted(payloads, key=lambda item: (place.get(item[1]["path"], len(place)), item[1]["topic_no"],
                                              item[1]["review_no"], item[1]["passage_no"]))


class QdrantIndex(ClosedOnExit):
    """One live Qdrant index: a storage.Backend over an Engine. Usable with `with`.

    `where` names the index in messages, `version` is the build that is live; the paper-level
    BM25, which has no per-point form, comes from `paper_lexical()` (a subclass says how).
    """

    def __init__(self, engine: Engine, manifest: dict, version: str, where: str, roots: list[str] | None = None):
        self.engine, self.manifest, self.version, self.where = engine, manifest, version, where
        found = _in_row_order(list(engine.scroll(Where("passage"))), manifest["order"])
        self._passages = [_passage(payload, row) for row, (_, payload) in enumerate(found)]
        self.ids = [pid for pid, _ in found]
        if len(found) != manifest["passages"] or {p.path for p in self._passages} - set(manifest["order"]):
            raise self.damaged(f"{where} holds {len(found)} passages, its manifest says {manifest['passages']}")
        self._row = {pid: i for i, pid in enumerate(self.ids)}
        self.size = len(found)

    @property
    def info(self) -> IndexInfo:
        m = self.manifest
        return IndexInfo(self.version, m["model_id"], m["dim"], m["created"], len(m["files"]), m["passages"],
                         m["reviews"], m["roots"])

    def damaged(self, what: str) -> IndexDamaged:
        return IndexDamaged(f"{what}; the index needs a rebuild", roots=self.manifest.get("roots"))

    def passages(self, rows: Iterable[int] | None = None) -> list[StoredPassage]:
        if rows is None:
            return list(self._passages)
        return [self._passages[int(r)] for r in rows if 0 <= int(r) < self.size]

    def paper_groups(self, rows: Iterable[int]) -> list[list[list[int]]]:
        ps = self._passages
        return paper_groups((int(r), ps[int(r)].path, ps[int(r)].topic_no, ps[int(r)].review_no) for r in rows)

    def papers(self) -> list[Paper]:
        groups: dict[tuple, list[StoredPassage]] = {}
        for p in self._passages:
            groups.setdefault(p.paper_key, []).append(p)
        out = [Paper(ps[0].week, ps[0].file, ps[0].topic_no, ps[0].topic, ps[0].presenter,
                     sorted({q.reviewer for q in ps}), len(ps)) for ps in groups.values()]
        return sorted(out, key=lambda p: (p.week is None, p.week or 0, p.file, p.topic_no))

    def review_at(self, file: str, line: int) -> list[StoredPassage]:
        before = [p for p in self._passages if (p.path == file or p.file == file) and p.line <= line]
        if not before:
            return []
        hit = max(before, key=lambda p: (p.path == file, p.line))
        review = sorted((p for p in self._passages if p.review_key == hit.review_key), key=lambda p: p.passage_no)
        return review if line <= review[-1].end_line + 3 else []

    def rows_matching(self, filters: Filters) -> np.ndarray:
        """Rows `filters` allow, as the engine evaluates them on the payload."""
        rows = [self._row[pid] for pid, _ in self.engine.scroll(Where.passages(filters), fields=False) if pid in self._row]
        return np.array(sorted(rows), dtype=np.int64)

    def _ids(self, rows: Iterable[int] | None) -> list[str] | None:
        return None if rows is None else [self.ids[int(r)] for r in rows]

    def _rows(self, scored: list[tuple[str, float]]) -> dict[int, float]:
        return {self._row[pid]: score for pid, score in scored if pid in self._row}

    def dense_search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> dict[int, float]:
        where = Where.passages(ids=self._ids(allowed))
        return self._rows(self.engine.query(DENSE, np.asarray(vector, np.float32).tolist(), max(k, 1), where))

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        ids = self._ids(range(self.size) if rows is None else rows)
        found = self.engine.retrieve(ids, DENSE)
        if len(found) != len(set(ids)):
            raise self.damaged(f"{self.where} is missing passage vectors")
        return np.array([found[i] for i in ids], dtype=np.float32).reshape(len(ids), self.manifest["dim"])

    @cached_property
    def _segmenter(self) -> QuerySegmenter:
        return QuerySegmenter(frozenset(t for p in self._passages for t in p.terms.split()))

    def query_terms(self, query: str) -> list[str]:
        return [t for t in self._segmenter.terms(query) if t in self._segmenter.vocab]

    def lexical_scores(self, terms: list[str], allowed: np.ndarray | None, limit: int) -> dict[int, float]:
        """BM25 from the engine: the query's term counts against the stored weights, IDF applied by Qdrant."""
        if not terms:
            return {}
        repeats = Counter(_term_id(t) for t in terms)
        query = Sparse(list(repeats), [float(v) for v in repeats.values()])
        scored = self.engine.query(BM25, query, max(limit, 1), Where.passages(ids=self._ids(allowed)))
        return {r: s for r, s in self._rows(scored).items() if s > 0}

    def paper_lexical(self) -> LexicalIndex:
        """The paper-level BM25 of these passages: built from them unless a subclass keeps it stored."""
        return LexicalIndex.of_papers(self._passages)

    @cached_property
    def _paper_lexical(self) -> LexicalIndex:
        return self.paper_lexical()

    def paper_lexical_scores(self, terms: list[str], rows: Iterable[int]) -> dict[int, float]:
        return self._paper_lexical.scores_of(terms, rows)

    def late_scores(self, query: np.ndarray, papers: list[list[list[int]]]) -> LateScores:
        """The three MaxSim levels from the engine: the passage, review and paper multivectors of the rows.

        Qdrant's MaxSim sums over the query's tokens; the mean the ranking uses is that over their number.
        """
        rows = [r for paper in papers for review in paper for r in review]
        if not rows or not len(query):
            zero = {r: 0.0 for r in rows}
            return LateScores(dict(zero), dict(zero), dict(zero))
        q, m = np.asarray(query, np.float32).tolist(), len(query)
        ps = [self._passages[r] for r in rows]

        def maxsim(using: str, kind: str, ids: set[str]) -> dict[str, float]:
            return {pid: s / m for pid, s in self.engine.query(using, q, len(ids), Where(kind, frozenset(ids)))}

        by_passage = maxsim(TOKENS, "passage", {self.ids[r] for r in rows})
        by_review = maxsim(REVIEW, "review", {_review_id(p) for p in ps})
        by_paper = maxsim(PAPER, "paper", {_paper_id(p) for p in ps})
        try:
            return LateScores(paper={r: by_paper[_paper_id(p)] for r, p in zip(rows, ps)},
                              review={r: by_review[_review_id(p)] for r, p in zip(rows, ps)},
                              passage={r: by_passage[self.ids[r]] for r in rows})
        except KeyError as e:
            raise self.damaged(f"{self.where} is missing token states") from e

    def warm(self) -> None:
        _ = (self._paper_lexical, self._segmenter)  # reading a cached property is what loads it

    def check_points(self) -> None:
        """Every review and paper point present, every passage vector unit length (IndexDamaged if not)."""
        for kind, key in (("review", _review_id), ("paper", _paper_id)):
            want = len({key(p) for p in self._passages})
            if (n := self.engine.count(Where(kind))) != want:
                raise self.damaged(f"{self.where} holds {n} {kind} points, its passages make {want}")
        if not unit_rows_ok(self.vectors()).all():
            raise self.damaged(f"{self.where} holds damaged vectors")

    def check(self) -> CheckReport:
        self.check_points()
        return CheckReport(self.where, 0, 0, self.size)

    def close(self) -> None:
        self.engine.close()


def unchanged(old: QdrantIndex | None, records: Sequence[StoredPassage], roots: list[str]) -> bool:
    """Whether the live index already holds exactly `records` from `roots`: a build then writes nothing."""
    return old is not None and old.manifest["roots"] == roots and old.passages() == list(records) and \
        old.ids == passage_ids(records)


def write_changes(engine: Engine, records: Sequence[StoredPassage], before: dict[str, StoredPassage],
                  encoder: Encoder, on_start: Callable[[int], None] | None, progress: Progress | None,
                  heartbeat: Callable[[], None] = lambda: None) -> tuple[int, float]:
    """Send the new passages, the changed payloads, the deletions and the reviews and papers they
    touch, against `before` (what the engine holds, by point id); returns how many passages were
    embedded and the seconds it took. `heartbeat` is called between batches (a lock's keep-alive)."""
    ids = passage_ids(records)
    todo = [i for i, pid in enumerate(ids) if pid not in before]
    if on_start:
        on_start(len(todo))
    weights = _bm25_weights([r.terms.split() for r in records])
    states: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for start in range(0, len(todo), EMBED_CHUNK):
        chunk = todo[start : start + EMBED_CHUNK]
        vectors, tokens = encoder.embed_passages_and_tokens([records[i].embed_text for i in chunk], progress)
        points = []
        for i, v, t in zip(chunk, vectors, tokens):
            states[ids[i]] = unit_rows(t).astype(np.float16)
            points.append(NewPoint(ids[i], _payload(records[i]), {
                DENSE: v.tolist(), TOKENS: states[ids[i]].astype(np.float32).tolist(), BM25: Sparse(*weights[i])}))
        for b in range(0, len(points), UPSERT_BATCH):
            engine.upsert(points[b : b + UPSERT_BATCH])
            heartbeat()
    seconds = time.perf_counter() - started
    for i, pid in enumerate(ids):
        # Same text, moved or renumbered within its file: payload only (rows are not stored).
        if pid in before and replace(before[pid], row=0) != replace(records[i], row=0):
            engine.overwrite_payload(pid, _payload(records[i]))
    if gone := sorted(set(before) - set(ids)):
        engine.delete(gone)
    for kind, vector, key in (("review", REVIEW, _review_id), ("paper", PAPER, _paper_id)):
        _write_groups(engine, kind, vector, key, records, ids, states)
        heartbeat()
    return len(todo), seconds


def _write_groups(engine: Engine, kind: str, vector: str, key, records, ids: list[str],
                  states: dict[str, np.ndarray]) -> None:
    """One point per review (or paper) with all its passages' tokens, sent again only when its passages changed."""
    members: dict[str, list[str]] = {}
    for r, pid in zip(records, ids):
        members.setdefault(key(r), []).append(pid)
    existing = {gid: payload.get("members") for gid, payload in engine.scroll(Where(kind), fields=["members"])}
    changed = {gid: pids for gid, pids in members.items() if existing.get(gid) != _members_digest(pids)}
    stored = sorted(set().union(*changed.values()) - states.keys()) if changed else []
    for pid, tokens in (engine.retrieve(stored, TOKENS) if stored else {}).items():
        states[pid] = np.asarray(tokens, np.float16)
    points = [NewPoint(gid, {KIND: kind, "members": _members_digest(pids)},
                       {vector: np.vstack([states[p] for p in pids]).astype(np.float32).tolist()})
              for gid, pids in changed.items()]
    for b in range(0, len(points), UPSERT_BATCH):
        engine.upsert(points[b : b + UPSERT_BATCH])
    if gone := sorted(set(existing) - set(members)):
        engine.delete(gone)


def _bm25_weights(terms: Sequence[list[str]]) -> list[tuple[list[int], list[float]]]:
    """Per passage, its terms' sparse indices and BM25 weights without IDF (the engine applies its own)."""
    return [(list(map(_term_id, parts)), list(parts.values()))
            for parts in LexicalIndex.build(terms).weights_without_idf()]
