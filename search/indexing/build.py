"""Building the index: files → reviews → passages → vectors → a new generation.

Builds are incremental. Each passage is keyed by a hash of the model and the
text it embeds, so a re-run embeds only passages that are new or changed and
reuses the stored vectors of the rest; passages of deleted files or removed
reviews simply are not carried over. Bad input never costs indexed data: a
file that was indexed before but can no longer be read (a bad save, a wrong
encoding, a folder that cannot be listed) keeps its old passages, with
`--full` too (their kept text is embedded again), and stored vectors that
fail their checksum or norm are embedded again instead of being carried on.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..notes.chunking import Passage, chunk_review
from ..model.protocol import Encoder, Progress
from ..errors import BadRequest, IndexDamaged
from ..store.bm25 import LexicalIndex, passage_terms
from ..notes.reader import Problem, ReadResult, read_reviews
from ..store.tokens import TokenStore, build_store
from ..store.index import SETTINGS, TOKENS, VECTORS, Index, StoredPassage, Writer, holds_an_index, read_settings, unit_rows_ok

DEFAULT_ROOTS = ["seeds"]
# A build that would drop more than this share of the index's passages because
# folders it covers now hold no notes is refused unless told to: a moved,
# unmounted or emptied folder should not silently empty the index.
REMOVE_SHARE = 0.10
# Passages embedded per call to the model: each call's token states are encoded before the
# next, so a build holds a chunk's float32 states, not every new passage's (~200 KB each).
EMBED_CHUNK = 256


@dataclass
class BuildSummary:
    """What a build did; `index --json` prints it."""

    index: str
    model: str
    roots: list[str]
    files: int
    reviews: int
    passages: int
    embedded: int
    reused: int
    removed: int
    dropped: list[str]  # folders the index covered before and no longer does (`replace_roots`)
    kept: int  # passages of files that could not be read this time, carried over
    tokens_embedded: int  # passages whose token states (for MaxSim) were computed rather than reused
    seconds: float
    embed_seconds: float  # the part of `seconds` spent embedding
    written: bool = True  # False when the index already held exactly this and nothing was written
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "problems"}
        d["problems"] = [str(p) for p in self.problems]
        return d


def passage_key(model_id: str, embed_text: str) -> str:
    """Content hash that decides whether a stored vector can be reused."""
    return hashlib.sha256(f"{model_id}\0{embed_text}".encode("utf-8")).hexdigest()


def build_roots(paths: Sequence[str | Path] | None, index_dir: Path | str, replace_roots: bool = False) -> list[str]:
    """The note paths a build covers, resolved: the ones the index was built from plus those given
    (only those given with `replace_roots`), else `seeds/` for a new index.

    Naming a folder never makes the index forget the others: that takes
    `replace_roots`. An index folder that exists but no longer says what it was
    built from is never rebuilt from `seeds/` by default: that would shrink it
    to one week.
    """
    remembered = [] if replace_roots and paths else (read_settings(index_dir).roots or [])
    if not paths and not remembered:
        if holds_an_index(index_dir):
            raise BadRequest(f"the index at {Path(index_dir).absolute()} does not record which notes it was built from; name them")
        paths = DEFAULT_ROOTS
    roots: list[str] = []
    for p in [*remembered, *(paths or [])]:
        if (absolute := os.path.realpath(p)) not in roots:
            roots.append(absolute)
    return roots


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def build_index(
    paths: Sequence[str | Path] | None,
    index_dir: Path | str,
    encoder: Encoder,
    full: bool = False,
    replace_roots: bool = False,
    allow_remove: bool = False,
    on_start: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> BuildSummary:
    """Index the review files under `paths` (see `build_roots`) into `index_dir`, reusing vectors unless `full`.

    With `replace_roots` the index covers `paths` only, and passages of the folders
    it no longer covers are removed. A build that would remove more than
    REMOVE_SHARE of the index's passages because covered folders hold no notes
    now raises BadRequest with nothing changed, unless `allow_remove`.
    `on_start(n)` is called with the number of passages to embed (vectors and
    token states come from one pass), `progress(k)` as each batch is done. Raises IndexBusy if another build holds the index,
    DiskError if the disk refuses the new generation (the old one stays live).
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    remembered = read_settings(index_dir).roots or []
    roots = build_roots(paths, index_dir, replace_roots)
    # Read before taking the lock: a bad path then fails with no trace in the index folder.
    _check_remembered(roots, remembered)
    result = read_reviews(roots)
    problems = list(result.problems)
    present = [*result.files, *result.skipped, *result.unreadable_dirs]
    problems += [Problem(r, None, "no .md notes found here") for r in roots if not any(_under(f, r) for f in present)]
    with Writer(index_dir) as writer:
        if writer.previous_problem:
            problems.append(Problem(str(index_dir), None, writer.previous_problem))
        old = _old_passages(writer.previous, problems)
        dropped = [r for r in remembered if r not in roots]
        _check_removal(old, result, roots, paths, allow_remove)
        passages = [p for review in result.reviews for p in chunk_review(review, encoder.count_tokens)]
        records = _records(passages, encoder.model_id, old)
        kept = _kept(old, result, encoder.model_id, problems)
        records += [replace(p, row=len(records) + i) for i, p in enumerate(kept)]

        if not full and _unchanged(writer, old, records, roots, encoder):
            return _summary(index_dir, encoder, writer.previous.manifest, result, records, [], old, dropped, kept,
                            0, started, 0.0, problems, written=False)
        reusable = _reusable_vectors(writer, old, encoder, full, problems)
        vectors, todo = _vectors(records, reusable, encoder.dim)
        old_tokens, old_rows = _reusable_tokens(writer, old, reusable, problems)
        texts = [r.embed_text for r in records]
        needed = set(todo)
        embed_start = time.perf_counter()

        def embed(rows: list[int]):
            # One forward pass gives both the passage vector and its token states; a chunk at a
            # time, so only a chunk's states are held before the token store encodes them.
            for start in range(0, len(rows), EMBED_CHUNK):
                chunk = rows[start : start + EMBED_CHUNK]
                got, states = encoder.embed_passages_and_tokens([texts[i] for i in chunk], progress)
                for i, v in zip(chunk, got):
                    if i in needed:  # a reused vector stays as stored
                        vectors[i] = v
                yield chunk, states

        tokens, tokens_embedded = build_store(
            [r.key for r in records], embed, old_tokens, old_rows, needed,
            lambda rows: sum(encoder.count_tokens(texts[i]) for i in rows), on_plan=on_start,
        )
        embed_seconds = time.perf_counter() - embed_start

        # Both BM25 indexes come from the stored terms, so they are rebuilt whole each time: no Kiwi, milliseconds.
        terms = [r.terms.split() for r in records]
        papers: dict[tuple, int] = {}
        lexical = LexicalIndex.build(terms)
        paper_lexical = LexicalIndex.build(terms, [papers.setdefault(r.paper_key, len(papers)) for r in records])
        manifest = writer.write(encoder.model_id, encoder.dim, roots, records,
                                vectors, lexical, paper_lexical, tokens)
        writer.commit()
    return _summary(index_dir, encoder, manifest, result, records, todo, old, dropped, kept, tokens_embedded,
                    started, embed_seconds, problems, written=True)


def _unchanged(writer: Writer, old: list[StoredPassage], records: list[StoredPassage], roots: list[str],
               encoder: Encoder) -> bool:
    """Whether the live generation already holds exactly these passages, from these folders and this
    model, undamaged: then a build writes nothing (a re-index of a large archive was a full rewrite)."""
    if writer.previous is None or writer.previous_damaged or writer.previous_problem:
        return False
    if not (writer.index_dir / SETTINGS).is_file():  # a build rewrites it
        return False
    m = writer.previous.manifest
    return (m.model_id, m.dim, m.roots) == (encoder.model_id, encoder.dim, roots) and old == records


def _summary(index_dir: Path, encoder: Encoder, manifest, result: ReadResult, records: list[StoredPassage],
             todo: list[int], old: list[StoredPassage], dropped: list[str], kept: list[StoredPassage],
             tokens_embedded: int, started: float, embed_seconds: float, problems: list[Problem],
             written: bool) -> BuildSummary:
    # A passage is gone when its file no longer has that text (copies elsewhere don't count).
    now = {(r.path, r.embed_text) for r in records}
    return BuildSummary(
        index=str(index_dir),
        model=encoder.model_id,
        roots=manifest.roots,
        files=len(result.files),
        reviews=manifest.reviews,
        passages=len(records),
        embedded=len(todo),
        reused=len(records) - len(todo),
        removed=sum(1 for p in old if (p.path, p.embed_text) not in now),
        dropped=dropped,
        kept=len(kept),
        tokens_embedded=tokens_embedded,
        seconds=round(time.perf_counter() - started, 2),
        embed_seconds=round(embed_seconds, 2),
        written=written,
        problems=problems,
    )


def _check_remembered(roots: list[str], remembered: list[str]) -> None:
    """A remembered folder that vanished is an error that says how to stop covering it, not a silent
    removal of its passages."""
    for r in roots:
        if r in remembered and not os.path.lexists(r):
            raise BadRequest(f"{r}: no such file or folder; the index covers it: pass the folders to keep with --replace "
                             "to stop covering it")


def _check_removal(
    old: list[StoredPassage], result: ReadResult, roots: list[str], named: Sequence[str | Path] | None, allow_remove: bool
) -> None:
    """Refuse (BadRequest) a build whose covered folders lost their notes wholesale, or that names a
    folder holding none, before anything is written."""
    if allow_remove or not old:
        return
    present = [*result.files, *result.skipped, *result.unreadable_dirs]  # unreadable notes keep their passages
    found = {r: sum(1 for f in present if _under(f, r)) for r in roots}
    if named and (empty := [r for r in map(os.path.realpath, named) if not found[r]]):
        raise BadRequest(f"{empty[0]} holds no .md notes; nothing changed (pass --allow-remove to build anyway)")
    emptied = [r for r in roots if not found[r] and any(_under(p.path, r) for p in old)]
    gone = [p for p in old if any(_under(p.path, r) for r in emptied) and not result.unreadable(p.path)]
    if len(gone) > REMOVE_SHARE * len(old):
        raise BadRequest(
            f"{emptied[0]} holds no notes now: this build would remove {len(gone)} of the index's {len(old)} passages; "
            "nothing changed (pass --allow-remove to remove them, or --replace with the folders to keep)"
        )


def _old_passages(previous: Index | None, problems: list[Problem]) -> list[StoredPassage]:
    """The previous generation's passages, or none when they cannot be read."""
    if previous is None:
        return []
    try:
        return previous.passages()
    except IndexDamaged as e:
        problems.append(Problem(str(previous.folder), None, f"previous passages unreadable ({e}); building from the notes alone"))
        return []


def _records(passages: list[Passage], model_id: str, old: list[StoredPassage]) -> list[StoredPassage]:
    """Passages as stored rows, with BM25 terms reused from the previous build where the text is unchanged."""
    # Terms depend on the text alone, so any earlier passage with the same text has them.
    known = {p.embed_text: p.terms for p in old}
    new_texts = sorted({p.embed_text for p in passages} - known.keys())
    known.update(zip(new_texts, (" ".join(t) for t in passage_terms(new_texts))))
    return [
        StoredPassage(
            **p.review.review_info(), row=row, key=passage_key(model_id, p.embed_text), line=p.line,
            end_line=p.end_line, passage_no=p.passage_no, text=p.text, embed_text=p.embed_text,
            terms=known[p.embed_text], section=p.section,
        )
        for row, p in enumerate(passages)
    ]


def _kept(old: list[StoredPassage], result: ReadResult, model_id: str, problems: list[Problem]) -> list[StoredPassage]:
    """Previous passages of files that exist but could not be read this time (or sit in unlistable folders)."""
    kept = [replace(p, key=passage_key(model_id, p.embed_text)) for p in old if result.unreadable(p.path)]
    for path, n in Counter(p.path for p in kept).items():
        problems.append(Problem(path, None, f"kept its {n} passages from the previous build"))
    return kept


def _reusable_vectors(
    writer: Writer, passages: list[StoredPassage], encoder: Encoder, full: bool, problems: list[Problem]
) -> dict[str, np.ndarray]:
    """Stored vectors of the previous `passages` that may be reused, by passage key: none with `full`,
    another model, or a damaged vector file."""
    old = writer.previous
    if full or not passages or old.manifest.model_id != encoder.model_id or old.manifest.dim != encoder.dim:
        return {}
    if VECTORS in writer.previous_damaged:
        problems.append(Problem(str(old.folder / VECTORS), None, "checksum mismatch; every passage is embedded again"))
        return {}
    vectors = old.vectors([p.row for p in passages], check=False)
    sound = unit_rows_ok(vectors)
    if not sound.all():
        problems.append(Problem(str(old.folder / VECTORS), None, f"{int((~sound).sum())} damaged vectors embedded again"))
    return {p.key: v for p, v, ok in zip(passages, vectors, sound) if ok}


def _reusable_tokens(
    writer: Writer, passages: list[StoredPassage], reusable: dict[str, np.ndarray], problems: list[Problem]
) -> tuple[TokenStore | None, dict[str, int]]:
    """The previous token store and the row of each passage key in it, when its vectors may be reused too."""
    old = writer.previous
    if not reusable:
        return None, {}
    try:
        if damaged := [n for n in writer.previous_damaged if n.startswith(TOKENS + "/")]:
            raise old.damaged(f"{old.folder / damaged[0]} does not match its checksum")
        store = old.tokens
    except IndexDamaged as e:
        problems.append(Problem(str(old.folder / TOKENS), None, f"token states unusable, embedding them again ({e})"))
        return None, {}
    return store, {p.key: p.row for p in passages if p.key in reusable}


def _vectors(records: list[StoredPassage], reusable: dict[str, np.ndarray], dim: int) -> tuple[np.ndarray, list[int]]:
    """The vector matrix with reused rows filled in, and the rows still to embed."""
    vectors = np.zeros((len(records), dim), dtype=np.float32)
    todo = []
    for i, r in enumerate(records):
        if r.key in reusable:
            vectors[i] = reusable[r.key]
        else:
            todo.append(i)
    return vectors, todo
