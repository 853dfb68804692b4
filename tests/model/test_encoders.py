"""The passage encoders: batches by length, answers in the order given."""

from __future__ import annotations

import numpy as np
import pytest

from search.model import encoders
from search.model.encoders import _length_sorted_batches

TEXTS = ["짧다.", "LoRA는 가중치 업데이트를 low-rank 행렬 두 개로 분해해서 학습 파라미터 수를 크게 줄인다. " * 6,
         "Whisper", "중간 길이의 문장이 여기에 하나 있다, hallucination 이야기.", "b " * 40, "가"]


def test_batches_hold_texts_of_like_length_and_cover_each_once(monkeypatch):
    monkeypatch.setattr(encoders, "BATCH_SIZE", 2)
    batches = list(_length_sorted_batches(TEXTS))
    assert sorted(i for b in batches for i in b) == list(range(len(TEXTS)))
    lengths = [len(TEXTS[i]) for b in batches for i in b]
    assert lengths == sorted(lengths) and all(len(b) <= 2 for b in batches)


def test_batches_of_long_texts_are_smaller(monkeypatch):
    monkeypatch.setattr(encoders, "BATCH_CHARS", 100)
    texts = ["a" * 10] * 20 + ["b" * 40] * 6
    batches = list(_length_sorted_batches(texts))
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    assert [len(b) for b in batches] == [10, 10, 2, 2, 2]  # 10 short texts fill 100 characters, 2 long ones 80


@pytest.mark.model
def test_sorted_batches_give_each_text_its_own_vector_and_tokens(e5_encoder):
    vectors, tokens = e5_encoder.embed_passages_and_tokens(TEXTS)
    for text, v, t in zip(TEXTS, vectors, tokens):
        (one,), (one_tokens,) = e5_encoder.embed_passages_and_tokens([text])
        assert float(v @ one) > 0.9999 and t.shape == one_tokens.shape
        assert np.allclose(t, one_tokens, atol=2e-3)
    assert np.allclose(e5_encoder.embed_passages(TEXTS), vectors, atol=1e-5)
