"""The local backend's BM25: sparse matrices over the terms of notes/terms.py, saved as .npy + JSON."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from ..notes.terms import QuerySegmenter

VOCAB_FILE = "vocab.index.json"
PARAMS_FILE = "params.index.json"
GROUPS_FILE = "groups.index.npy"  # document of each row, in an index whose documents are groups of rows


class LexicalIndex:
    """BM25 over passage terms; rows line up with the dense index.

    bm25s builds the index and computes every (term, passage) BM25 weight up
    front, saving them as a sparse matrix in .npy files. Scoring a query is
    then a sum of matrix columns, which `scores_for` does with numpy on the saved
    arrays: that keeps bm25s and SciPy (a quarter second of imports) off the
    query path.

    A document is one row (a passage), or, built with `groups`, all the rows
    of one group (a paper's reviews): each row then scores as its group.
    """

    def __init__(self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, vocab: dict[str, int], documents: int,
                 groups: np.ndarray | None = None):
        if groups is not None and (groups.ndim != 1 or groups.dtype.kind not in "iu"
                                   or (len(groups) and not (0 <= groups.min() and groups.max() < documents))):
            raise ValueError("row groups that are not document numbers")
        self._data, self._indices, self._indptr = data, indices, indptr
        self._vocab = vocab
        self._groups = groups
        self.documents = documents
        self.size = documents if groups is None else len(groups)  # rows scored
        self.vocab = frozenset(vocab) - {""}

    @classmethod
    def build(cls, terms: Sequence[list[str]], groups: Sequence[int] | None = None) -> "LexicalIndex":
        """Index the given term lists (one per row, in row order).

        With `groups` (one number per row, 0 to n-1), the rows of a group are
        one document, and every row scores as its group's document.
        """
        import bm25s

        docs = list(terms)
        if groups is not None:
            docs = [[] for _ in range(max(groups, default=-1) + 1)]
            for g, t in zip(groups, terms, strict=True):
                docs[g].extend(t)
        retriever = bm25s.BM25(method="lucene")
        # bm25s cannot index an empty corpus or an empty document; a blank term keeps rows aligned.
        retriever.index([t or [""] for t in docs] or [[""]], show_progress=False)
        m = retriever.scores
        return cls(m["data"], m["indices"], m["indptr"], dict(retriever.vocab_dict), len(docs),
                   None if groups is None else np.asarray(groups, dtype=np.int32))

    @classmethod
    def of_papers(cls, passages: Sequence) -> "LexicalIndex":
        """BM25 with each paper's passages (all its reviews) as one document, a row scoring as its paper."""
        papers: dict[tuple, int] = {}
        return cls.build([p.terms.split() for p in passages], [papers.setdefault(p.paper_key, len(papers)) for p in passages])

    def save(self, folder: Path) -> None:
        """Write the index into `folder` in bm25s's file layout (numpy arrays and JSON, no pickle)."""
        for name, array in (("data", self._data), ("indices", self._indices), ("indptr", self._indptr)):
            np.save(folder / f"{name}.csc.index.npy", array, allow_pickle=False)
        if self._groups is not None:
            np.save(folder / GROUPS_FILE, self._groups, allow_pickle=False)
        (folder / VOCAB_FILE).write_text(json.dumps(self._vocab, ensure_ascii=False), encoding="utf-8")
        (folder / PARAMS_FILE).write_text(json.dumps({"method": "lucene", "num_docs": self.documents}), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex":
        """Read an index written by `save`."""
        arrays = [np.load(folder / f"{name}.csc.index.npy", allow_pickle=False) for name in ("data", "indices", "indptr")]
        vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
        documents = json.loads((folder / PARAMS_FILE).read_text(encoding="utf-8"))["num_docs"]
        groups = np.load(folder / GROUPS_FILE, allow_pickle=False) if (folder / GROUPS_FILE).exists() else None
        data, indices, indptr = arrays
        # Unverified large generations (store.index.VERIFY_ON_OPEN_BYTES) are read as they are: a damaged
        # index would raise IndexError deep in a query or shift scores silently, so its shape is checked here.
        with np.errstate(invalid="ignore"):
            # bm25s gives the empty term the last id and no column (every other id needs indptr[id + 1]),
            # and an empty index one placeholder document.
            ids = np.fromiter((i for term, i in vocab.items() if term), dtype=np.int64)
            sound = (indptr.ndim == 1 and (not len(ids) or 0 <= ids.min() <= ids.max() < len(indptr) - 1)
                     and indptr[0] == 0 and indptr[-1] == len(indices)
                     and len(data) == len(indices) and np.all(np.diff(indptr) >= 0)
                     and (not len(indices) or (indices.min() >= 0 and indices.max() < max(documents, 1)))
                     and np.isfinite(data).all() and np.all(data >= 0))
        if not sound:
            raise ValueError("BM25 arrays are damaged")
        return cls(*arrays, vocab, documents, groups)

    def weights_without_idf(self) -> list[dict[str, float]]:
        """Per document, each of its terms' BM25 weight divided by the term's IDF: what an engine that
        applies IDF itself (Qdrant's sparse vectors with the IDF modifier, Lucene's formula as bm25s's
        `lucene` method uses) needs stored to give these scores back."""
        df = np.diff(self._indptr)
        idf = np.log(1 + (self.documents - df + 0.5) / (df + 0.5))
        term_of = np.repeat(np.arange(len(df)), df)
        names = {i: t for t, i in self._vocab.items() if t}
        out: list[dict[str, float]] = [{} for _ in range(self.documents)]
        for doc, t, w in zip(self._indices.tolist(), term_of.tolist(), (self._data / idf[term_of]).tolist()):
            if t in names:
                out[doc][names[t]] = w
        return out

    @classmethod
    def load_for(cls, folder: Path, rows: int, damaged) -> "LexicalIndex":
        """`load`, for an index of `rows` passages; anything wrong raises `damaged(message)` naming the folder."""
        try:
            lexical = cls.load(folder)
        except Exception as e:  # numpy and json raise many types for a bad file
            raise damaged(f"{folder} is damaged ({type(e).__name__})") from e
        if lexical.size != rows:
            raise damaged(f"{folder} does not match the passages")
        return lexical

    def terms(self, query: str) -> list[str]:
        """The query's terms that this index knows (stopwords never made it into the vocabulary)."""
        return [t for t in self._segmenter.terms(query) if t in self.vocab]

    @cached_property
    def _segmenter(self) -> QuerySegmenter:
        return QuerySegmenter(self.vocab)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every row for the query (zeros when no term matches)."""
        return self.scores_for(self.terms(query))

    def scores_of(self, terms: list[str], rows) -> dict[int, float]:
        """The given rows' scores for already segmented query terms, for rows that scored at all."""
        if not terms:
            return {}
        scores = self.scores_for(terms)
        return {r: float(scores[r]) for r in rows if scores[r] > 0}

    def scores_for(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every row for already segmented query terms."""
        scores = np.zeros(self.documents, dtype=np.float32)
        for term in terms:
            t = self._vocab[term]
            span = slice(self._indptr[t], self._indptr[t + 1])
            np.add.at(scores, self._indices[span], self._data[span])
        return scores if self._groups is None else scores[self._groups]
