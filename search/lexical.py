"""Lexical retrieval that understands Korean: BM25 over morphemes.

Korean particles stick to nouns (`hallucination문제를`, `강화학습으로`), so
whitespace tokens almost never match between a query and a note. Passages are
therefore analysed with Kiwi (kiwipiepy), keeping nouns, roots, foreign words
and numbers, English lower-cased and kept whole.

Kiwi takes over two seconds to load, which a one-shot query cannot afford.
Queries are short and BM25 can only ever match terms that occur in the
corpus, so a query is instead segmented against the index's own vocabulary:
Latin and digit runs are terms as they are, and each Hangul run is cut
greedily into the longest vocabulary words it starts with (`문제를` → `문제`,
`강화학습했다` → `강화`, `학습`). That needs no model and takes microseconds.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

# Kiwi tags kept as index terms: common/proper nouns, roots, foreign words, numbers, hanja.
KEEP_TAGS = {"NNG", "NNP", "XR", "SL", "SN", "SH"}
_QUERY_RUNS = re.compile(r"[A-Za-z]+|[0-9]+|[\uac00-\ud7a3]+")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
VOCAB_FILE = "vocab.index.json"


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


def passage_terms(texts: Sequence[str]) -> list[list[str]]:
    """Index terms for each text: Kiwi morphemes of the kept kinds, lower-cased."""
    if not texts:
        return []
    kiwi = _kiwi()
    return [
        [t.form.lower() for t in tokens if t.tag in KEEP_TAGS]
        for tokens in kiwi.tokenize(list(texts))
    ]


def query_terms(query: str, vocab: set[str] | frozenset[str]) -> list[str]:
    """Terms of a query, segmented against the corpus vocabulary (no Kiwi, see module doc)."""
    terms: list[str] = []
    for run in _QUERY_RUNS.findall(query):
        if not _HANGUL.match(run):
            terms.append(run.lower())
            continue
        i = 0
        while i < len(run):
            # Longest vocabulary word starting here; single syllables only when the
            # run is one syllable, since most of them are particles or endings.
            for j in range(len(run), i, -1):
                piece = run[i:j]
                if piece in vocab and (j - i > 1 or len(run) == 1):
                    terms.append(piece)
                    i = j
                    break
            else:
                i += 1
    return terms


class LexicalIndex:
    """BM25 (bm25s) over passage terms; rows line up with the dense index."""

    def __init__(self, retriever, vocab: frozenset[str]):
        self._retriever = retriever
        self.vocab = vocab

    @classmethod
    def build(cls, terms: Sequence[list[str]]) -> "LexicalIndex":
        """Index the given term lists (one per passage, in row order)."""
        import bm25s

        retriever = bm25s.BM25()
        # bm25s cannot index an empty corpus or an empty document; a blank term keeps rows aligned.
        retriever.index([t or [""] for t in terms] or [[""]], show_progress=False)
        return cls(retriever, frozenset(retriever.vocab_dict) - {""})

    def save(self, folder: Path) -> None:
        """Write the index into `folder` (numpy arrays and JSON, no pickle)."""
        self._retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex":
        """Read an index written by `save`."""
        import bm25s

        retriever = bm25s.BM25.load(str(folder), show_progress=False, allow_pickle=False)
        vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
        return cls(retriever, frozenset(vocab) - {""})

    def terms(self, query: str) -> list[str]:
        """The query's terms that this index knows."""
        return [t for t in query_terms(query, self.vocab) if t in self.vocab]

    def scores(self, query: str, size: int) -> np.ndarray:
        """BM25 score of every row for the query (zeros when no term matches)."""
        terms = self.terms(query)
        if not terms:
            return np.zeros(size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(terms), dtype=np.float32)[:size]
