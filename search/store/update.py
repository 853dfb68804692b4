"""A build's write into the local store: reuse what the live generation holds, embed what is new,
write the next generation (the local backend's storage.Writer).

Stored vectors and token states are reused by passage key; those that fail
their checksum or norm are embedded again instead of being carried on. Both
BM25 indexes are rebuilt whole from the passages' stored terms each time (no
Kiwi: milliseconds).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ..errors import IndexDamaged
from ..model.protocol import Encoder, Progress
from ..notes.reader import Problem
from ..storage import StoredPassage, Written
from .bm25 import LexicalIndex
from .index import SETTINGS, TOKENS, VECTORS, Writer, unit_rows_ok
from .tokens import TokenStore, build_store

# Passages embedded per call to the model: each call's token states are encoded before the
# next, so a build holds a chunk's float32 states, not every new passage's (~200 KB each).
EMBED_CHUNK = 256


class LocalWriter(Writer):
    """`store.index.Writer` (the generation, the lock, the atomic swap) with the build's reuse rules."""

    _previous_passages: list[StoredPassage] | None = None

    def update(self, records: Sequence[StoredPassage], roots: list[str], encoder: Encoder, full: bool,
               problems: list[Problem], on_start: Callable[[int], None] | None = None,
               progress: Progress | None = None) -> Written:
        """storage.Writer.update for a folder: a new generation, made live atomically."""
        old = self.previous_passages(problems)
        if not full and self._unchanged(old, records, roots, encoder):
            return Written(0, 0, 0.0, written=False)
        reusable = self._reusable_vectors(old, encoder, full, problems)
        vectors, todo = _vectors(records, reusable, encoder.dim)
        old_tokens, old_rows = self._reusable_tokens(old, reusable, problems)
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
        lexical = LexicalIndex.build([r.terms.split() for r in records])
        paper_lexical = LexicalIndex.of_papers(records)
        self.write(encoder.model_id, encoder.dim, roots, records, vectors, lexical, paper_lexical, tokens)
        self.commit()
        return Written(len(todo), tokens_embedded, embed_seconds, written=True)

    def previous_passages(self, problems: list[Problem]) -> list[StoredPassage]:
        """storage.Writer.previous_passages: read once, from SQLite."""
        if self._previous_passages is None:
            self._previous_passages = []
            if self.previous is not None:
                try:
                    self._previous_passages = self.previous.passages()
                except IndexDamaged as e:
                    problems.append(Problem(str(self.previous.folder), None,
                                            f"previous passages unreadable ({e}); building from the notes alone"))
        return self._previous_passages

    def _unchanged(self, old: list[StoredPassage], records: Sequence[StoredPassage], roots: list[str],
                   encoder: Encoder) -> bool:
        """Whether the live generation already holds exactly these passages, from these folders and this
        model, undamaged: then a build writes nothing (a re-index of a large archive was a full rewrite)."""
        if self.previous is None or self.previous_damaged or self.previous_problem:
            return False
        if not (self.index_dir / SETTINGS).is_file():  # a build rewrites it
            return False
        m = self.previous.manifest
        return (m.model_id, m.dim, m.roots) == (encoder.model_id, encoder.dim, roots) and old == list(records)

    def _reusable_vectors(self, passages: list[StoredPassage], encoder: Encoder, full: bool,
                          problems: list[Problem]) -> dict[str, np.ndarray]:
        """Stored vectors of the previous `passages` that may be reused, by passage key: none with `full`,
        another model, or a damaged vector file."""
        old = self.previous
        if full or not passages or old.manifest.model_id != encoder.model_id or old.manifest.dim != encoder.dim:
            return {}
        if VECTORS in self.previous_damaged:
            problems.append(Problem(str(old.folder / VECTORS), None, "checksum mismatch; every passage is embedded again"))
            return {}
        vectors = old.vectors([p.row for p in passages], check=False)
        sound = unit_rows_ok(vectors)
        if not sound.all():
            problems.append(Problem(str(old.folder / VECTORS), None, f"{int((~sound).sum())} damaged vectors embedded again"))
        return {p.key: v for p, v, ok in zip(passages, vectors, sound) if ok}

    def _reusable_tokens(self, passages: list[StoredPassage], reusable: dict[str, np.ndarray],
                         problems: list[Problem]) -> tuple[TokenStore | None, dict[str, int]]:
        """The previous token store and the row of each passage key in it, when its vectors may be reused too."""
        old = self.previous
        if not reusable:
            return None, {}
        try:
            if damaged := [n for n in self.previous_damaged if n.startswith(TOKENS + "/")]:
                raise old.damaged(f"{old.folder / damaged[0]} does not match its checksum")
            store = old.tokens
        except IndexDamaged as e:
            problems.append(Problem(str(old.folder / TOKENS), None, f"token states unusable, embedding them again ({e})"))
            return None, {}
        return store, {p.key: p.row for p in passages if p.key in reusable}


def _vectors(records: Sequence[StoredPassage], reusable: dict[str, np.ndarray], dim: int) -> tuple[np.ndarray, list[int]]:
    """The vector matrix with reused rows filled in, and the rows still to embed."""
    vectors = np.zeros((len(records), dim), dtype=np.float32)
    todo = []
    for i, r in enumerate(records):
        if r.key in reusable:
            vectors[i] = reusable[r.key]
        else:
            todo.append(i)
    return vectors, todo
