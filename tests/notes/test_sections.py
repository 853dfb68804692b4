"""Section kinds from label lines: the classifier, tagging in chunking, and the --section filter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from search.indexing.build import build_index
from search.notes.chunking import chunk_review
from search.cli import app
from search.errors import BadRequest
from search.rank.searcher import Searcher
from search.notes.reader import read_reviews
from search.rank.request import SearchRequest, parse_filters
from search.notes.sections import Section, classify_label, parse_section
from search.store.index import open_index
from conftest import SEEDS


# What each label in the corpora means, judged by reading the label and its
# paragraph (numbering removed). Written by hand, separately from the
# classifier's alias lists: a label naming a topic rather than a kind of
# paragraph (`Self-attention`, `스케줄링`) is `other`.
HAND_LABELS = {
    "summary": [
        "문제 정의", "문제의식", "문제점", "배경", "개념", "주제", "핵심 정리", "핵심 아이디어", "RLVR 개념",
        "SpecAugment 개념", "STaR 개념", "ToT 개념", "MMS 개념", "PPO 개념", "HyDE 개념", "ReAct 핵심 정리",
        "Self-consistency 정리", "RVQ가 필요한 이유",
    ],
    "method": [
        "방법", "해결 방법", "제안 방법", "학습 방법", "두 가지 방식", "세 가지 검색 방식", "세 가지 기법",
        "RLHF 과정", "MoE 구조", "EnCodec 구조", "구조 메모", "데이터", "데이터 구축", "데이터 생성", "모델",
        "모델과 학습", "핵심 수식",
    ],
    "results": ["결과", "실험", "성능", "GPTQ 결과 정리"],
    "opinion": ["후기", "리뷰", "생각"],
    "limitations": ["한계"],
    "other": [
        "정렬 세금(alignment tax)", "Self-attention", "QLoRA와 비교", "차이점", "스케줄링", "Absolute Zero",
        "문제 생성",
    ],
}
EXPECTED = {label: kind for kind, labels in HAND_LABELS.items() for label in labels}
_NUMBERING = re.compile(r"^\d+\.\s*")


@pytest.mark.parametrize(
    "label, kind",
    [
        ("후기   ", Section.OPINION),
        ("느낀점", Section.OPINION),
        ("3. 리뷰", Section.OPINION),
        ("아쉬운 점", Section.LIMITATIONS),
        ("2) 단점:", Section.LIMITATIONS),
        ("**Limitations**", Section.LIMITATIONS),
        ("Weaknesses:", Section.LIMITATIONS),
        ("## Results", Section.RESULTS),
        ("① 방법론", Section.METHOD),
        ("Method", Section.METHOD),
        ("1. 문제 정의", Section.SUMMARY),
        ("Motivation", Section.SUMMARY),
        ("GPTQ 결과 정리", Section.RESULTS),  # results and summary: the more specific wins
        ("Transformer", Section.OTHER),
        ("reviewed models", Section.OTHER),  # English matches whole words only
    ],
)
def test_classify_label(label, kind):
    assert classify_label(label) is kind


def test_parse_section_takes_kinds_and_label_aliases():
    assert parse_section("limitations") is Section.LIMITATIONS
    assert parse_section(" 한계 ") is Section.LIMITATIONS
    assert parse_section("problem") is Section.SUMMARY
    assert parse_section("OTHER") is Section.OTHER
    with pytest.raises(ValueError, match="section takes one of"):
        parse_section("banana")
    with pytest.raises(BadRequest, match="section takes one of"):
        parse_filters(section="banana")
    assert parse_filters(section="후기").section is Section.OPINION
    assert parse_filters(section="  ").section is None


def _passages(folders: list[Path]):
    result = read_reviews(folders)
    for review in result.reviews:
        yield from chunk_review(review, lambda t: len(t.split()) + 2)


def test_every_labelled_paragraph_in_the_corpora_gets_its_section(dev_corpus: Path, dev_corpus_2: Path):
    checked, unknown, wrong = 0, set(), []
    for p in _passages([dev_corpus / "weeks", dev_corpus_2 / "weeks", SEEDS]):
        first, *rest = p.text.split("\n")
        # A labelled paragraph: a short heading-like first line, then the paragraph.
        if not rest or len(first) > 40 or re.search(r"[.!?:]$|다$", first) or first.startswith("- "):
            continue
        label = _NUMBERING.sub("", first.strip())
        if label not in EXPECTED:
            unknown.add(label)
            continue
        checked += 1
        if p.section != EXPECTED[label]:
            wrong.append((p.review.file, p.line, label, p.section, EXPECTED[label]))
    assert not unknown, f"labels missing from HAND_LABELS (judge and add them): {sorted(unknown)}"
    assert not wrong, wrong
    assert checked >= 100  # the corpora have ~150 labelled paragraphs; the filter above must not drop them


WEEK = """# 📚 4주차

### 주제 1: Some Paper
- **발표자**: 가

### 리뷰 1
- **리뷰어**: 나

1. 문제 정의

기존 방법은 느리다. 그래서 새로운 방법이 필요하다.

2. 한계
첫째 한계는 데이터가 적다는 점이다.

둘째로 평가가 한 데이터셋뿐이라 일반화를 말하기 어렵다.

Transformer
이건 라벨이 종류를 말하지 않는 문단이다.

---
"""


def test_unlabelled_paragraphs_and_cut_pieces_continue_the_section(tmp_path: Path):
    (tmp_path / "w.md").write_text(WEEK, encoding="utf-8")
    [review] = read_reviews([tmp_path]).reviews
    passages = chunk_review(review, lambda t: len(t.split()) + 2)
    assert [p.section for p in passages] == ["summary", "limitations", "limitations", "other"]
    # a labelled paragraph over the budget is cut; every piece keeps the label's section
    pieces = chunk_review(review, lambda t: len(t.split()) + 2, budget=6)
    limited = [p for p in pieces if "한계" in p.text or "일반화" in p.text or "데이터가" in p.text]
    assert len(limited) >= 3 and {p.section for p in limited} == {"limitations"}


@pytest.fixture
def sectioned_index(tmp_path: Path, fake_encoder) -> Path:
    """The WEEK note plus a second review that repeats the query words in a non-limitations paragraph."""
    other = WEEK.replace("4주차", "5주차").replace("2. 한계", "2. 방법").replace("Transformer", "결과")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "week4.md").write_text(WEEK, encoding="utf-8")
    (folder / "week5.md").write_text(other, encoding="utf-8")
    build_index([folder], tmp_path / "idx", fake_encoder)
    return tmp_path / "idx"


def test_section_filter_applies_before_the_top_k_cut(sectioned_index: Path, fake_encoder):
    query = "데이터가 적다 평가 일반화"
    with open_index(sectioned_index) as idx:
        searcher = Searcher(idx, fake_encoder)
        unfiltered = searcher.search(SearchRequest.parse(query, k=2, group="passage", mode="hybrid"))
        # Cutting to k first and filtering after would leave fewer than k here.
        assert {h.passage.section for h in unfiltered.hits} != {"limitations"}
        for mode in ("hybrid", "late"):
            only = searcher.search(SearchRequest.parse(query, k=2, group="passage", section="limitations", mode=mode))
            assert len(only.hits) == 2
            assert {h.passage.section for h in only.hits} == {"limitations"}
            assert {h.passage.week for h in only.hits} == {4}
            assert only.hits[0].as_dict()["section"] == "limitations"
        assert searcher.search(SearchRequest.parse(query, k=5, section="results")).hits[0].passage.section == "results"


def test_cli_query_section(sectioned_index: Path, fake_model):
    runner = CliRunner()
    args = ["query", "데이터가 적다", "--index", str(sectioned_index), "--group", "passage", "--json"]
    result = runner.invoke(app, args + ["--section", "한계"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits and {h["section"] for h in hits} == {"limitations"}
    bad = runner.invoke(app, args + ["--section", "banana"])
    assert bad.exit_code == 2 and "section takes one of" in bad.output and "Traceback" not in bad.output


def test_http_search_takes_section():
    from search.http.params import parse_search

    assert parse_search({"q": "x", "section": "한계"}).filters.section is Section.LIMITATIONS
    assert parse_search({"q": "x", "section": ""}).filters.section is None
    with pytest.raises(BadRequest, match="section takes one of"):
        parse_search({"q": "x", "section": "banana"})
