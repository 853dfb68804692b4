"""Damaged or hostile input (issue #10): absurd numbers, unreadable folders, special files."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.build import build_index
from search.reader import MAX_NUMBER, parse, read_reviews, week_from_name
from search.store import open_index

from fakes import FakeEncoder

HUGE = "99999999999999999999"  # over 2**63: SQLite cannot store it
ENORMOUS = "7" * 5000  # over Python's int-conversion limit (4,300 digits)


def two_topics(header: str = "# 📚 4주차", first_topic: str = "1", first_review: str = "1") -> str:
    return (
        f"{header}\n### 주제 {first_topic}: A\n- **발표자**: P\n### 리뷰 {first_review}\n- **리뷰어**: R\n본문 하나\n---\n"
        "### 리뷰 2\n- **리뷰어**: S\n본문 둘\n---\n### 주제 2: B\n### 리뷰 1\n- **리뷰어**: R\n본문 셋\n"
    )


# --- #10.11: numbers that are not week, topic or review numbers -------------------


@pytest.mark.parametrize("digits", [HUGE, ENORMOUS])
def test_huge_week_in_header_falls_back_to_the_file_name(digits):
    reviews, problems = parse(two_topics(f"# 📚 {digits}주차"), "/n/week7.md")
    assert {r.week for r in reviews} == {7}
    (problem,) = problems
    assert problem.line == 1 and problem.path == "/n/week7.md"
    assert f"over {MAX_NUMBER:,}" in problem.message and len(problem.message) < 200


@pytest.mark.parametrize("digits", [HUGE, ENORMOUS])
def test_huge_week_in_file_name_is_unknown(digits):
    assert week_from_name(f"week{digits}.md") is None
    assert week_from_name(f"{digits}주차.md") is None
    reviews, problems = parse(two_topics("# 📚 - 주차"), f"/n/week{digits}.md")
    assert len(reviews) == 3 and {r.week for r in reviews} == {None}
    (problem,) = problems
    assert problem.line is None and "file name" in problem.message


@pytest.mark.parametrize("digits", [HUGE, ENORMOUS])
def test_huge_topic_number_is_numbered_by_position(digits):
    reviews, problems = parse(two_topics(first_topic=digits), "/n/week4.md")
    assert [(r.topic_no, r.topic, r.review_no, r.reviewer) for r in reviews] == [
        (1, "A", 1, "R"), (1, "A", 2, "S"), (2, "B", 1, "R")
    ]
    (problem,) = problems
    assert problem.line == 2 and "주제" in problem.message and "numbered 1 by position" in problem.message


@pytest.mark.parametrize("digits", [HUGE, ENORMOUS])
def test_huge_review_number_is_numbered_by_position(digits):
    text = two_topics().replace("### 리뷰 2", f"### 리뷰 {digits}")
    reviews, problems = parse(text, "/n/week4.md")
    assert [(r.topic_no, r.review_no) for r in reviews] == [(1, 1), (1, 2), (2, 1)]
    (problem,) = problems
    assert problem.line == 8 and "리뷰" in problem.message and "numbered 2 by position" in problem.message


def test_numbers_up_to_the_bound_are_kept():
    reviews, problems = parse(two_topics(f"# {MAX_NUMBER}주차", str(MAX_NUMBER), str(MAX_NUMBER)), "/n/x.md")
    assert (reviews[0].week, reviews[0].topic_no, reviews[0].review_no) == (MAX_NUMBER,) * 3
    assert problems == []


def test_huge_numbers_everywhere_still_build(tmp_path: Path):
    notes = tmp_path / "notes"
    notes.mkdir()
    text = two_topics(f"# 📚 {HUGE}주차", HUGE, ENORMOUS)
    (notes / f"week{HUGE}.md").write_text(text, encoding="utf-8")
    (notes / f"{ENORMOUS[:200]}주차.md").write_text(text, encoding="utf-8")
    summary = build_index([notes], tmp_path / "index", FakeEncoder())
    assert summary.reviews == 6
    assert {(p.week, p.topic_no) for p in open_index(tmp_path / "index").passages()} == {(None, 1), (None, 2)}
