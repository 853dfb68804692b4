"""Ranking: modes, grouping by review, filters before top-k, model checks (on tests/corpus, fake encoder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.errors import BadRequest
from search.errors import ModelMismatch
from search.rank.fusion import rrf
from search.rank.searcher import Searcher
from search.rank.request import Mode, SearchRequest
from search.store.index import open_index


@pytest.fixture
def searcher(corpus_index: Path, fake_encoder) -> Searcher:
    with open_index(corpus_index) as idx:
        yield Searcher(idx, fake_encoder)


def search(searcher: Searcher, query: str, **kw):
    return searcher.search(SearchRequest.parse(query, **kw)).hits


def test_rrf_rewards_agreement():
    fused = rrf([{1: 0.9, 2: 0.8, 3: 0.1}, {2: 5.0, 3: 4.0}])
    assert max(fused, key=fused.get) == 2
    assert fused[1] == pytest.approx(1 / 61)


@pytest.mark.parametrize("mode", list(Mode))
def test_modes_find_the_obvious_review(searcher: Searcher, mode: Mode):
    hits = search(searcher, "whisper hallucination 해결", k=3, mode=mode, group="review")
    assert "Speech Recognition" in hits[0].passage.topic and hits[0].passage.reviewer == "이영희"
    # Fused modes order by the fused value; the shown score follows that order (shown_scores).
    order = [h.fused if h.fused is not None else h.score for h in hits]
    assert order == sorted(order, reverse=True)


def test_scores_reported_per_mode(searcher: Searcher):
    (d,) = search(searcher, "whisper", k=1, mode="dense")
    assert d.lexical is None and d.dense == d.score
    (h,) = search(searcher, "whisper", k=1, mode="hybrid")
    assert h.dense is not None and h.lexical is not None


def test_result_carries_the_matched_query_terms(searcher: Searcher):
    result = searcher.search(SearchRequest.parse("hallucination문제를 해결", mode="hybrid"))
    assert "hallucination" in result.terms and "문제" in result.terms


def test_review_grouping_shows_each_review_once(searcher: Searcher):
    hits = search(searcher, "학습", k=8, group="review")
    keys = [h.passage.review_key for h in hits]
    assert len(keys) == len(set(keys)) == 8  # of the corpus's 9 reviews
    # a review with several matching passages says so, and its best one is shown
    assert any(h.passages > 1 for h in hits)
    best = search(searcher, "학습", k=1, group="passage")[0]
    assert hits[0].passage == best.passage


def test_filters_apply_before_top_k(searcher: Searcher):
    k = 3
    hits = search(searcher, "모델 학습", k=k, reviewer="김철수", group="passage")
    assert len(hits) == k and all(h.passage.reviewer == "김철수" for h in hits)
    hits = search(searcher, "모델 학습", k=k, week="1-2", group="review")
    assert len(hits) == k and all(h.passage.week in (1, 2) for h in hits)
    hits = search(searcher, "모델", k=50, topic="bert", group="review")
    assert {h.passage.topic for h in hits} == {
        "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
        "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    }
    with pytest.raises(BadRequest, match="no review matches: no reviewer is named '없는사람'; reviewers: 김철수, 박민수, 이영희, …"):
        search(searcher, "모델", reviewer="없는사람")
    with pytest.raises(BadRequest, match="each filter matches, but not together"):
        search(searcher, "모델", reviewer="박민수", topic="LoRA")


def test_a_week_only_the_file_name_knows_is_filterable(searcher: Searcher):
    hits = search(searcher, "retrieval", k=10, week="3", group="review")
    assert hits and {h.passage.file for h in hits} == {"2025-03-10_week3.md"}


def test_querying_with_another_model_is_an_error(searcher: Searcher):
    other = type(searcher.encoder)()
    other.model_id = "fake/other"
    with pytest.raises(ModelMismatch, match="built with fake/trigram-64"):
        Searcher(searcher.index, other)


QUERIES = ["whisper hallucination 해결", "low-rank adaptation", "학습 비용", "LoRA", "음성 인식", "attention"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.sampled_from(QUERIES), mode=st.sampled_from(list(Mode)), group=st.sampled_from(["review", "passage"]),
       k=st.integers(1, 12), floor=st.floats(-1.0, 2.0))
def test_shown_scores_follow_the_rank_and_min_score_keeps_exactly_those_above_it(
    searcher: Searcher, query: str, mode: Mode, group: str, k: int, floor: float
):
    hits = search(searcher, query, k=k, mode=mode, group=group)
    shown = [h.score for h in hits]
    assert shown == sorted(shown, reverse=True)
    kept = search(searcher, query, k=k, mode=mode, group=group, min_score=floor)
    assert [(h.passage.row, h.score) for h in kept] == [(h.passage.row, h.score) for h in hits if h.score >= floor]


def test_the_shown_score_is_the_evidence_until_a_hit_outranks_its_own(searcher: Searcher):
    hits = search(searcher, "whisper hallucination 해결", k=6, mode="late")
    assert hits[0].score == hits[0].maxsim
    assert all(h.score == min(h.maxsim, prev.score) for prev, h in zip(hits, hits[1:]))
