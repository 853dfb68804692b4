"""Korean-aware BM25: morphemes at index time, vocabulary segmentation at query time."""

from __future__ import annotations

from pathlib import Path

from search.lexical import LexicalIndex, passage_terms, query_terms


def test_passage_terms_strip_particles_and_keep_english_whole():
    (terms,) = passage_terms(["Whisper의 hallucination문제를 self-attention 헤드로 해결했다 15%"])
    assert {"whisper", "hallucination", "문제", "헤드", "해결", "15"} <= set(terms)
    assert "를" not in terms and "의" not in terms


def test_query_terms_segment_against_the_vocabulary():
    vocab = {"문제", "해결", "강화", "학습", "whisper", "데이터"}
    assert query_terms("Whisper hallucination문제를 해결", vocab) == ["whisper", "hallucination", "문제", "해결"]
    assert query_terms("강화학습했다 학습데이터", vocab) == ["강화", "학습", "학습", "데이터"]
    assert query_terms("모르는말", vocab) == []


def test_query_terms_match_kiwi_on_the_notes(dev_corpus: Path):
    # The query-side segmenter must find what Kiwi finds in the same sentence.
    text = "위스퍼는 hallucination문제가 있고 디코더의 self-attention 헤드를 파인튜닝한다"
    (kiwi_terms,) = passage_terms([text])
    assert set(query_terms(text, set(kiwi_terms))) == set(kiwi_terms)


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
