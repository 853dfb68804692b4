"""The Qdrant backend, embedded: an index folder whose generations each hold a Qdrant Edge shard
(Qdrant's own engine as a library), named on the command line as `--index qdrant:PATH`.

The folder keeps the local store's discipline (store/index.py): `CURRENT` names the live
generation, `settings.json` what it was built from, `.lock` is held by a build. A generation is
`manifest.json`, `shard/` and `paper_lexical/` (the paper-level BM25, as the local backend keeps
it). One point per passage carries its public fields and what a rebuild
needs as payload, and three vectors: `dense` (the passage vector), `tokens` (its token states, a
MaxSim multivector in float16) and `bm25` (its BM25 term weights without IDF, as a sparse vector
the engine applies IDF to). One point per review and one per paper carry the tokens of all their
passages (`review`, `paper`), so the engine computes late mode's three MaxSim levels exactly:
a per-passage multivector cannot give the MaxSim over a whole review.

A build copies the live shard into a new generation, upserts the new and changed passages (and
the reviews and papers they belong to), deletes the removed ones, and swaps `CURRENT`: unchanged
points are never sent to the engine again, and a build that dies leaves the previous generation
live. Shards are written without a WAL, by the build that made them only, so any number of
readers (a server, a CLI query) can open the live one at once.

What differs from the local backend: passages are held in memory once a reader opens the index
(rows, metadata, paper groups and the BM25 vocabulary come from them); paper-level BM25 has no
per-point form and is scored from its own files, written by each build; the BM25 weights of
passages a build did not touch keep the corpus statistics (average length) of the build that
wrote them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections import Counter
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import BadRequest, IndexDamaged, NoIndex
from .model.protocol import Encoder, Progress
from .model.tokens import unit_rows
from .notes.reader import Problem
from .notes.terms import QuerySegmenter
from .storage import (CheckReport, ClosedOnExit, Filters, IndexInfo, LateScores, Paper, StoredPassage, Written, counts,
                      paper_groups)
from .store.bm25 import LexicalIndex
from .store.index import (MANIFEST, PAPER_LEXICAL, SETTINGS, Writer, created_now, current_generation, read_settings,
                          unit_rows_ok)
from .store.update import EMBED_CHUNK

PREFIX = "qdrant:"
BACKEND = "qdrant-edge"
FORMAT_VERSION = 2  # 2 added paper_lexical/
SHARD = "shard"
DENSE, TOKENS, REVIEW, PAPER, BM25 = "dense", "tokens", "review", "paper", "bm25"
KIND = "kind"  # payload field: passage, review or paper
UPSERT_BATCH = 64  # points sent per upsert


def _engine():
    """qdrant_edge, or a one-line error saying how to install it (it is an optional extra)."""
    try:
        import qdrant_edge
    except ImportError:
        raise BadRequest(f"{PREFIX} indexes need Qdrant's engine: pip install -e '.[qdrant]' (qdrant-edge-py)") from None
    return qdrant_edge


def location_path(location: Path | str) -> Path | None:
    """The folder a `qdrant:PATH` location names, or None for a location of another backend."""
    text = str(location)
    return Path(text[len(PREFIX):]) if text.startswith(PREFIX) else None


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


def _config(dim: int):
    from qdrant_edge import (Distance, EdgeConfig, EdgeOptimizersConfig, EdgeSparseVectorParams, EdgeVectorParams,
                             HnswIndexConfig, Modifier, MultiVectorComparator, MultiVectorConfig, VectorStorageDatatype)

    # Token multivectors are only ever scored for given ids (MaxSim over a candidate pool), never
    # searched: no HNSW graph for them (m=0).
    def multivector() -> EdgeVectorParams:
        return EdgeVectorParams(size=dim, distance=Distance.Dot, datatype=VectorStorageDatatype.Float16,
                                multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
                                hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000))

    return EdgeConfig(
        vectors={DENSE: EdgeVectorParams(size=dim, distance=Distance.Dot), TOKENS: multivector(),
                 REVIEW: multivector(), PAPER: multivector()},
        sparse_vectors={BM25: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        # The engine's IDF counts deleted points until a segment is vacuumed: vacuum at once.
        optimizers=EdgeOptimizersConfig(deleted_threshold=0.0, vacuum_min_vector_number=1),
        wal_enabled=False,
    )


def _kind(kind: str):
    from qdrant_edge import FieldCondition, MatchValue

    return FieldCondition(KIND, match=MatchValue(kind))


def _has_ids(ids: Iterable[str]):
    from qdrant_edge import HasIdCondition

    return HasIdCondition(set(ids))


def _payload(p: StoredPassage) -> dict:
    return {**asdict(p), KIND: "passage", "topic_cf": p.topic.casefold()}


def _passage(payload: dict) -> StoredPassage:
    return StoredPassage(**{k: payload[k] for k in StoredPassage.__dataclass_fields__})


class QdrantIndex(ClosedOnExit):
    """One live generation of a `qdrant:` index: a storage.Backend. Usable with `with`."""

    def __init__(self, folder: Path, manifest: dict, shard):
        self.folder = folder
        self.manifest = manifest
        self._shard = shard
        records, ids = [], []
        for rec in _scroll_all(shard, _filter(_kind("passage"))):
            records.append(_passage(rec.payload))
            ids.append(str(rec.id))
        order = sorted(range(len(records)), key=lambda i: records[i].row)
        self._passages = [records[i] for i in order]
        self.ids = [ids[i] for i in order]
        if [p.row for p in self._passages] != list(range(len(records))) or len(records) != manifest["passages"]:
            raise self.damaged(f"{folder / SHARD} holds {len(records)} passages, the manifest says {manifest['passages']}")
        self._row = {pid: i for i, pid in enumerate(self.ids)}
        self.size = len(records)

    @property
    def info(self) -> IndexInfo:
        m = self.manifest
        return IndexInfo(self.folder.name, m["model_id"], m["dim"], m["created"], len(m["files"]), m["passages"],
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
            groups.setdefault((p.path, p.topic_no), []).append(p)
        out = [Paper(ps[0].week, ps[0].file, ps[0].topic_no, ps[0].topic, ps[0].presenter,
                     sorted({q.reviewer for q in ps}), len(ps)) for ps in groups.values()]
        return sorted(out, key=lambda p: (p.week is None, p.week or 0, p.file, p.topic_no))

    def review_at(self, file: str, line: int) -> list[StoredPassage]:
        before = [p for p in self._passages if (p.path == file or p.file == file) and p.line <= line]
        if not before:
            return []
        hit = max(before, key=lambda p: (p.path == file, p.line))
        review = sorted((p for p in self._passages if (p.path, p.topic_no, p.review_no) == (hit.path, hit.topic_no, hit.review_no)),
                        key=lambda p: p.passage_no)
        return review if line <= review[-1].end_line + 3 else []

    def rows_matching(self, filters: Filters) -> np.ndarray:
        """Rows `filters` allow, as the engine evaluates them on the payload."""
        from qdrant_edge import FieldCondition, MatchSubstring, MatchValue, RangeFloat

        must = [_kind("passage")]
        if filters.reviewer is not None:
            must.append(FieldCondition("reviewer", match=MatchValue(filters.reviewer)))
        if filters.topic is not None:
            must.append(FieldCondition("topic_cf", match=MatchSubstring(filters.topic.casefold())))
        if filters.weeks is not None:
            must.append(FieldCondition("week", range=RangeFloat(gte=filters.weeks[0], lte=filters.weeks[1])))
        if filters.section is not None:
            must.append(FieldCondition("section", match=MatchValue(filters.section.value)))
        rows = [rec.payload["row"] for rec in _scroll_all(self._shard, _filter(*must), with_payload=["row"])]
        return np.array(sorted(rows), dtype=np.int64)

    def _query(self, query, using: str, limit: int, ids: Iterable[str] | None, kind: str = "passage") -> list:
        from qdrant_edge import Query, QueryRequest

        conditions = [_kind(kind)] + ([] if ids is None else [_has_ids(ids)])
        return self._shard.query(QueryRequest(limit=max(limit, 1), query=Query.Nearest(query, using=using),
                                              filter=_filter(*conditions), with_payload=False))

    def _rows(self, points) -> dict[int, float]:
        return {self._row[str(p.id)]: float(p.score) for p in points if str(p.id) in self._row}

    def dense_search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> dict[int, float]:
        ids = None if allowed is None else [self.ids[int(r)] for r in allowed]
        return self._rows(self._query(np.asarray(vector, np.float32).tolist(), DENSE, k, ids))

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        rows = range(self.size) if rows is None else rows
        ids = [self.ids[int(r)] for r in rows]
        found = {str(rec.id): rec.vector[DENSE] for rec in self._shard.retrieve(ids, with_payload=False, with_vector=[DENSE])}
        if len(found) != len(set(ids)):
            raise self.damaged(f"{self.folder / SHARD} is missing passage vectors")
        return np.array([found[i] for i in ids], dtype=np.float32).reshape(len(ids), self.manifest["dim"])

    @cached_property
    def _segmenter(self) -> QuerySegmenter:
        return QuerySegmenter(frozenset(t for p in self._passages for t in p.terms.split()))

    def query_terms(self, query: str) -> list[str]:
        return [t for t in self._segmenter.terms(query) if t in self._segmenter.vocab]

    def lexical_scores(self, terms: list[str], allowed: np.ndarray | None, limit: int) -> dict[int, float]:
        """BM25 from the engine: the query's term counts against the stored weights, IDF applied by Qdrant."""
        from qdrant_edge import SparseVector

        if not terms:
            return {}
        repeats = Counter(_term_id(t) for t in terms)
        query = SparseVector(list(repeats), [float(v) for v in repeats.values()])
        ids = None if allowed is None else [self.ids[int(r)] for r in allowed]
        return {r: s for r, s in self._rows(self._query(query, BM25, limit, ids)).items() if s > 0}

    @cached_property
    def _paper_lexical(self) -> LexicalIndex:
        return LexicalIndex.load_for(self.folder / PAPER_LEXICAL, self.size, self.damaged)

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
        by_passage = {str(p.id): p.score / m for p in self._query(q, TOKENS, len(rows), [self.ids[r] for r in rows])}
        review_ids = {_review_id(p) for p in ps}
        by_review = {str(p.id): p.score / m for p in self._query(q, REVIEW, len(review_ids), review_ids, "review")}
        paper_ids = {_paper_id(p) for p in ps}
        by_paper = {str(p.id): p.score / m for p in self._query(q, PAPER, len(paper_ids), paper_ids, "paper")}
        try:
            return LateScores(paper={r: by_paper[_paper_id(p)] for r, p in zip(rows, ps)},
                              review={r: by_review[_review_id(p)] for r, p in zip(rows, ps)},
                              passage={r: by_passage[self.ids[r]] for r in rows})
        except KeyError as e:
            raise self.damaged(f"{self.folder / SHARD} is missing token states") from e

    def warm(self) -> None:
        self._paper_lexical, self._segmenter

    def check(self) -> CheckReport:
        """Every passage, review and paper point present, every passage vector unit length."""
        from qdrant_edge import CountRequest

        reviews = {_review_id(p) for p in self._passages}
        papers = {_paper_id(p) for p in self._passages}
        for kind, want in (("review", len(reviews)), ("paper", len(papers))):
            if (n := self._shard.count(CountRequest(exact=True, filter=_filter(_kind(kind))))) != want:
                raise self.damaged(f"{self.folder / SHARD} holds {n} {kind} points, its passages make {want}")
        if not unit_rows_ok(self.vectors()).all():
            raise self.damaged(f"{self.folder / SHARD} holds damaged vectors")
        return CheckReport.of_folder(self.folder, self.size)

    def close(self) -> None:
        self._shard.close()


def _filter(*must):
    from qdrant_edge import Filter

    return Filter(must=list(must))


def _scroll_all(shard, filter, with_payload=True):
    """Every point `filter` matches, page by page."""
    from qdrant_edge import ScrollRequest

    offset = None
    while True:
        page, offset = shard.scroll(ScrollRequest(offset=offset, limit=1000, filter=filter, with_payload=with_payload,
                                                  with_vector=False))
        yield from page
        if offset is None:
            return


def open_qdrant(folder: Path | str) -> QdrantIndex:
    """The live generation of the `qdrant:` index in `folder`, or an IndexUnavailable error saying what is wrong."""
    folder = Path(folder)
    _engine()
    gen = current_generation(folder)
    if gen is None:
        raise NoIndex(f"no index at {PREFIX}{folder.absolute()}")
    roots = read_settings(folder).roots
    try:
        manifest = json.loads((gen / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("backend") != BACKEND or manifest.get("format") != FORMAT_VERSION:
            raise IndexDamaged(f"{gen} was built by {manifest.get('backend')} format {manifest.get('format')}, "
                               f"this version reads {BACKEND} format {FORMAT_VERSION}", roots=roots)
    except (OSError, ValueError, AttributeError) as e:
        raise IndexDamaged(f"{gen / MANIFEST} is damaged ({type(e).__name__})", roots=roots) from e
    from qdrant_edge import EdgeShard

    try:
        shard = EdgeShard.load(str(gen / SHARD))
    except Exception as e:  # the engine reports every failure as a bare Exception
        raise IndexDamaged(f"{gen / SHARD} cannot be opened ({str(e).splitlines()[0][:120]})", roots=roots) from e
    try:
        return QdrantIndex(gen, manifest, shard)
    except (KeyError, TypeError) as e:
        shard.close()
        raise IndexDamaged(f"{gen / SHARD} holds damaged passages ({type(e).__name__})", roots=roots) from e
    except BaseException:
        shard.close()
        raise


class QdrantWriter(Writer):
    """A build of a `qdrant:` index: store.index.Writer's lock, temporary generation and atomic swap,
    with a copy of the live shard as the starting point and only the changes sent to the engine."""

    previous: QdrantIndex | None

    def _open_previous(self) -> None:
        _engine()
        try:
            self.previous = open_qdrant(self.index_dir)
        except IndexDamaged as e:
            self.previous_problem = f"the previous index is unusable ({e}); building from the notes alone"
        except NoIndex:
            pass

    def previous_passages(self, problems: list[Problem]) -> list[StoredPassage]:
        return [] if self.previous is None else self.previous.passages()

    def update(self, records: Sequence[StoredPassage], roots: list[str], encoder: Encoder, full: bool,
               problems: list[Problem], on_start: Callable[[int], None] | None = None,
               progress: Progress | None = None) -> Written:
        """storage.Writer.update: the changes since the live generation, applied to a copy of its shard."""
        from qdrant_edge import EdgeShard

        old = self.previous
        reuse = old is not None and not full and (old.manifest["model_id"], old.manifest["dim"]) == (encoder.model_id, encoder.dim)
        ids = passage_ids(records)
        before = dict(zip(old.ids, old.passages())) if reuse else {}
        if reuse and old.manifest["roots"] == roots and before == dict(zip(ids, records)) and (self.index_dir / SETTINGS).is_file():
            return Written(0, 0, 0.0, written=False)
        if reuse:
            shutil.copytree(old.folder / SHARD, self.tmp / SHARD, copy_function=_copy_sparse)
            shard = EdgeShard.load(str(self.tmp / SHARD))
        else:
            shard = EdgeShard.create(str(self.tmp / SHARD), _config(encoder.dim))
        try:
            embedded, seconds = self._apply(shard, records, ids, before, encoder, on_start, progress)
            shard.flush()
            shard.optimize()
        finally:
            shard.close()
        (self.tmp / PAPER_LEXICAL).mkdir()
        LexicalIndex.of_papers(records).save(self.tmp / PAPER_LEXICAL)
        manifest = {"backend": BACKEND, "format": FORMAT_VERSION, "model_id": encoder.model_id, "dim": encoder.dim,
                    "created": created_now(), **counts(records), "roots": list(roots)}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        self.commit()
        return Written(embedded, embedded, seconds, written=True)

    def _apply(self, shard, records: Sequence[StoredPassage], ids: list[str], before: dict[str, StoredPassage],
               encoder: Encoder, on_start, progress) -> tuple[int, float]:
        """Send the new passages, the changed payloads, the deletions and the reviews and papers they
        touch; returns how many passages were embedded and the seconds it took."""
        from qdrant_edge import Point, SparseVector, UpdateOperation

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
                indices, values = weights[i]
                points.append(Point(id=ids[i], payload=_payload(records[i]), vector={
                    DENSE: v.tolist(), TOKENS: states[ids[i]].astype(np.float32).tolist(), BM25: SparseVector(indices, values)}))
            for b in range(0, len(points), UPSERT_BATCH):
                shard.update(UpdateOperation.upsert_points(points[b : b + UPSERT_BATCH]))
        seconds = time.perf_counter() - started
        for i, pid in enumerate(ids):
            if pid in before and before[pid] != records[i]:  # same text, moved or renumbered: payload only
                shard.update(UpdateOperation.overwrite_payload([pid], _payload(records[i])))
        if gone := sorted(set(before) - set(ids)):
            shard.update(UpdateOperation.delete_points(gone))
        for kind, vector, key in (("review", REVIEW, _review_id), ("paper", PAPER, _paper_id)):
            self._groups(shard, kind, vector, key, records, ids, states)
        return len(todo), seconds

    def _groups(self, shard, kind: str, vector: str, key, records, ids: list[str], states: dict[str, np.ndarray]) -> None:
        """One point per review (or paper) with all its passages' tokens, sent again only when its passages changed."""
        from qdrant_edge import Point, UpdateOperation

        members: dict[str, list[str]] = {}
        for r, pid in zip(records, ids):
            members.setdefault(key(r), []).append(pid)
        existing = {str(rec.id): rec.payload.get("members")
                    for rec in _scroll_all(shard, _filter(_kind(kind)), with_payload=["members"])}
        changed = {gid: pids for gid, pids in members.items() if existing.get(gid) != _members_digest(pids)}
        stored = set().union(*changed.values()) - states.keys() if changed else set()
        for rec in shard.retrieve(sorted(stored), with_payload=False, with_vector=[TOKENS]) if stored else []:
            states[str(rec.id)] = np.asarray(rec.vector[TOKENS], np.float16)
        points = [Point(id=gid, payload={KIND: kind, "members": _members_digest(pids)},
                        vector={vector: np.vstack([states[p] for p in pids]).astype(np.float32).tolist()})
                  for gid, pids in changed.items()]
        for b in range(0, len(points), UPSERT_BATCH):
            shard.update(UpdateOperation.upsert_points(points[b : b + UPSERT_BATCH]))
        if gone := sorted(set(existing) - set(members)):
            shard.update(UpdateOperation.delete_points(gone))


def _bm25_weights(terms: Sequence[list[str]]) -> list[tuple[list[int], list[float]]]:
    """Per passage, its terms' sparse indices and BM25 weights without IDF (the engine applies its own)."""
    return [(list(map(_term_id, parts)), list(parts.values()))
            for parts in LexicalIndex.build(terms).weights_without_idf()]


def _copy_sparse(src: str, dst: str) -> None:
    """Copy a file, leaving holes where it is zeros: the engine's files are mostly preallocated
    holes (32 MB apiece for a few KB of points), which a plain copy would write out in full."""
    block = 1 << 20
    with open(src, "rb") as f, open(dst, "wb") as out:
        while chunk := f.read(block):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), 1)
            else:
                out.write(chunk)
        out.truncate()
    shutil.copystat(src, dst)
