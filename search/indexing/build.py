"""Building the index: files → reviews → passages → vectors → a new generation.

Builds are incremental. Each passage is keyed by a hash of the model and the
text it embeds, so a re-run embeds only passages that are new or changed and
reuses the stored vectors of the rest (the backend's storage.Writer decides
what it can reuse); passages of deleted files or removed reviews simply are
not carried over. Bad input never costs indexed data: a file that was indexed
before but can no longer be read (a bad save, a wrong encoding, a folder that
cannot be listed) keeps its old passages, with `--full` too (their kept text
is embedded again).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..backends import holds_an_index, location_text, open_writer, read_settings
from ..notes.chunking import Passage, chunk_review
from ..model.protocol import Encoder, Progress
from ..errors import BadRequest
from ..notes.terms import passage_terms
from ..notes.reader import Problem, ReadResult, read_reviews
from ..storage import StoredPassage, Written

DEFAULT_ROOTS = ["seeds"]
# A build that would drop more than this share of the index's passages because
# folders it covers now hold no notes is refused unless told to: a moved,
# unmounted or emptied folder should not silently empty the index.
REMOVE_SHARE = 0.10


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
    remembered = read_settings(index_dir).roots or []
    roots = build_roots(paths, index_dir, replace_roots)
    # Read before taking the lock: a bad path then fails with no trace in the index folder.
    _check_remembered(roots, remembered)
    result = read_reviews(roots)
    problems = list(result.problems)
    present = [*result.files, *result.skipped, *result.unreadable_dirs]
    problems += [Problem(r, None, "no .md notes found here") for r in roots if not any(_under(f, r) for f in present)]
    with open_writer(index_dir) as writer:
        if writer.previous_problem:
            problems.append(Problem(str(index_dir), None, writer.previous_problem))
        old = writer.previous_passages(problems)
        dropped = [r for r in remembered if r not in roots]
        _check_removal(old, result, roots, paths, allow_remove)
        passages = [p for review in result.reviews for p in chunk_review(review, encoder.count_tokens)]
        records = _records(passages, encoder.model_id, old)
        kept = _kept(old, result, encoder.model_id, problems)
        records += [replace(p, row=len(records) + i) for i, p in enumerate(kept)]
        done = writer.update(records, roots, encoder, full, problems, on_start, progress)
    return _summary(index_dir, encoder, roots, result, records, done, old, dropped, kept, started, problems)


def _summary(index_dir: Path | str, encoder: Encoder, roots: list[str], result: ReadResult, records: list[StoredPassage],
             done: Written, old: list[StoredPassage], dropped: list[str], kept: list[StoredPassage],
             started: float, problems: list[Problem]) -> BuildSummary:
    # A passage is gone when its file no longer has that text (copies elsewhere don't count).
    now = {(r.path, r.embed_text) for r in records}
    return BuildSummary(
        index=location_text(index_dir),
        model=encoder.model_id,
        roots=roots,
        files=len(result.files),
        reviews=len({p.review_key for p in records}),
        passages=len(records),
        embedded=done.embedded,
        reused=len(records) - done.embedded,
        removed=sum(1 for p in old if (p.path, p.embed_text) not in now),
        dropped=dropped,
        kept=len(kept),
        tokens_embedded=done.tokens_embedded,
        seconds=round(time.perf_counter() - started, 2),
        embed_seconds=round(done.embed_seconds, 2),
        written=done.written,
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
