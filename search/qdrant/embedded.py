"""The Qdrant backend, embedded: an index folder whose generations each hold a Qdrant Edge shard
(Qdrant's own engine as a library), named on the command line as `--index qdrant:PATH`.

The folder keeps the local store's discipline (store/index.py): `CURRENT` names the live
generation, `settings.json` what it was built from, `.lock` is held by a build. A generation is
`manifest.json`, `shard/` (the points index.py describes) and `paper_lexical/` (the paper-level
BM25, as the local backend keeps it).

A build copies the live shard into a new generation, sends it only the changes (index.py's
`write_changes`) and swaps `CURRENT`: a build that dies leaves the previous generation live.
Shards are written without a WAL, by the build that made them only, so any number of readers
(a server, a CLI query) can open the live one at once.

What differs from the local backend: passages are held in memory once a reader opens the index;
the BM25 weights of passages a build did not touch keep the corpus statistics (average length)
of the build that wrote them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import BadRequest, IndexDamaged, NoIndex
from ..model.protocol import Encoder, Progress
from ..notes.reader import Problem
from ..storage import CheckReport, StoredPassage, Written
from ..store.bm25 import LexicalIndex
from ..store.index import MANIFEST, PAPER_LEXICAL, SETTINGS, Writer, current_generation, read_settings
from . import PREFIX
from .index import (BM25, DENSE, KIND, PAPER, REVIEW, TOKENS, NewPoint, QdrantIndex, Sparse, Where, manifest_of,
                    unchanged, write_changes)

BACKEND = "qdrant-edge"
FORMAT_VERSION = 3  # 2 added paper_lexical/, 3 stopped storing rows
SHARD = "shard"


def _engine():
    """qdrant_edge, or a one-line error saying how to install it (it is an optional extra)."""
    try:
        import qdrant_edge
    except ImportError:
        raise BadRequest(f"{PREFIX} indexes need Qdrant's engine: pip install -e '.[qdrant]' (qdrant-edge-py)") from None
    return qdrant_edge


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


class EdgeEngine:
    """index.Engine on one Qdrant Edge shard."""

    def __init__(self, shard):
        self.shard = shard

    def _filter(self, where: Where):
        from qdrant_edge import FieldCondition, Filter, HasIdCondition, MatchSubstring, MatchValue, RangeFloat

        must = [FieldCondition(KIND, match=MatchValue(where.kind))]
        if where.ids is not None:
            must.append(HasIdCondition(set(where.ids)))
        if where.reviewer is not None:
            must.append(FieldCondition("reviewer", match=MatchValue(where.reviewer)))
        if where.topic_cf is not None:
            must.append(FieldCondition("topic_cf", match=MatchSubstring(where.topic_cf)))
        if where.weeks is not None:
            must.append(FieldCondition("week", range=RangeFloat(gte=where.weeks[0], lte=where.weeks[1])))
        if where.section is not None:
            must.append(FieldCondition("section", match=MatchValue(where.section)))
        return Filter(must=must)

    def query(self, using: str, vector, limit: int, where: Where) -> list[tuple[str, float]]:
        from qdrant_edge import Query, QueryRequest, SparseVector

        if isinstance(vector, Sparse):
            vector = SparseVector(vector.indices, vector.values)
        found = self.shard.query(QueryRequest(limit=limit, query=Query.Nearest(vector, using=using),
                                              filter=self._filter(where), with_payload=False))
        return [(str(p.id), float(p.score)) for p in found]

    def scroll(self, where: Where, fields: list[str] | bool = True) -> Iterator[tuple[str, dict]]:
        from qdrant_edge import ScrollRequest

        offset = None
        while True:
            page, offset = self.shard.scroll(ScrollRequest(offset=offset, limit=1000, filter=self._filter(where),
                                                           with_payload=fields, with_vector=False))
            yield from ((str(rec.id), rec.payload or {}) for rec in page)
            if offset is None:
                return

    def retrieve(self, ids: Sequence[str], using: str) -> dict[str, list]:
        return {str(rec.id): rec.vector[using] for rec in self.shard.retrieve(list(ids), with_payload=False,
                                                                               with_vector=[using])}

    def count(self, where: Where) -> int:
        from qdrant_edge import CountRequest

        return self.shard.count(CountRequest(exact=True, filter=self._filter(where)))

    def upsert(self, points: list[NewPoint]) -> None:
        from qdrant_edge import Point, SparseVector, UpdateOperation

        def vector(v):
            return SparseVector(v.indices, v.values) if isinstance(v, Sparse) else v

        self.shard.update(UpdateOperation.upsert_points(
            [Point(id=p.id, payload=p.payload, vector={k: vector(v) for k, v in p.vectors.items()}) for p in points]))

    def overwrite_payload(self, id: str, payload: dict) -> None:
        from qdrant_edge import UpdateOperation

        self.shard.update(UpdateOperation.overwrite_payload([id], payload))

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        self.shard.update(UpdateOperation.delete_points(list(ids)))

    def close(self) -> None:
        self.shard.close()


class EmbeddedIndex(QdrantIndex):
    """The live generation of a `qdrant:` index."""

    def __init__(self, folder: Path, manifest: dict, shard):
        self.folder = folder
        super().__init__(EdgeEngine(shard), manifest, folder.name, str(folder / SHARD))

    def paper_lexical(self) -> LexicalIndex:
        return LexicalIndex.load_for(self.folder / PAPER_LEXICAL, self.size, self.damaged)

    def check(self) -> CheckReport:
        self.check_points()
        return CheckReport.of_folder(self.folder, self.size)


def open_qdrant(folder: Path | str) -> EmbeddedIndex:
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
        return EmbeddedIndex(gen, manifest, shard)
    except (KeyError, TypeError) as e:
        shard.close()
        raise IndexDamaged(f"{gen / SHARD} holds damaged passages ({type(e).__name__})", roots=roots) from e
    except BaseException:
        shard.close()
        raise


class QdrantWriter(Writer):
    """A build of a `qdrant:` index: store.index.Writer's lock, temporary generation and atomic swap,
    with a copy of the live shard as the starting point and only the changes sent to the engine."""

    previous: EmbeddedIndex | None

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
        if reuse and unchanged(old, records, roots) and (self.index_dir / SETTINGS).is_file():
            return Written(0, 0, 0.0, written=False)
        if reuse:
            shutil.copytree(old.folder / SHARD, self.tmp / SHARD, copy_function=_copy_sparse)
            shard = EdgeShard.load(str(self.tmp / SHARD))
        else:
            shard = EdgeShard.create(str(self.tmp / SHARD), _config(encoder.dim))
        try:
            before = dict(zip(old.ids, old.passages())) if reuse else {}
            embedded, seconds = write_changes(EdgeEngine(shard), records, before, encoder, on_start, progress)
            shard.flush()
            shard.optimize()
        finally:
            shard.close()
        (self.tmp / PAPER_LEXICAL).mkdir()
        LexicalIndex.of_papers(records).save(self.tmp / PAPER_LEXICAL)
        manifest = manifest_of(records, BACKEND, FORMAT_VERSION, encoder, roots)
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        self.commit()
        return Written(embedded, embedded, seconds, written=True)


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
