"""Building the index: files → reviews → passages → vectors → a new generation.

Builds are incremental. Each passage is keyed by a hash of the model and the
text it embeds, so a re-run embeds only passages that are new or changed and
reuses the stored vectors of the rest; passages of deleted files or removed
reviews simply are not carried over. A file that was indexed before but can
no longer be read (a bad save, a wrong encoding) keeps its old passages, so
bad input never costs indexed data.
"""

from __future__ import annotations

import hashlib
from collections import Counter
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .chunking import Passage, chunk_review
from .embedding import Encoder, Progress
from .errors import IndexUnavailable
from .late import build_store
from .lexical import LexicalIndex, passage_terms
from .reader import Problem, read_reviews
from .store import CURRENT, FORMAT_VERSION, Index, Manifest, StoredPassage, Writer, open_index, read_manifest

DEFAULT_ROOTS = ["seeds"]


@dataclass
class BuildSummary:
    """What a build did; `index --json` prints it."""

    index: str
    model: str
    files: int
    reviews: int
    passages: int
    embedded: int
    reused: int
    removed: int
    seconds: float
    embed_seconds: float  # the part of `seconds` spent embedding
    tokens_embedded: int = 0  # passages whose token states (for MaxSim) were computed rather than reused
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "problems"}
        d["problems"] = [str(p) for p in self.problems]
        return d


def passage_key(model_id: str, embed_text: str) -> str:
    """Content hash that decides whether a stored vector can be reused."""
    return hashlib.sha256(f"{model_id}\0{embed_text}".encode("utf-8")).hexdigest()


def _stored(p: Passage, row: int, key: str, terms: str) -> StoredPassage:
    r = p.review
    return StoredPassage(
        row=row, key=key, path=r.path, file=r.file, week=r.week, topic_no=r.topic_no, topic=r.topic,
        presenter=r.presenter, review_no=r.review_no, reviewer=r.reviewer, line=p.line,
        end_line=p.end_line, passage_no=p.passage_no, text=p.text, embed_text=p.embed_text, terms=terms,
    )


def _previous(index_dir: Path, problems: list[Problem]) -> Index | None:
    """The index being updated, or None when there is none or it cannot be read."""
    try:
        return open_index(index_dir)
    except IndexUnavailable as e:
        if (index_dir / CURRENT).exists():
            problems.append(Problem(str(index_dir), None, f"previous index unusable, building from scratch ({e})"))
        return None


def _old_tokens(old: Index, problems: list[Problem]):
    """The previous index's token states, or None (all re-embedded) when it has none or they are damaged."""
    try:
        return old.tokens
    except IndexUnavailable as e:
        problems.append(Problem(str(old.folder), None, f"token states unusable, embedding them again ({e})"))
        return None


def previous_settings(index_dir: Path | str) -> tuple[list[str] | None, str | None]:
    """The paths and model the existing index was built with, read leniently.

    Only the manifest is read, and an index of an older format still counts:
    a rebuild after an upgrade should cover the same notes with the same model.
    """
    manifest = read_manifest(Path(index_dir))
    return manifest.get("roots"), manifest.get("model_id")


def build_index(
    paths: Sequence[str | Path],
    index_dir: Path | str,
    encoder: Encoder,
    full: bool = False,
    on_start: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> BuildSummary:
    """Index the review files under `paths` into `index_dir`, reusing vectors unless `full`.

    `on_start(n)` is called with the number of passages to embed, `progress(k)`
    as each batch is done. Raises IndexBusy if another build holds the index.
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    with Writer(index_dir) as writer:
        result = read_reviews(paths)
        problems = list(result.problems)
        passages = [p for review in result.reviews for p in chunk_review(review, encoder.count_tokens)]
        old = _previous(index_dir, problems)
        old_passages = old.passages() if old is not None else []
        # Terms depend on the text alone, so any earlier passage with the same text has them.
        known_terms = {p.embed_text: p.terms for p in old_passages}
        new_texts = sorted({p.embed_text for p in passages} - known_terms.keys())
        known_terms.update(zip(new_texts, (" ".join(t) for t in passage_terms(new_texts))))
        records = [
            _stored(p, row, passage_key(encoder.model_id, p.embed_text), known_terms[p.embed_text])
            for row, p in enumerate(passages)
        ]

        reusable = not full and old is not None and old.manifest.model_id == encoder.model_id
        old_by_key = {p.key: p.row for p in old_passages} if reusable else {}
        if reusable:
            # Files that exist but could not be read this time keep their last good passages.
            unreadable = set(result.skipped)
            kept = [p for p in old_passages if p.path in unreadable]
            for path, n in Counter(p.path for p in kept).items():
                problems.append(Problem(path, None, f"kept its {n} passages from the previous build"))
            records += [replace(p, row=len(records) + i) for i, p in enumerate(kept)]

        old_tokens = _old_tokens(old, problems) if reusable else None
        vectors = np.zeros((len(records), encoder.dim), dtype=np.float32)
        reuse = [(i, old_by_key[r.key]) for i, r in enumerate(records) if r.key in old_by_key]
        if reuse:
            vectors[[i for i, _ in reuse]] = old.vectors([j for _, j in reuse])
        todo = [i for i, r in enumerate(records) if r.key not in old_by_key]
        if on_start:
            on_start(len(todo))
        embed_start = time.perf_counter()
        fresh: dict[int, np.ndarray] = {}
        if todo:
            vectors[todo], new_tokens = encoder.embed_passages_and_tokens([records[i].embed_text for i in todo], progress)
            fresh = dict(zip(todo, new_tokens))
        tokens, tokens_embedded = build_store(
            [r.key for r in records], [r.embed_text for r in records],
            lambda texts: encoder.embed_passages_and_tokens(texts)[1], old_tokens, old_by_key, fresh)
        embed_seconds = time.perf_counter() - embed_start
        # A passage is gone when its file no longer has that text (copies elsewhere don't count).
        kept_texts = {(r.path, r.key) for r in records}
        removed = sum(1 for p in old_passages if (p.path, p.key) not in kept_texts)
        if old is not None:
            old.close()

        lexical = LexicalIndex.build([r.terms.split() for r in records])
        per_file = Counter(r.path for r in records)
        manifest = Manifest(
            format=FORMAT_VERSION,
            model_id=encoder.model_id,
            dim=encoder.dim,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            files=[{"path": f, "passages": n} for f, n in sorted(per_file.items())],
            passages=len(records),
            reviews=len({r.review_key for r in records}),
            roots=[str(Path(p).resolve()) for p in paths],
        )
        writer.write(manifest, records, vectors, lexical, tokens)
        writer.commit()
    return BuildSummary(
        index=str(index_dir),
        model=encoder.model_id,
        files=len(result.files),
        reviews=manifest.reviews,
        passages=len(records),
        embedded=len(todo),
        reused=len(reuse),
        removed=removed,
        seconds=round(time.perf_counter() - started, 2),
        embed_seconds=round(embed_seconds, 2),
        tokens_embedded=tokens_embedded,
        problems=problems,
    )
