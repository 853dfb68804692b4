"""Reading review files: every format quirk of the real notes, and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from search.notes import reader
from search.errors import BadRequest
from search.notes.reader import parse, read_reviews, week_from_name
from conftest import SEEDS


def parse_text(text: str, name: str = "week3.md"):
    return parse(text, f"/notes/{name}")


def test_sample_week(notes: Path):
    result = read_reviews([notes])
    assert [(r.topic_no, r.review_no, r.reviewer) for r in result.reviews] == [(1, 1, "이영희"), (2, 1, "김철수")]
    whisper = result.reviews[0]
    assert whisper.week == 3
    assert whisper.topic == "Whisper: Robust Speech Recognition via Large-Scale Weak Supervision"
    assert whisper.presenter == "김철수"
    assert whisper.file == "week3.md"
    assert whisper.body.startswith("1. 문제 정의")
    assert whisper.body.endswith("아쉬웠다.")
    # body_start points at the first body line in the file
    lines = (notes / "week3.md").read_text(encoding="utf-8").split("\n")
    assert lines[whisper.body_start - 1] == "1. 문제 정의"
    assert result.problems == []


@pytest.mark.parametrize(
    "name, week",
    [("week11.md", 11), ("12주차.md", 12), ("2025-06-02_week13.md", 13), ("2025-06-16_15주차.md", 15),
     ("Week_7.md", 7), ("000_1d3bebb296d4b218.md", None), ("2025-06-02.md", None)],
)
def test_week_from_file_name(name, week):
    assert week_from_name(name) == week


def test_week_from_header_wins_over_name():
    reviews, _ = parse_text("# 📚 9주차\n### 주제 1: T\n### 리뷰 1\n- **리뷰어**: A\n본문\n", "week11.md")
    assert reviews[0].week == 9


def test_header_without_week_number_falls_back_to_name():
    text = "# 📚 - 주차\n### 주제 1: T\n- **발표자**: P\n### 리뷰 1\n- **리뷰어**: A\n본문\n"
    assert parse_text(text, "2025-06-02_week13.md")[0][0].week == 13
    assert parse_text(text, "000_1d3b.md")[0][0].week is None


def test_crlf_bom_and_nfd_are_normalised(tmp_path: Path):
    text = "\ufeff# 📚 4주차\r\n### 주제 1: 제목\r\n- **발표자**: 발표\r\n### 리뷰 1\r\n- **리뷰어**: 리뷰\r\n본문 한 줄\r\n"
    import unicodedata

    (tmp_path / "w.md").write_bytes(unicodedata.normalize("NFD", text).encode("utf-8"))
    result = read_reviews([tmp_path])
    (r,) = result.reviews
    assert r.week == 4 and r.reviewer == "리뷰" and r.topic == "제목"
    assert r.body == "본문 한 줄" and "\r" not in r.body
    assert unicodedata.is_normalized("NFC", r.body)


def test_heading_levels_vary():
    text = "# 5주차\n## 주제 1: T\n- **발표자**: P\n#### 리뷰 1\n- **리뷰어**: A\n본문\n"
    (r,) = parse_text(text)[0]
    assert (r.topic, r.presenter, r.reviewer, r.body) == ("T", "P", "A", "본문")


def test_colons_in_title_only_first_delimits():
    (r,) = parse_text("### 주제 2: BERT: Pre-training: of Deep\n### 리뷰 1\n- **리뷰어**: A\nx\n")[0]
    assert r.topic == "BERT: Pre-training: of Deep" and r.topic_no == 2


def test_trailing_spaces_on_labels_and_names():
    text = "### 주제 1: T   \n- **발표자**: P  \n### 리뷰 1\n- **리뷰어**: 김도윤 \n\n후기   \n좋았다.\n"
    (r,) = parse_text(text)[0]
    assert (r.topic, r.presenter, r.reviewer) == ("T", "P", "김도윤")
    assert r.body_lines[0] == "후기"


def test_numbered_lines_and_bullets_are_body_text():
    text = (
        "### 주제 1: ReAct\n- **발표자**: P\n### 리뷰 1\n- **리뷰어**: A\n\n1. 문제 정의\n\n설명.\n\n"
        "- 추론과 행동을 번갈아 생성한다.\n- **리뷰어**처럼 보이는 줄도 본문이다.\n"
    )
    (r,) = parse_text(text)[0]
    assert r.reviewer == "A"
    assert "1. 문제 정의" in r.body
    assert "- 추론과 행동을 번갈아 생성한다." in r.body
    assert "- **리뷰어**처럼 보이는 줄도 본문이다." in r.body


@pytest.mark.parametrize("reviewer_line", ["- **리뷰어**: ", "- **리뷰어**:"])
def test_placeholders_produce_nothing(reviewer_line):
    text = f"### 주제 1: T\n- **발표자**: P\n### 리뷰 1\n{reviewer_line}\n(내용)\n\n---\n"
    reviews, problems = parse_text(text)
    assert reviews == [] and problems == []


def test_review_without_reviewer_but_with_text_is_kept_and_reported():
    reviews, problems = parse_text("### 주제 1: T\n### 리뷰 1\n- **리뷰어**:\n진짜 내용이 있다.\n")
    assert [r.reviewer for r in reviews] == [""]
    assert len(problems) == 1 and "no reviewer" in problems[0].message and problems[0].line == 2


def test_topic_without_reviews_produces_nothing():
    text = "### 주제 1: A\n- **발표자**: P\n\n<br>\n\n### 주제 2: B\n- **발표자**: Q\n### 리뷰 1\n- **리뷰어**: R\n본문\n"
    reviews, _ = parse_text(text)
    assert [(r.topic, r.presenter) for r in reviews] == [("B", "Q")]


def test_separators_are_not_body_and_blank_runs_are_trimmed():
    text = "### 주제 1: T\n### 리뷰 1\n- **리뷰어**: A\n\n본문\n\n\n---\n<br>\n### 주제 2: U\n### 리뷰 1\n- **리뷰어**: B\n다음\n---\n"
    reviews, _ = parse_text(text)
    assert [r.body for r in reviews] == ["본문", "다음"]
    assert [r.body_lines for r in reviews] == [("본문",), ("다음",)]


def test_no_structure_is_reported(tmp_path: Path):
    (tmp_path / "todo.md").write_text("# 할 일\n- 장보기\n", encoding="utf-8")
    result = read_reviews([tmp_path])
    assert result.reviews == []
    assert [p.message for p in result.problems] == ["no 주제/리뷰 headings found, nothing indexed"]


def test_review_before_topic_is_reported():
    reviews, problems = parse_text("### 리뷰 1\n- **리뷰어**: A\n본문\n")
    assert reviews == [] and problems[0].line == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01binary", "binary"),
        ("# 3주차\n### 주제 1: 제목\n".encode("cp949"), "not UTF-8"),
        (b"", "empty"),
        (b"  \n\n", "empty"),
    ],
)
def test_bad_files_are_skipped_with_their_name(tmp_path: Path, notes: Path, content: bytes, message: str):
    bad = notes / "bad.md"
    bad.write_bytes(content)
    result = read_reviews([notes])
    assert len(result.reviews) == 2  # the good file is still read
    (problem,) = result.problems
    assert message in problem.message and problem.path.endswith("bad.md")
    assert result.skipped == [str(bad.resolve())]


def test_not_utf8_names_the_line(tmp_path: Path):
    (tmp_path / "x.md").write_bytes(b"# 1\n\xff\xfe\n")
    (problem,) = read_reviews([tmp_path]).problems
    assert problem.line == 2 and str(problem).endswith("x.md:2: not UTF-8 text, skipped")


def test_huge_file_is_skipped(notes: Path, monkeypatch):
    monkeypatch.setattr(reader, "MAX_FILE_BYTES", 100)
    result = read_reviews([notes])
    assert result.reviews == [] and "limit" in result.problems[0].message


def test_missing_path_is_an_input_error(tmp_path: Path):
    with pytest.raises(BadRequest, match="no such file"):
        read_reviews([tmp_path / "nope"])


def test_folders_are_searched_recursively_and_files_deduplicated(notes: Path):
    sub = notes / "2025"
    sub.mkdir()
    (sub / "week4.md").write_text((notes / "week3.md").read_text(encoding="utf-8"), encoding="utf-8")
    (notes / "notes.txt").write_text("ignored", encoding="utf-8")
    result = read_reviews([notes, notes / "week3.md"])
    assert sorted(Path(f).name for f in result.files) == ["week3.md", "week4.md"]


# --- the real notes --------------------------------------------------------------


def test_dev_corpus_matches_its_readme(dev_corpus: Path):
    result = read_reviews([dev_corpus / "weeks"])
    assert result.problems == []
    reviews = result.reviews
    assert len(reviews) == 21
    assert Counter(r.reviewer for r in reviews) == {
        "장재후": 6, "박민경": 5, "조재현": 3, "이서연": 3, "김도윤": 2, "한지우": 2
    }
    triples = [(r.file, r.topic, r.reviewer) for r in reviews]
    assert len(set(triples)) == len(triples)
    assert {r.week for r in reviews} == {11, 12, 13, 14, 15}
    # every labelled review exists exactly as the labels name it
    for line in (dev_corpus / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        for rel in json.loads(line)["relevant"]:
            assert (rel["file"], rel["topic"], rel["reviewer"]) in triples
    english = [r for r in reviews if r.file == "12주차.md" and r.reviewer == "조재현"][0]
    assert sum(c.isascii() for c in english.body) / len(english.body) > 0.95
    react = [r for r in reviews if r.topic.startswith("ReAct") and r.reviewer == "김도윤"][0]
    assert sum(line.startswith("- ") for line in react.body_lines) >= 3


def test_seed_week():
    result = read_reviews([SEEDS])
    assert [(r.topic_no, r.reviewer) for r in result.reviews] == [(1, "장재후"), (2, "박민경"), (2, "장재후"), (3, "박민경")]
    assert all(r.week is None for r in result.reviews)


def test_real_50mb_file_is_skipped_without_reading_it(notes: Path):
    with open(notes / "huge.md", "wb") as f:
        f.truncate(50 * 1024 * 1024)
    result = read_reviews([notes])
    assert len(result.reviews) == 2
    assert [p.message for p in result.problems] == ["file is 50 MiB, over the 5 MiB limit for notes, skipped"]


TWO_TOPICS = """# 📚 3주차
### 주제 1: Paper A
- **발표자**: 김철수
### 리뷰 1
- **리뷰어**: 이영희
A에 대한 리뷰.
---
{second}
- **발표자**: 박민수
### 리뷰 1
- **리뷰어**: 최지우
B에 대한 리뷰.
"""


@pytest.mark.parametrize("heading", [
    "### 주제 2: Paper B", "### 주제 2 - Paper B", "### 주제2. Paper B", "### 주제 2) Paper B",
    "### 주제 2 Paper B", "### Topic 2: Paper B", "## topic 2 – Paper B",
])
def test_topic_heading_spellings_all_start_a_new_paper(heading: str):
    reviews, problems = parse_text(TWO_TOPICS.format(second=heading))
    assert [(r.topic_no, r.topic, r.reviewer) for r in reviews] == [(1, "Paper A", "이영희"), (2, "Paper B", "최지우")]
    assert problems == []


@pytest.mark.parametrize("heading", ["### 주제: Paper B", "### 주제 Paper B", "### Topic - Paper B"])
def test_a_topic_heading_without_a_number_is_numbered_by_position_with_a_warning(heading: str):
    reviews, problems = parse_text(TWO_TOPICS.format(second=heading))
    assert [(r.topic_no, r.topic, r.reviewer) for r in reviews][1] == (2, "Paper B", "최지우")
    assert [(p.line, p.message) for p in problems] == [(8, "topic heading without a number; numbered 2 by position")]


@pytest.mark.parametrize("heading", ["### 주제별 정리", "### Topics covered"])
def test_headings_that_only_start_with_the_word_are_not_topics(heading: str):
    reviews, _ = parse_text(TWO_TOPICS.format(second="### 주제 2: Paper B").replace("A에 대한 리뷰.", f"A에 대한 리뷰.\n{heading}\n더."))
    assert [r.topic for r in reviews] == ["Paper A", "Paper B"] and heading in reviews[0].body


def test_headings_inside_code_fences_are_text():
    text = TWO_TOPICS.format(second="### 주제 2: Paper B").replace(
        "A에 대한 리뷰.", "A에 대한 리뷰.\n```markdown\n### 주제 9: 예시\n### 리뷰 1\n---\n```\n그 뒤.")
    reviews, problems = parse_text(text)
    assert [r.topic for r in reviews] == ["Paper A", "Paper B"] and problems == []
    assert "### 주제 9: 예시" in reviews[0].body and reviews[0].body.endswith("그 뒤.")


def test_duplicate_numbers_keep_both_papers_and_both_reviews():
    text = TWO_TOPICS.format(second="### 주제 1: Paper B").replace(
        "B에 대한 리뷰.", "B에 대한 리뷰.\n### 리뷰 1\n- **리뷰어**: 정하늘\nB에 대한 두 번째 리뷰.")
    reviews, problems = parse_text(text)
    assert [(r.topic_no, r.topic, r.review_no, r.reviewer) for r in reviews] == [
        (1, "Paper A", 1, "이영희"), (2, "Paper B", 1, "최지우"), (2, "Paper B", 2, "정하늘")]
    assert [(p.line, p.message) for p in problems] == [
        (8, "주제 1 appears twice; this one numbered 2"), (13, "리뷰 1 appears twice; this one numbered 2")]
    assert len({r.review_key for r in reviews}) == 3


def test_empty_and_overlong_titles_are_warnings():
    reviews, problems = parse_text(TWO_TOPICS.format(second="### 주제 2: " + "가" * 50_000).replace("Paper A", ""))
    assert [len(r.topic) for r in reviews] == [0, reader.MAX_TITLE_CHARS]
    assert [p.message for p in problems] == ["topic has no title", f"title of 50,000 characters cut to {reader.MAX_TITLE_CHARS}"]
