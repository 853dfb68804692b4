"""`who`: members ranked by their best matching reviews and the papers they presented."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from search.indexing.build import build_index
from search.cli import app
from search.rank.people import TOP_ITEMS, who
from search.rank.searcher import Searcher
from search.notes.reader import read_reviews
from search.rank.request import parse_filters
from search.store.index import open_index
from conftest import SEEDS



def _topic(no: int, title: str, presenter: str, reviews: list[tuple[str, str]]) -> str:
    body = f"### 주제 {no}: {title}\n- **발표자**: {presenter}\n\n"
    for i, (reviewer, text) in enumerate(reviews, start=1):
        body += f"### 리뷰 {i}\n- **리뷰어**: {reviewer}\n\n{text}\n\n---\n\n"
    return body


SPEECH = "음성 인식 모델의 잡음 강건성을 높이는 방법을 다룬다."
LONG = " ".join(["음성 인식 데이터 증강에 대해 길게 썼다."] * 40)
OTHER = "이미지 분류에서 대조 학습으로 표현을 배우는 방법이다."
WEEK = "# 📚 9주차\n\n" + "".join([
    _topic(1, "Speech One", "발표자갑", [("다작", SPEECH), ("한번", LONG)]),
    _topic(2, "Speech Two", "발표자을", [("다작", SPEECH + " 디코더 구조도 본다.")]),
    _topic(3, "Speech Three", "발표자을", [("다작", SPEECH + " 환각 문제도 있다.")]),
    _topic(4, "Speech Four", "발표자병", [("다작", SPEECH + " WER 결과.")]),
    _topic(5, "Vision", "다작", [("무관", OTHER)]),
])


@pytest.fixture
def speech_index(tmp_path: Path, fake_encoder) -> Path:
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "w9.md").write_text(WEEK, encoding="utf-8")
    build_index([tmp_path / "n"], tmp_path / "idx", fake_encoder)
    return tmp_path / "idx"


def test_who_sums_the_best_three_items_and_credits_presenters(speech_index: Path, fake_encoder):
    with open_index(speech_index) as idx:
        people = who(Searcher(idx, fake_encoder), "음성 인식", k=10, mode="lexical")
    by_name = {p.name: p for p in people}
    assert people[0].name == "다작"  # four short reviews beat one long one
    assert by_name["다작"].reviewed == 4
    top = by_name["다작"]
    assert top.score == pytest.approx(sum(1 / math.log2(e.rank + 1) for e in top.evidence[:TOP_ITEMS]))
    assert by_name["한번"].score <= 1.0  # one review is worth at most rank 1's gain
    # a presenter is credited once per paper, as presented, with someone else's review as the evidence
    presented = by_name["발표자을"].evidence
    assert [e.presented for e in presented] == [True, True]
    assert {e.hit.passage.topic for e in presented} == {"Speech Two", "Speech Three"}
    assert "무관" not in by_name or by_name["무관"].score < people[0].score
    for person in people:
        for e in person.evidence:
            p = e.hit.passage
            assert (p.presenter if e.presented else p.reviewer) == person.name


def test_who_filters_and_depth(speech_index: Path, fake_encoder):
    with open_index(speech_index) as idx:
        searcher = Searcher(idx, fake_encoder)
        only_one = who(searcher, "음성 인식", k=10, mode="lexical", filters=parse_filters(topic="Speech One"))
        shallow = who(searcher, "음성 인식", k=10, mode="lexical", depth=1)
    assert {p.name for p in only_one} == {"다작", "한번", "발표자갑"}
    assert len(shallow) == 2 and all(len(p.evidence) == 1 for p in shallow)  # one review: its reviewer and presenter


def test_cli_who(speech_index: Path, fake_model):
    runner = CliRunner()
    result = runner.invoke(app, ["who", "음성 인식", "--index", str(speech_index), "--mode", "lexical"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(" 1. 다작") and "4 reviewed" in lines[0]
    assert sum(line.startswith("      #") for line in lines) >= 3
    assert "presented" in result.output and "(review by 다작)" in result.output
    data = json.loads(runner.invoke(app, ["who", "음성 인식", "--index", str(speech_index), "--json", "-k", "2"]).stdout)
    assert len(data) == 2 and {"name", "score", "reviewed", "presented", "evidence"} <= set(data[0])
    assert {"role", "rank", "gain", "topic", "reviewer", "file", "line"} <= set(data[0]["evidence"][0])


# Speech papers (recognition, synthesis, audio codecs), told by their titles.
_SPEECH_TITLE = re.compile(r"speech|whisper|audio|\btts\b|text-to-speech|codec|wavenet", re.IGNORECASE)


def _written_on_speech(folders: list[Path]) -> Counter:
    """Characters each member wrote in reviews of speech papers."""
    written: Counter = Counter()
    for review in read_reviews(folders).reviews:
        if _SPEECH_TITLE.search(review.topic) and review.reviewer:
            written[review.reviewer] += sum(len(line.strip()) for line in review.body_lines)
    return written


@pytest.mark.model
@pytest.mark.parametrize("query", ["음성 인식", "speech recognition"])
def test_who_on_the_dev_corpora_puts_the_main_speech_author_first(
    real_index_2: Path, dev_corpus: Path, dev_corpus_2: Path, e5_encoder, query: str
):
    written = _written_on_speech([dev_corpus / "weeks", dev_corpus_2 / "weeks", SEEDS])
    (first, most), (_, second) = written.most_common(2)
    assert most > 1.2 * second  # a clear answer in the data, else this test would test nothing
    with open_index(real_index_2) as idx:
        people = who(Searcher(idx, e5_encoder), query, k=3)
    assert people[0].name == first
    assert {p.name for p in people} <= set(written)  # everyone listed wrote on speech
    for e in people[0].evidence:
        p = e.hit.passage
        assert (p.presenter if e.presented else p.reviewer) == first


def test_service_answers_who_and_seen(speech_index: Path, fake_encoder):
    from search.service import SearchService

    service = SearchService(speech_index, fake_encoder)
    try:
        assert service.who("음성 인식", k=1, mode="lexical")[0].name == "다작"
        assert service.seen("speech two").matches[0].topic.presenter == "발표자을"
        assert not service.seen("Completely Different Paper Title").reviewed
    finally:
        service.close()
