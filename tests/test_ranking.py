"""Ranking: modes, grouping by review, filters before top-k, model checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.build import build_index
from search.ranking import Filters, ModelMismatch, Searcher, parse_weeks, rrf
from search.store import open_index

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def searcher(dev_corpus: Path, tmp_path: Path, fake_encoder) -> Searcher:
    build_index([dev_corpus / "weeks", ROOT / "seeds"], tmp_path / "idx", fake_encoder)
    return Searcher(open_index(tmp_path / "idx"), fake_encoder)


def test_rrf_rewards_agreement():
    fused = rrf([{1: 0.9, 2: 0.8, 3: 0.1}, {2: 5.0, 3: 4.0}])
    assert max(fused, key=fused.get) == 2
    assert fused[1] == pytest.approx(1 / 61)


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_modes_find_the_obvious_review(searcher: Searcher, mode: str):
    hits = searcher.search("whisper hallucination 해결", k=3, mode=mode, group="review")
    assert hits[0].passage.topic.startswith("Calm-Whisper") and hits[0].passage.reviewer == "박민경"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_scores_reported_per_mode(searcher: Searcher):
    (d,) = searcher.search("whisper", k=1, mode="dense")
    assert d.lexical is None and d.dense == d.score
    (h,) = searcher.search("whisper", k=1, mode="hybrid")
    assert h.dense is not None and h.lexical is not None


def test_review_grouping_shows_each_review_once(searcher: Searcher):
    hits = searcher.search("hallucination", k=10, group="review")
    keys = [h.passage.review_key for h in hits]
    assert len(keys) == len(set(keys)) == 10
    # the review with several matching passages says so, and its best one is shown
    assert any(h.passages > 1 for h in hits)
    best = searcher.search("hallucination", k=1, group="passage")[0]
    assert hits[0].passage == best.passage


def test_filters_apply_before_top_k(searcher: Searcher):
    k = 4
    hits = searcher.search("모델 학습", k=k, filters=Filters(reviewer="이서연"), group="passage")
    assert len(hits) == k and all(h.passage.reviewer == "이서연" for h in hits)
    hits = searcher.search("모델 학습", k=k, filters=Filters(weeks=(14, 15)), group="review")
    assert len(hits) == k and all(h.passage.week in (14, 15) for h in hits)
    hits = searcher.search("모델", k=50, filters=Filters(topic="bert"), group="review")
    assert {h.passage.topic for h in hits} == {
        "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
        "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    }
    assert searcher.search("모델", filters=Filters(reviewer="없는사람")) == []


@pytest.mark.parametrize("text, weeks", [("3", (3, 3)), ("3-5", (3, 5)), (" 4 - 4 ", (4, 4))])
def test_parse_weeks(text, weeks):
    assert parse_weeks(text) == weeks


@pytest.mark.parametrize("text", ["5-3", "x", "1-2-3", ""])
def test_parse_weeks_rejects(text):
    with pytest.raises(ValueError, match="--week"):
        parse_weeks(text)


def test_empty_query_and_bad_mode(searcher: Searcher):
    with pytest.raises(ValueError, match="empty"):
        searcher.search("   ")
    with pytest.raises(ValueError, match="unknown mode"):
        searcher.search("x", mode="magic")


def test_querying_with_another_model_is_an_error(searcher: Searcher):
    other = type(searcher.encoder)()
    other.model_id = "fake/other"
    with pytest.raises(ModelMismatch, match="built with fake/trigram-64"):
        Searcher(searcher.index, other)
