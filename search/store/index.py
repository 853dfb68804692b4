"""The index store: FAISS vectors, passage metadata in SQLite, and a JSON manifest.

This module alone knows the layout of an index folder:

    index/
      CURRENT                 name of the live generation
      gen-<time>-<rand>/      manifest.json, manifest.crc32, dense.faiss, passages.sqlite, lexical/, paper_lexical/, tokens/
      settings.json           the note folders and model of the last build
      .lock                   held by a build while it runs

A build writes a complete new generation under a temporary name, renames it,
then replaces `CURRENT` with `os.replace`, which is atomic. A reader therefore
sees the old index or the new one, never a mix, and a build killed at any
moment leaves the previous generation live. The manifest records a checksum of
every file of its generation, so damage is found rather than searched; a small
generation is verified whole when opened, a large one file by file as a query
first reads each (the token codes block by block), and the manifest itself by
its own digest beside it.
`settings.json` lives outside the generations so that a damaged generation
never loses what the index was built from. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..errors import BadRequest, DiskError, IndexBusy, IndexDamaged, IndexUnavailable, NoIndex
from ..storage import (PASSAGE_FIELDS, CheckReport, ClosedOnExit, Filters, IndexInfo, LateScores, Paper, Settings,
                       StoredPassage, counts, paper_groups)
from .bm25 import LexicalIndex

if TYPE_CHECKING:
    from .tokens import TokenStore

FORMAT_VERSION = 5  # 3 added checksums and settings.json, 4 the passages' section kinds, 5 paper_lexical/
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.crc32"  # the manifest's own checksum (it holds everyone else's); older generations lack it
SETTINGS = "settings.json"
VECTORS = "dense.faiss"
PASSAGES = "passages.sqlite"
LEXICAL = "lexical"
PAPER_LEXICAL = "paper_lexical"  # BM25 with one document per paper (its reviews' passages), scored per row
TOKENS = "tokens"  # per-token states for late interaction (store/tokens.py)
LOCK = ".lock"
_TMP_PREFIX = ".tmp-"
_GEN_PREFIX = "gen-"
# Generations up to this size are checksummed whole on every open (about 30 ms at the
# limit); in larger ones each file is checked when a query first reads it, the token
# codes (most of the bytes, read a few passages at a time) block by block.
VERIFY_ON_OPEN_BYTES = 32 * 2**20
# Exact search costs ~4 ms a query at 50k vectors and grows linearly (59 ms at 1M);
# HNSW stays under ~1 ms with recall@10 >= 0.97 up to 1M (docs/performance.md, "Scale").
HNSW_FROM = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80  # 200 gained little recall for 2.5x the build time at 1M
HNSW_EF_SEARCH = 256  # 128 fell to recall@10 0.94 at 1M
# Stored vectors are unit length; anything else was damaged on disk.
NORM_TOLERANCE = 1e-3


_COLUMNS = PASSAGE_FIELDS
_SQL_TYPES = {"int": "INTEGER NOT NULL", "str": "TEXT NOT NULL", "int | None": "INTEGER"}
_SCHEMA = "CREATE TABLE passages (" + ", ".join(
    f"{f.name} {_SQL_TYPES[f.type]}" + (" PRIMARY KEY" if f.name == "row" else "") for f in fields(StoredPassage)
) + ")"


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
    checksums: dict[str, str]  # `_file_digest` of every file of the generation, by relative path


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


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_CRC = "crc32:"


def created_now() -> str:
    """A manifest's `created`: UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _crc_text(crc: int) -> str:
    """A CRC-32 as a manifest records it."""
    return f"{_CRC}{crc:08x}"


def _digest(data: bytes) -> str:
    return _crc_text(zlib.crc32(data))


def _file_digest(path: Path, like: str | None = None, unreadable_ok: bool = False) -> str:
    """The checksum of one file as a manifest records it: CRC-32, or blake2b when `like` (the
    recorded one) is an older generation's.

    CRC-32 finds damage (any burst of up to 32 bits, anything else but for odds
    of 2^-32), not tampering, at four times blake2b's speed: a query on a large
    generation checks each file it reads (Index.verify_part). With
    `unreadable_ok` a file that cannot be read (permissions) gets a digest no
    file has, so a check reports it as damaged instead of failing itself.
    """
    try:
        with open(path, "rb") as f:
            if like is not None and not like.startswith(_CRC):
                return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
            crc = 0
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
            return _crc_text(crc)
    except OSError as e:
        if not unreadable_ok:
            raise
        return f"unreadable ({e.strerror})"


def _checksums(folder: Path, like: dict[str, str] | None = None, unreadable_ok: bool = False) -> dict[str, str]:
    """`_file_digest` of every file under `folder` but the manifest and its digest, by path relative to
    it, each of the kind `like` records for it."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (MANIFEST, MANIFEST_DIGEST)]
    return {(rel := p.relative_to(folder).as_posix()): _file_digest(p, (like or {}).get(rel), unreadable_ok) for p in files}


def unit_rows_ok(vectors: np.ndarray) -> np.ndarray:
    """Per row, whether it is unit length as every stored vector is (damaged floats may overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.abs(np.linalg.norm(vectors, axis=1) - 1) <= NORM_TOLERANCE


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


class Index(ClosedOnExit):
    """One loaded generation of the index: manifest, vectors and passage metadata; the `local`
    storage.Backend. Usable with `with`."""

    def __init__(self, folder: Path, manifest: Manifest, db: sqlite3.Connection, size: int):
        self.folder = folder
        self.manifest = manifest
        self.size = size  # passages, one FAISS row each
        self._db = db
        self._faiss = None
        self._lexical: LexicalIndex | None = None
        self._paper_lexical: LexicalIndex | None = None
        self._tokens = None
        self.verified = False  # every file matched its checksum (verify_files)
        self._verified_parts: set[str] = set()

    @property
    def info(self) -> IndexInfo:
        m = self.manifest
        return IndexInfo(self.folder.name, m.model_id, m.dim, m.created, len(m.files), m.passages, m.reviews, m.roots)

    def damaged(self, what: str) -> IndexDamaged:
        """The error for damage found in this generation, carrying the roots to rebuild from."""
        return IndexDamaged(f"{what}; the index needs a rebuild", roots=self.manifest.roots)

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        # Damage inside SQLite pages shows only when a query touches them.
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise self.damaged(f"{self.folder / PASSAGES} is damaged ({e})") from e

    @property
    def lexical(self) -> LexicalIndex:
        """The BM25 index, loaded on first use (dense-only queries never pay for it)."""
        if self._lexical is None:
            self._lexical = self._load_lexical(LEXICAL)
        return self._lexical

    @property
    def paper_lexical(self) -> LexicalIndex:
        """BM25 with a paper's passages (all its reviews) as one document; a row scores as its paper."""
        if self._paper_lexical is None:
            self._paper_lexical = self._load_lexical(PAPER_LEXICAL)
        return self._paper_lexical

    def _load_lexical(self, name: str) -> LexicalIndex:
        self.verify_part(name)
        return LexicalIndex.load_for(self.folder / name, self.size, self.damaged)

    @property
    def tokens(self):
        """The compressed token states (late.TokenStore), loaded on first use."""
        if self._tokens is None:
            from .tokens import CODES, TokenStore

            self.verify_part(TOKENS, unless=f"{TOKENS}/{CODES}")  # the codes are checked block by block as they are read
            try:
                store = TokenStore.load(self.folder / TOKENS, damaged=None if self.verified else self.damaged)
            except Exception as e:  # numpy and json raise many types for a bad file, as for BM25
                raise self.damaged(f"{self.folder / TOKENS} is damaged ({type(e).__name__})") from e
            if len(store) != self.size:
                raise self.damaged(f"{self.folder / TOKENS} holds {len(store)} passages, the index {self.size}")
            self._tokens = store
        return self._tokens

    @property
    def faiss(self):
        """The FAISS index of the passage vectors, read on first use: `late` queries on a small index never need it."""
        if self._faiss is None:
            import faiss

            self.verify_part(VECTORS)
            try:
                vectors = faiss.read_index(str(self.folder / VECTORS))
            except Exception as e:  # faiss raises RuntimeError with a C++ trace for any bad file
                raise self.damaged(f"{self.folder / VECTORS} is damaged or truncated") from e
            if vectors.ntotal != self.size or vectors.d != self.manifest.dim:
                raise self.damaged(f"{self.folder} is inconsistent ({self.size} passages, {vectors.ntotal} vectors)")
            self._faiss = vectors
        return self._faiss

    def _by_rows(self, cols: str, rows: list[int]) -> list[tuple]:
        """`cols` (the first must be `row`) of the given rows, in no particular order."""
        found: list[tuple] = []
        for i in range(0, len(rows), 900):  # SQLite's bound-parameter limit
            part = rows[i : i + 900]
            found += self._query(f"SELECT {cols} FROM passages WHERE row IN ({','.join('?' * len(part))})", part)
        return found

    def passages(self, rows: Iterable[int] | None = None) -> list[StoredPassage]:
        """Passages by FAISS row (in the order given), or all of them in row order."""
        cols = ", ".join(_COLUMNS)
        if rows is None:
            return [StoredPassage(*r) for r in self._query(f"SELECT {cols} FROM passages ORDER BY row")]
        rows = [int(r) for r in rows]
        found = {p.row: p for p in (StoredPassage(*r) for r in self._by_rows(cols, rows))}
        return [found[r] for r in rows if r in found]

    def paper_groups(self, rows: Iterable[int]) -> list[list[list[int]]]:
        """The given rows grouped by review, and the reviews by the paper (file and topic) they review.

        Reads no passage text.
        """
        return paper_groups(self._by_rows("row, path, topic_no, review_no", [int(r) for r in rows]))

    def papers(self) -> list[Paper]:
        """Every reviewed paper, in week, file and topic order."""
        rows = self._query(
            "SELECT week, file, topic_no, topic, presenter, json_group_array(DISTINCT reviewer), count(*) "
            "FROM passages GROUP BY path, topic_no ORDER BY week IS NULL, week, file, topic_no"
        )
        return [
            Paper(week, file, topic_no, topic, presenter, sorted(json.loads(reviewers)), n)
            for week, file, topic_no, topic, presenter, reviewers, n in rows
        ]

    def review_at(self, file: str, line: int) -> list[StoredPassage]:
        """All passages of the review that covers `line` of `file` (a path as stored, or a file name), in order.

        Empty when no indexed review covers that line.
        """
        hit = self._query(
            "SELECT path, topic_no, review_no FROM passages WHERE (path = ? OR file = ?) "
            "AND line <= ? ORDER BY (path = ?) DESC, line DESC LIMIT 1",
            (file, file, line, file),
        )
        if not hit:
            return []
        cols = ", ".join(_COLUMNS)
        passages = [
            StoredPassage(*r)
            for r in self._query(
                f"SELECT {cols} FROM passages WHERE path = ? AND topic_no = ? AND review_no = ? ORDER BY passage_no", hit[0]
            )
        ]
        return passages if passages and line <= passages[-1].end_line + 3 else []

    def rows_matching(self, filters: Filters) -> np.ndarray:
        """Rows of the passages `filters` allow, ascending (the filters as an SQL condition)."""
        clauses, params = [], []
        if filters.reviewer is not None:
            clauses.append("reviewer = ?")
            params.append(filters.reviewer)
        if filters.topic is not None:
            clauses.append("contains_casefold(topic, ?)")
            params.append(filters.topic)
        if filters.weeks is not None:
            clauses.append("week BETWEEN ? AND ?")
            params += list(filters.weeks)
        if filters.section is not None:
            clauses.append("section = ?")
            params.append(filters.section.value)
        rows = self._query(f"SELECT row FROM passages WHERE {' AND '.join(clauses) or '1'} ORDER BY row", params)
        return np.fromiter((r for (r,) in rows), dtype=np.int64, count=len(rows))

    def query_terms(self, query: str) -> list[str]:
        """The query's BM25 terms (Kiwi morphemes, as the passages' were made)."""
        return self.lexical.terms(query)

    def lexical_scores(self, terms: list[str], allowed: np.ndarray | None, limit: int) -> dict[int, float]:
        """BM25 scores of the `limit` best (allowed) rows with at least one matching term."""
        scores = self.lexical.scores_for(terms)
        rows = np.nonzero(scores > 0)[0]
        if allowed is not None:
            rows = np.intersect1d(rows, allowed)
        if len(rows) > limit:
            rows = rows[np.argpartition(-scores[rows], limit - 1)[:limit]]
        return {int(r): float(scores[r]) for r in rows}

    def paper_lexical_scores(self, terms: list[str], rows: Iterable[int]) -> dict[int, float]:
        """BM25 of each given row's paper (all its reviews' passages as one document), for rows whose paper matched."""
        return self.paper_lexical.scores_of(terms, rows)

    def late_scores(self, query: np.ndarray, papers: list[list[list[int]]]) -> LateScores:
        """MaxSim at three levels from the stored token codes (TokenStore.late_scores)."""
        return self.tokens.late_scores(query, papers)

    def warm(self) -> None:
        """Read the vectors and both BM25 indexes now (the token codes stay memory-mapped)."""
        self.faiss, self.lexical, self.paper_lexical

    def dense_search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> dict[int, float]:
        """The k rows most similar to `vector` (inner product), limited to `allowed` rows when given.

        Raises IndexDamaged when a hit's stored vector is not unit length.
        """
        import faiss

        params = None if allowed is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, rows = self.faiss.search(vector.reshape(1, -1).astype(np.float32), k, params=params)
        hits = {int(r): float(s) for r, s in zip(rows[0], scores[0]) if r >= 0}
        self.vectors(list(hits)[:50])  # checks the ones that can reach a result
        return hits

    def vectors(self, rows: Sequence[int] | None = None, check: bool = True) -> np.ndarray:
        """Stored vectors by row (all when rows is None). Raises IndexDamaged when one is not unit length,
        which only damage on disk can cause, unless `check` is off (a build sorts out the sound ones)."""
        if rows is None:
            rows = range(self.size)
        if not len(rows):
            return np.zeros((0, self.manifest.dim), np.float32)
        vectors = self.faiss.reconstruct_batch(np.asarray(rows, dtype=np.int64))
        if check and not unit_rows_ok(vectors).all():
            raise self.damaged(f"{self.folder / VECTORS} holds damaged vectors")
        return vectors

    def damaged_files(self) -> set[str]:
        """Files of this generation (relative names) whose checksum no longer matches the manifest."""
        digests = _checksums(self.folder, self.manifest.checksums, unreadable_ok=True)
        return {n for n in set(digests) | set(self.manifest.checksums) if digests.get(n) != self.manifest.checksums.get(n)}

    def verify_part(self, name: str, unless: str | None = None) -> None:
        """On a generation not verified as a whole, check the file `name` (or every file under the
        folder `name`, but `unless`) against its checksum the first time it is read.

        A file is read whole when used, so this costs about what reading it does
        (docs/performance.md: a few ms for the 8.9 MB besides the token codes of a
        2,088-passage generation).
        Raises IndexDamaged naming the file.
        """
        if self.verified or name in self._verified_parts:
            return
        for rel, digest in sorted(self.manifest.checksums.items()):
            if (rel == name or rel.startswith(name + "/")) and rel != unless:
                if _file_digest(self.folder / rel, digest, unreadable_ok=True) != digest:
                    raise self.damaged(f"{self.folder / rel} is damaged (unreadable, or its checksum does not match)")
        self._verified_parts.add(name)

    def verify_files(self) -> None:
        """Raise IndexDamaged naming the first file whose checksum no longer matches; afterwards the
        generation counts as verified, so its parts skip their per-block checks."""
        if bad := sorted(self.damaged_files()):
            raise self.damaged(f"{self.folder / bad[0]} is damaged (unreadable, or its checksum does not match)")
        self.verified = True

    def check(self) -> "CheckReport":
        """Verify the whole generation: every file against its checksum, then every part a query reads.

        The checksums find any change to a file; the reads after them are the
        numeric sanity checks queries make, run over everything at once, so a
        generation that passes answers every query as it did when written.
        Raises IndexDamaged naming the first damaged file.
        """
        self.verify_files()
        if (problems := self._query("PRAGMA quick_check")) != [("ok",)]:
            raise self.damaged(f"{self.folder / PASSAGES} is damaged ({problems[0][0][:160]})")
        for part in ("lexical", "paper_lexical", "tokens", "faiss"):
            getattr(self, part)
        self.vectors()
        return CheckReport.of_folder(self.folder, self.size)

    def close(self) -> None:
        self._db.close()


def _check_folder(index_dir: Path) -> None:
    if index_dir.exists() and not index_dir.is_dir():
        raise BadRequest(f"{index_dir} is a file, not an index folder")


def _read_pointer(index_dir: Path) -> str:
    """The generation name `CURRENT` holds; raises OSError or UnicodeDecodeError."""
    return (index_dir / CURRENT).read_bytes().decode("utf-8").strip()


def current_generation(index_dir: Path) -> Path | None:
    """The live generation folder, or None when the folder holds no index."""
    _check_folder(index_dir)
    pointer = index_dir / CURRENT
    try:
        name = _read_pointer(index_dir)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not text"
        raise IndexDamaged(f"{pointer}: cannot read ({reason})", roots=read_settings(index_dir).roots) from e
    gen = index_dir / name
    if not name.startswith(_GEN_PREFIX) or "/" in name or not gen.is_dir():
        raise IndexDamaged(f"{pointer} names a missing generation {name[:80]!r}", roots=read_settings(index_dir).roots)
    return gen


def live_generation(index_dir: Path | str) -> str | None:
    """The name of the live generation, read leniently (None when there is none or it is unreadable).

    A long-running reader compares it between requests to notice a rebuild.
    """
    try:
        gen = current_generation(Path(index_dir))
    except (IndexUnavailable, BadRequest):
        return None
    return gen.name if gen else None


def read_settings(index_dir: Path | str) -> Settings:
    """The note folders and model the index folder was last built with, or Nones when unknown.

    Read from `settings.json`, which survives a damaged generation; an index
    written before that file existed still has them in its manifest.
    """
    index_dir = Path(index_dir)
    for source in (index_dir / SETTINGS, None):
        try:
            if source is None:
                source = index_dir / _read_pointer(index_dir) / MANIFEST
            raw = json.loads(source.read_text(encoding="utf-8"))
            roots, model = raw.get("roots"), raw.get("model_id")
            if (roots is None or (isinstance(roots, list) and all(isinstance(r, str) for r in roots))) and (
                model is None or isinstance(model, str)
            ):
                return Settings(roots, model)
        except (OSError, ValueError, AttributeError):
            continue
    return Settings(None, None)


def holds_an_index(index_dir: Path | str) -> bool:
    """Whether the folder holds (or held) an index, even a damaged one: a rebuild must not guess its notes."""
    index_dir = Path(index_dir)
    return index_dir.is_dir() and any(
        p.name in (CURRENT, SETTINGS) or p.name.startswith(_GEN_PREFIX) for p in index_dir.iterdir()
    )


def open_index(index_dir: Path | str, verify: bool | None = None) -> Index:
    """Load the live index from `index_dir`, or raise an IndexUnavailable error that says what is wrong.

    `verify` checks every file against the manifest's checksums; by default only
    generations small enough to hash in milliseconds are checked.
    """
    index_dir = Path(index_dir)
    gen = current_generation(index_dir)
    if gen is None:
        raise NoIndex(f"no index at {index_dir.absolute()}")

    def damaged(what: str) -> IndexDamaged:
        # Only a failure needs the roots, read leniently from what survives.
        return IndexDamaged(what, roots=read_settings(index_dir).roots)

    try:
        text = (gen / MANIFEST).read_bytes()
        if (gen / MANIFEST_DIGEST).exists() and (gen / MANIFEST_DIGEST).read_bytes().strip() != _digest(text).encode():
            raise damaged(f"{gen / MANIFEST} does not match {gen / MANIFEST_DIGEST}: one of them is damaged")
        raw = json.loads(text.decode("utf-8"))
        if raw.get("format") != FORMAT_VERSION:
            raise damaged(f"{index_dir} was built by index format {raw.get('format')}, this version reads {FORMAT_VERSION}")
        manifest = Manifest(**raw)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise damaged(f"{gen / MANIFEST} is damaged ({type(e).__name__})") from e
    if verify is None:
        verify = sum(p.stat().st_size for p in gen.rglob("*") if p.is_file()) <= VERIFY_ON_OPEN_BYTES
    try:
        db = sqlite3.connect(f"file:{gen / PASSAGES}?mode=ro", uri=True)
        # SQLite's lower() folds ASCII only; titles mix Korean, accents and full-width letters.
        db.create_function("contains_casefold", 2, lambda text, part: part.casefold() in (text or "").casefold(), deterministic=True)
        (count,) = db.execute("SELECT count(*) FROM passages").fetchone()
    except sqlite3.Error as e:
        raise damaged(f"{gen / PASSAGES} is damaged ({e})") from e
    index = Index(gen, manifest, db, count)
    if count != manifest.passages:
        index.close()
        raise damaged(f"{gen} is inconsistent ({count} passages, the manifest says {manifest.passages})")
    try:
        # Every query reads passages; the other parts are checked when first read (verify_part).
        index.verify_files() if verify else index.verify_part(PASSAGES)
    except IndexDamaged:
        index.close()
        raise
    return index


def _disk_error(e: OSError, index_dir: Path) -> DiskError | None:
    """The one-line error for a write the disk refused, or None when `e` is something else."""
    reasons = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file size limit exceeded", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
    if e.errno in reasons:
        return DiskError(f"cannot write the index at {index_dir}: {reasons[e.errno]}; the previous index is unchanged")
    return None


def _why_write_failed(index_dir: Path, e: Exception) -> str:
    """A readable reason for a write that faiss or SQLite reported without an errno."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return "file size limit exceeded"
    except ImportError:  # not on Windows
        pass
    if "full" in str(e).lower() or shutil.disk_usage(index_dir).free < 2**20:
        return "no space left on device"
    return str(e).splitlines()[0][:160]


class Writer:
    """Writes a new generation and makes it live atomically; holds the build lock inside `with`.

    Inside the block, `previous` is the live index (None when there is none or
    its passages are unreadable; `previous_problem` then says why) and
    `previous_damaged` the files of it that fail their checksum. Leaving the block
    without `commit()` (an error, Ctrl-C) removes the half-written generation
    and leaves the live one alone.
    """

    def __init__(self, index_dir: Path | str):
        self.index_dir = Path(index_dir)
        self.previous: Index | None = None
        self.previous_problem: str | None = None
        self.previous_damaged: set[str] = set()
        self.tmp: Path | None = None
        self._lock = None
        self._created = False  # the folder is ours to remove again if no generation lands in it

    def __enter__(self) -> "Writer":
        from filelock import FileLock, Timeout

        _check_folder(self.index_dir)
        try:
            self._created = not self.index_dir.exists()
            self.index_dir.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.index_dir / LOCK))
            self._lock.acquire(timeout=0)
        except Timeout:
            raise IndexBusy(f"another build is running on {self.index_dir}") from None
        except OSError as e:
            raise _disk_error(e, self.index_dir) or e
        try:
            self._clean_leftovers()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            self.name = f"{_GEN_PREFIX}{stamp}-{secrets.token_hex(4)}"
            self.tmp = self.index_dir / f"{_TMP_PREFIX}{self.name}"
            self.tmp.mkdir()
            self._open_previous()
        except BaseException as e:
            self.__exit__(None, None, None)
            if isinstance(e, OSError) and (disk := _disk_error(e, self.index_dir)):
                raise disk from e
            raise
        return self

    def _open_previous(self) -> None:
        try:
            previous = open_index(self.index_dir, verify=False)
        except IndexDamaged as e:
            self.previous_problem = f"the previous index is unusable ({e}); building from the notes alone"
            return
        except NoIndex:
            return
        damaged = previous.damaged_files()
        if PASSAGES in damaged:
            previous.close()
            self.previous_problem = f"{previous.folder / PASSAGES} is damaged; building from the notes alone"
            return
        self.previous, self.previous_damaged = previous, damaged

    def _clean_leftovers(self) -> None:
        """Remove what killed builds left behind; safe because we hold the lock."""
        for p in self.index_dir.glob(f"{_TMP_PREFIX}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            self.previous.close()
            self.previous = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
        if self._created and not (self.index_dir / CURRENT).exists():
            (self.index_dir / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.index_dir.rmdir()

    def write(
        self, model_id: str, dim: int, roots: list[str], passages: Sequence[StoredPassage], vectors: np.ndarray,
        lexical: LexicalIndex, paper_lexical: LexicalIndex, tokens: "TokenStore",
    ) -> Manifest:
        """Write passages, their vectors (row i = passages[i]), the two lexical indexes and token states, then the manifest.

        Raises DiskError when the disk refuses the write.
        """
        try:
            return self._write(model_id, dim, roots, passages, vectors, lexical, paper_lexical, tokens)
        except OSError as e:
            raise _disk_error(e, self.index_dir) or e
        except (RuntimeError, sqlite3.OperationalError) as e:
            # faiss and SQLite wrap the failed write() in their own exception types, without errno.
            raise DiskError(f"cannot write the index at {self.index_dir}: {_why_write_failed(self.index_dir, e)}; "
                            "the previous index is unchanged") from e

    def _write(self, model_id, dim, roots, passages, vectors, lexical, paper_lexical, tokens) -> Manifest:
        import faiss

        if len(passages) != len(vectors):
            raise ValueError(f"{len(passages)} passages but {len(vectors)} vectors")
        faiss.write_index(faiss_index_for(vectors), str(self.tmp / VECTORS))
        db = sqlite3.connect(self.tmp / PASSAGES)
        with db:
            db.execute(_SCHEMA)
            db.executemany(
                f"INSERT INTO passages VALUES ({','.join('?' * len(_COLUMNS))})",
                [tuple(getattr(p, c) for c in _COLUMNS) for p in passages],
            )
        db.close()
        for name, bm25 in ((LEXICAL, lexical), (PAPER_LEXICAL, paper_lexical)):
            if bm25.size != len(passages):
                raise ValueError(f"{len(passages)} passages but {bm25.size} rows in {name}")
            (self.tmp / name).mkdir()
            bm25.save(self.tmp / name)
        if len(tokens) != len(passages):
            raise ValueError(f"{len(passages)} passages but {len(tokens)} token states")
        tokens.save(self.tmp / TOKENS)
        manifest = Manifest(
            format=FORMAT_VERSION, model_id=model_id, dim=dim, created=created_now(), **counts(passages),
            roots=list(roots), checksums=_checksums(self.tmp),
        )
        text = json.dumps(asdict(manifest), ensure_ascii=False, indent=1).encode("utf-8")
        (self.tmp / MANIFEST).write_bytes(text)
        (self.tmp / MANIFEST_DIGEST).write_text(_digest(text) + "\n", encoding="ascii")
        return manifest

    def commit(self) -> Path:
        """Make the written generation live, atomically, and drop generations no reader can still be using."""
        try:
            return self._commit()
        except OSError as e:
            raise _disk_error(e, self.index_dir) or e

    def _commit(self) -> Path:
        _fsync_tree(self.tmp)
        manifest = json.loads((self.tmp / MANIFEST).read_text(encoding="utf-8"))
        final = self.index_dir / self.name
        previous = live_generation(self.index_dir)
        pointer = self.index_dir / CURRENT
        if pointer.is_dir() or pointer.is_symlink():
            # Not ours to delete, and os.replace cannot overwrite a folder: set it aside.
            pointer.rename(self.index_dir / f"{CURRENT}.moved-aside-{secrets.token_hex(3)}")
        os.rename(self.tmp, final)
        self.tmp = None
        _write_atomically(self.index_dir / SETTINGS, json.dumps(
            {"roots": manifest["roots"], "model_id": manifest["model_id"]}, ensure_ascii=False, indent=1))
        _write_atomically(pointer, self.name + "\n")
        _fsync_dir(self.index_dir)
        # Keep the generation that was live until now: a query that read CURRENT a
        # moment ago may still be opening its files.
        keep = {self.name, previous}
        for p in self.index_dir.glob(f"{_GEN_PREFIX}*"):
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        return final
