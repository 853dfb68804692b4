"""The index store: FAISS vectors, passage metadata in SQLite, and a JSON manifest.

On disk an index folder holds generations; `CURRENT` names the live one:

    index/
      CURRENT                 name of the live generation
      gen-<time>-<rand>/      manifest.json, dense.faiss, passages.sqlite, lexical/
      .lock                   held by a build while it runs

A build writes a complete new generation under a temporary name, renames it,
then replaces `CURRENT` with `os.replace`, which is atomic. A reader therefore
sees the old index or the new one, never a mix, and a build killed at any
moment leaves the previous generation live. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import IndexBusy, IndexDamaged, IndexUnavailable, NoIndex
from .lexical import LexicalIndex

FORMAT_VERSION = 2
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
VECTORS = "dense.faiss"
PASSAGES = "passages.sqlite"
LEXICAL = "lexical"
TOKENS = "tokens"  # per-token states for late interaction (search/late.py); absent in indexes built without them
LOCK = ".lock"
_TMP_PREFIX = ".tmp-"
_GEN_PREFIX = "gen-"
# Exact search costs ~4 ms a query at 50k vectors and grows linearly (59 ms at 1M);
# HNSW stays under ~1 ms with recall@10 >= 0.97 up to 1M (README, "Scale").
HNSW_FROM = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80  # 200 gained little recall for 2.5x the build time at 1M
HNSW_EF_SEARCH = 256  # 128 fell to recall@10 0.94 at 1M


@dataclass(frozen=True)
class StoredPassage:
    """A passage as kept in the index: where it is from and what it says."""

    row: int  # position of its vector in the FAISS index
    key: str  # content hash of (model, embedded text); how vectors are reused across builds
    path: str
    file: str
    week: int | None
    topic_no: int
    topic: str
    presenter: str
    review_no: int
    reviewer: str
    line: int
    end_line: int
    passage_no: int
    text: str
    embed_text: str
    terms: str  # its BM25 terms, space-separated: kept so unchanged passages skip Kiwi next build

    @property
    def review_key(self) -> tuple[str, int, int]:
        """Identity of the review the passage belongs to."""
        return (self.path, self.topic_no, self.review_no)


_COLUMNS = [f.name for f in fields(StoredPassage)]


@dataclass(frozen=True)
class Paper:
    """One reviewed paper in the index: who presented it, who reviewed it, how many passages."""

    week: int | None
    file: str
    topic_no: int
    topic: str
    presenter: str
    reviewers: list[str]
    passages: int


@dataclass(frozen=True)
class Manifest:
    """What an index was built with and from; a query checks it before trusting the vectors."""

    format: int
    model_id: str
    dim: int
    created: str
    files: list[dict[str, Any]]
    passages: int
    reviews: int
    roots: list[str]  # the paths given to the build; a later `index` with no paths reuses them


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def faiss_index_for(vectors: np.ndarray):
    """A FAISS inner-product index over normalised vectors: exact when small, HNSW when large."""
    import faiss

    dim = vectors.shape[1]
    if len(vectors) >= HNSW_FROM:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


class Index:
    """One loaded generation of the index: manifest, vectors and passage metadata."""

    def __init__(self, folder: Path, manifest: Manifest, faiss_index, db: sqlite3.Connection):
        self.folder = folder
        self.manifest = manifest
        self.faiss = faiss_index
        self._db = db
        self._lexical: LexicalIndex | None = None
        self._tokens = None

    @property
    def lexical(self) -> LexicalIndex:
        """The BM25 index, loaded on first use (dense-only queries never pay for it)."""
        if self._lexical is None:
            try:
                self._lexical = LexicalIndex.load(self.folder / LEXICAL)
            except (OSError, ValueError) as e:
                raise IndexDamaged(f"{self.folder / LEXICAL} is damaged ({e})") from e
        return self._lexical

    @property
    def tokens(self):
        """The compressed token states (late.TokenStore), loaded on first use; None when the index has none."""
        if self._tokens is None and (self.folder / TOKENS).is_dir():
            from .late import TokenStore

            try:
                store = TokenStore.load(self.folder / TOKENS)
            except (OSError, ValueError, KeyError) as e:
                raise IndexDamaged(f"{self.folder / TOKENS} is damaged ({e})") from e
            if len(store) != self.size:
                raise IndexDamaged(f"{self.folder / TOKENS} holds {len(store)} passages, the index {self.size}")
            self._tokens = store
        return self._tokens

    def token_store(self):
        """The token states (late.TokenStore); raises IndexDamaged when the index has none."""
        if self.tokens is None:
            raise IndexDamaged(f"{self.folder} has no token states; rebuild it with `review-search index --full`")
        return self.tokens

    def token_states(self, rows: Sequence[int]) -> list[np.ndarray]:
        """Decoded unit token states of the given rows (raises IndexDamaged when the index has none)."""
        return [self.token_store().states(int(r)) for r in rows]

    @property
    def size(self) -> int:
        return self.faiss.ntotal

    def passages(self, rows: Iterable[int] | None = None) -> list[StoredPassage]:
        """Passages by FAISS row (in the order given), or all of them in row order."""
        cols = ", ".join(_COLUMNS)
        if rows is None:
            cur = self._db.execute(f"SELECT {cols} FROM passages ORDER BY row")
            return [StoredPassage(*r) for r in cur]
        rows = [int(r) for r in rows]
        found = {}
        for i in range(0, len(rows), 900):  # SQLite's bound-parameter limit
            part = rows[i : i + 900]
            q = f"SELECT {cols} FROM passages WHERE row IN ({','.join('?' * len(part))})"
            found.update({r[0]: StoredPassage(*r) for r in self._db.execute(q, part)})
        return [found[r] for r in rows if r in found]

    def papers(self) -> list[Paper]:
        """Every reviewed paper, in week, file and topic order."""
        cur = self._db.execute(
            "SELECT week, file, topic_no, topic, presenter, json_group_array(DISTINCT reviewer), count(*) "
            "FROM passages GROUP BY path, topic_no ORDER BY week IS NULL, week, file, topic_no"
        )
        return [
            Paper(week, file, topic_no, topic, presenter, sorted(json.loads(reviewers)), n)
            for week, file, topic_no, topic, presenter, reviewers, n in cur
        ]

    def review_at(self, file: str, line: int) -> list[StoredPassage]:
        """All passages of the review that covers `line` of `file` (a path as stored, or a file name), in order.

        Empty when no indexed review covers that line.
        """
        cols = ", ".join(_COLUMNS)
        hit = self._db.execute(
            "SELECT path, topic_no, review_no FROM passages WHERE (path = ? OR file = ?) "
            "AND line <= ? ORDER BY (path = ?) DESC, line DESC LIMIT 1",
            (file, file, line, file),
        ).fetchone()
        if hit is None:
            return []
        rows = self._db.execute(
            f"SELECT {cols} FROM passages WHERE path = ? AND topic_no = ? AND review_no = ? ORDER BY passage_no", hit
        )
        passages = [StoredPassage(*r) for r in rows]
        return passages if passages and line <= passages[-1].end_line + 3 else []

    def rows_where(self, where: str, params: Sequence) -> np.ndarray:
        """Rows of the passages matching an SQL condition (see ranking.Filters.sql), ascending."""
        cur = self._db.execute(f"SELECT row FROM passages WHERE {where} ORDER BY row", params)
        return np.fromiter((r for (r,) in cur), dtype=np.int64)

    def dense_search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> dict[int, float]:
        """The k rows most similar to `vector` (inner product), limited to `allowed` rows when given.

        With `passages`, `rows_where` and `lexical`, this is all ranking needs from
        storage: the seam where a remote search engine would plug in (README,
        "Beyond one machine").
        """
        import faiss

        params = None if allowed is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, rows = self.faiss.search(vector.reshape(1, -1).astype(np.float32), k, params=params)
        return {int(r): float(s) for r, s in zip(rows[0], scores[0]) if r >= 0}

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """Stored vectors by row (all when rows is None)."""
        if rows is None:
            rows = range(self.size)
        if not len(rows):
            return np.zeros((0, self.manifest.dim), np.float32)
        return self.faiss.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def current_generation(index_dir: Path) -> Path | None:
    """The live generation folder, or None when the folder holds no index."""
    pointer = index_dir / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IndexDamaged(f"{pointer}: cannot read ({e.strerror})") from e
    gen = index_dir / name
    if not name.startswith(_GEN_PREFIX) or "/" in name or not gen.is_dir():
        raise IndexDamaged(f"{pointer} names a missing generation {name!r}")
    return gen


def live_generation(index_dir: Path | str) -> str | None:
    """The name of the live generation, read leniently (None when there is none or it is unreadable).

    A long-running reader compares it between requests to notice a rebuild.
    """
    try:
        gen = current_generation(Path(index_dir))
    except IndexUnavailable:
        return None
    return gen.name if gen else None


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """The live generation's manifest as plain JSON, or {} when there is none or it is unreadable."""
    try:
        gen = current_generation(index_dir)
        return json.loads((gen / MANIFEST).read_text(encoding="utf-8")) if gen else {}
    except (IndexUnavailable, OSError, ValueError):
        return {}


def open_index(index_dir: Path | str) -> Index:
    """Load the live index from `index_dir`, or raise an IndexUnavailable error that says what is wrong."""
    index_dir = Path(index_dir)
    gen = current_generation(index_dir)
    if gen is None:
        raise NoIndex(f"no index at {index_dir}")
    try:
        raw = json.loads((gen / MANIFEST).read_text(encoding="utf-8"))
        manifest = Manifest(**raw)
    except (OSError, ValueError, TypeError) as e:
        raise IndexDamaged(f"{gen / MANIFEST} is damaged ({e})") from e
    if manifest.format != FORMAT_VERSION:
        raise IndexDamaged(
            f"{index_dir} was built by index format {manifest.format}, this version reads {FORMAT_VERSION}"
        )
    import faiss

    try:
        vectors = faiss.read_index(str(gen / VECTORS))
    except Exception as e:  # faiss raises RuntimeError with a C++ trace for any bad file
        raise IndexDamaged(f"{gen / VECTORS} is damaged or truncated") from e
    try:
        db = sqlite3.connect(f"file:{gen / PASSAGES}?mode=ro", uri=True)
        # SQLite's lower() folds ASCII only; titles mix Korean, accents and full-width letters.
        db.create_function("contains_casefold", 2, lambda text, part: part.casefold() in (text or "").casefold(), deterministic=True)
        (count,) = db.execute("SELECT count(*) FROM passages").fetchone()
    except sqlite3.Error as e:
        raise IndexDamaged(f"{gen / PASSAGES} is damaged ({e})") from e
    if count != vectors.ntotal or count != manifest.passages or vectors.d != manifest.dim:
        db.close()
        raise IndexDamaged(f"{gen} is inconsistent ({count} passages, {vectors.ntotal} vectors)")
    return Index(gen, manifest, vectors, db)


class Writer:
    """Writes a new generation and makes it live atomically; holds the build lock while open.

    Use as a context manager: leaving the block without `commit()` (an error,
    Ctrl-C) removes the half-written generation and leaves the live one alone.
    """

    def __init__(self, index_dir: Path | str):
        from filelock import FileLock, Timeout

        self.index_dir = Path(index_dir)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.index_dir / LOCK))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise IndexBusy(f"another build is running on {self.index_dir}; wait for it to finish and try again") from None
        self._clean_leftovers()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.name = f"{_GEN_PREFIX}{stamp}-{secrets.token_hex(4)}"
        self.tmp = self.index_dir / f"{_TMP_PREFIX}{self.name}"
        self.tmp.mkdir()

    def _clean_leftovers(self) -> None:
        """Remove what killed builds left behind; safe because we hold the lock."""
        for p in self.index_dir.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._lock.release()

    def write(self, manifest: Manifest, passages: Sequence[StoredPassage], vectors: np.ndarray, lexical: LexicalIndex,
              tokens=None) -> Path:
        """Write passages, their vectors (row i = passages[i]), the lexical index, token states and the manifest."""
        import faiss

        assert len(passages) == len(vectors) == manifest.passages
        faiss.write_index(faiss_index_for(vectors), str(self.tmp / VECTORS))
        db = sqlite3.connect(self.tmp / PASSAGES)
        with db:
            db.execute(
                "CREATE TABLE passages (row INTEGER PRIMARY KEY, key TEXT NOT NULL, path TEXT NOT NULL, "
                "file TEXT NOT NULL, week INTEGER, topic_no INTEGER, topic TEXT, presenter TEXT, "
                "review_no INTEGER, reviewer TEXT, line INTEGER, end_line INTEGER, passage_no INTEGER, "
                "text TEXT NOT NULL, embed_text TEXT NOT NULL, terms TEXT NOT NULL)"
            )
            db.executemany(
                f"INSERT INTO passages VALUES ({','.join('?' * len(_COLUMNS))})",
                [tuple(getattr(p, c) for c in _COLUMNS) for p in passages],
            )
        db.close()
        (self.tmp / LEXICAL).mkdir()
        lexical.save(self.tmp / LEXICAL)
        if tokens is not None:
            assert len(tokens) == len(passages)
            tokens.save(self.tmp / TOKENS)
        (self.tmp / MANIFEST).write_text(json.dumps(asdict(manifest), ensure_ascii=False, indent=1), encoding="utf-8")
        return self.tmp

    def commit(self) -> Path:
        """Make the written generation live, atomically, and drop generations no reader can still be using."""
        _fsync_tree(self.tmp)
        final = self.index_dir / self.name
        previous = current_generation_or_none(self.index_dir)
        os.rename(self.tmp, final)
        pointer_tmp = self.index_dir / f"{_TMP_PREFIX}{CURRENT}"
        with open(pointer_tmp, "w", encoding="utf-8") as f:
            f.write(self.name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer_tmp, self.index_dir / CURRENT)
        _fsync_dir(self.index_dir)
        # Keep the generation that was live until now: a query that read CURRENT a
        # moment ago may still be opening its files.
        keep = {self.name, previous.name if previous else None}
        for p in self.index_dir.glob(f"{_GEN_PREFIX}*"):
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        return final


def current_generation_or_none(index_dir: Path) -> Path | None:
    """Like current_generation, but a damaged pointer counts as no index (a build replaces it)."""
    try:
        return current_generation(index_dir)
    except IndexDamaged:
        return None
