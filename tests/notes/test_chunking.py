"""Chunking: passages follow paragraphs, labels stay with their paragraph, long text is cut at sentences."""

from __future__ import annotations

from pathlib import Path

from conftest import CORPUS, DEV, DEV2, SEEDS

from search.notes.chunking import chunk_review, is_label
from search.notes.reader import Review, parse, read_reviews


def words(text: str) -> int:
    return len(text.split())


def review(body: str, start: int = 10) -> Review:
    return Review(
        path="/n/w.md", file="w.md", week=1, topic_no=1, topic="Paper Title", presenter="P",
        review_no=1, reviewer="R", body_start=start, body_lines=tuple(body.split("\n")),
    )


def test_paragraphs_become_passages_with_file_lines():
    r = review("첫 문단이다.\n같은 문단.\n\n둘째 문단이다.")
    ps = chunk_review(r, words)
    assert [p.text for p in ps] == ["첫 문단이다.\n같은 문단.", "둘째 문단이다."]
    assert [(p.line, p.end_line) for p in ps] == [(10, 11), (13, 13)]
    assert [p.passage_no for p in ps] == [1, 2]


def test_labels_join_the_paragraph_they_introduce():
    r = review("1. 문제 정의\n\n위스퍼는 hallucination 문제가 있다.\n\n후기\n좋았다.\n\nRLVR 개념\n\n\n설명이다.")
    ps = chunk_review(r, words)
    assert [p.text for p in ps] == [
        "1. 문제 정의\n위스퍼는 hallucination 문제가 있다.",
        "후기\n좋았다.",
        "RLVR 개념\n설명이다.",
    ]
    assert ps[0].line == 10 and ps[2].line == 17


def test_trailing_label_is_kept():
    ps = chunk_review(review("본문이다.\n\n끝 라벨"), words)
    assert [p.text for p in ps] == ["본문이다.", "끝 라벨"]


def test_label_detection():
    assert is_label("후기") and is_label("1. 문제 정의") and is_label("RLVR 개념")
    assert not is_label("이것은 문장이다.") and not is_label("결과가 좋았다")
    assert not is_label("x" * 60)


def test_embedded_text_carries_the_title_shown_text_does_not():
    (p,) = chunk_review(review("본문이다."), words)
    assert p.text == "본문이다."
    assert p.embed_text == "Paper Title\n본문이다."


def test_long_paragraph_is_cut_at_sentence_boundaries_under_budget():
    sentences = [f"문장 {i} 은 이렇게 다섯 단어다." for i in range(20)]
    r = review(" ".join(sentences))
    ps = chunk_review(r, words, budget=18)
    assert len(ps) > 1
    assert all(words(p.text) <= 18 for p in ps)
    # nothing lost, nothing duplicated, order kept, every cut at a sentence end
    assert " ".join(p.text for p in ps) == " ".join(sentences)
    assert all(p.text.endswith("다.") for p in ps)
    assert all(p.line == 10 for p in ps)


def test_sentence_longer_than_budget_is_cut_between_words():
    r = review(" ".join(f"w{i}" for i in range(50)))
    ps = chunk_review(r, words, budget=10)
    assert all(words(p.text) <= 10 for p in ps)
    assert " ".join(p.text for p in ps).split() == [f"w{i}" for i in range(50)]


def test_bullet_list_lines_stay_on_their_own_lines():
    ps = chunk_review(review("요약\n- 하나다.\n- 둘이다."), words)
    assert [p.text for p in ps] == ["요약\n- 하나다.\n- 둘이다."]


NOTES = [f for f in (CORPUS, SEEDS, DEV / "weeks", DEV2 / "weeks") if f.is_dir()]  # the labelled sets where present


def test_line_numbers_point_into_the_real_file():
    for r in read_reviews(NOTES).reviews:
        lines = (Path(r.path)).read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
        for p in chunk_review(r, words, budget=40):
            first, last = p.text.split("\n")[0], p.text.split("\n")[-1]
            assert first in lines[p.line - 1] and last in lines[p.end_line - 1]


def test_every_review_word_lands_in_exactly_one_passage():
    for r in read_reviews(NOTES).reviews:
        ps = chunk_review(r, words, budget=30)
        assert " ".join(p.text for p in ps).split() == r.body.split()


def test_seed_week_passages_are_labelled_paragraphs():
    reviews, _ = parse((SEEDS / "000_1d3bebb296d4b218.md").read_text(encoding="utf-8"), "s.md")
    calm = [r for r in reviews if r.topic.startswith("Calm-Whisper")][0]
    texts = [p.text for p in chunk_review(calm, words)]
    assert [t.split("\n")[0] for t in texts] == ["1. 문제 정의", "2. 해결 방법", "3. 리뷰"]


def test_placeholder_paragraph_inside_a_real_review_is_dropped():
    ps = chunk_review(review("진짜 내용이다.\n\n(내용)"), words)
    assert [p.text for p in ps] == ["진짜 내용이다."]


def test_a_word_longer_than_the_budget_is_cut_into_runs_under_it():
    def chars(text: str) -> int:  # one token per character, as for text without spaces
        return len(text)

    blob = "가" * 50_000
    ps = chunk_review(review(f"앞 문장이다. {blob}"), chars, budget=320)
    assert len(ps) > 150 and all(chars(p.text) <= 320 for p in ps)
    assert "".join(p.text for p in ps).replace(" ", "") == ("앞문장이다." + blob)
