"""The local backend's BM25 matrices over Korean terms (the terms: tests/notes/test_terms.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.notes.terms import passage_terms
from search.store.bm25 import LexicalIndex


def test_bm25_ranks_matching_rows_and_round_trips(tmp_path: Path):
    texts = ["위스퍼의 hallucination 문제", "LoRA 저랭크 학습", "BM25와 dense retrieval 비교"]
    idx = LexicalIndex.build(passage_terms(texts))
    scores = idx.scores("hallucination문제를 줄이는 법")
    assert scores.argmax() == 0 and scores[1] == scores[2] == 0
    idx.save(tmp_path)
    again = LexicalIndex.load(tmp_path)
    assert (again.scores("hallucination문제를 줄이는 법") == scores).all()
    assert again.terms("LoRA로 학습") == ["lora", "학습"]


def test_no_terms_no_scores():
    idx = LexicalIndex.build(passage_terms(["문서 하나"]))
    assert not idx.scores("전혀 다른 말").any()
    assert LexicalIndex.build([]).scores("x").shape == (0,)


def test_a_saved_index_loads_back_with_the_checks_on(tmp_path: Path):
    # bm25s gives the empty term the last id and no column; the load-time checks must allow that
    built = LexicalIndex.build([["모델", "학습"], ["학습", "비용"], []])
    built.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    assert np.array_equal(loaded.scores_for(["학습"]), built.scores_for(["학습"]))
    np.save(tmp_path / "indices.csc.index.npy", np.array([0, 1, 7, 1], dtype=np.int32))  # a row past the end
    with pytest.raises(ValueError, match="BM25 arrays are damaged"):
        LexicalIndex.load(tmp_path)
