"""Robustness: generated and mutated notes never crash the parser or indexer; killed and
concurrent builds never leave the group without a working index."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.indexing.build import build_index
from search.notes.chunking import chunk_review
from search.rank.searcher import Searcher
from search.notes.reader import PLACEHOLDER, parse
from search.errors import IndexBusy
from search.rank.request import SearchRequest
from search.store.index import open_index

from fakes import FakeEncoder
from conftest import TESTS


SLOW_BUILD = TESTS / "slow_build.py"

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
body_line = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["후기   ", "1. 문제 정의", "- 항목이다.", "---", "<br>", "", PLACEHOLDER, "- **리뷰어**: 가짜", "# 📚 - 주차"]),
)


@st.composite
def review_file(draw) -> tuple[str, int]:
    """A review file in the notes' template with random content, and its count of real reviews."""
    lines = [draw(st.sampled_from(["# 📚 11주차", "# 📚 - 주차", "\ufeff# 12주차", ""]))]
    real = 0
    for t in range(1, draw(st.integers(0, 3)) + 1):
        lines += [f"{draw(st.sampled_from(['##', '###']))} 주제 {t}: {draw(names)}: {draw(names)}", f"- **발표자**: {draw(names)}", ""]
        for r in range(1, draw(st.integers(0, 3)) + 1):
            placeholder = draw(st.booleans())
            reviewer = "" if placeholder else draw(st.text("가나다라abc", min_size=1, max_size=5))
            lines += [f"### 리뷰 {r}", f"- **리뷰어**: {reviewer}{draw(st.sampled_from(['', ' ']))}", ""]
            if placeholder:
                lines.append(PLACEHOLDER)
            else:
                lines += ["본문이 있다."] + draw(st.lists(body_line, max_size=6))
                real += 1
            lines += ["", "---", ""]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines), real


@settings(max_examples=200, deadline=None)
@given(review_file())
def test_generated_files_parse_into_their_reviews(case):
    text, real = case
    reviews, _ = parse(text.replace("\r\n", "\n").lstrip("\ufeff"), "/g/week11.md")
    assert len(reviews) == real
    for r in reviews:
        assert r.reviewer and r.body and r.body != PLACEHOLDER
        assert all(p.text.strip() for p in chunk_review(r, lambda s: len(s.split()) + 2, budget=20))


@settings(max_examples=200, deadline=None)
@given(review_file(), st.data())
def test_mutated_files_never_raise(case, data):
    lines = case[0].split("\n")
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["drop", "dup", "swap", "junk"]))
        i = data.draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "drop" and lines:
            lines.pop(i)
        elif op == "dup" and lines:
            lines.insert(i, lines[i])
        elif op == "swap" and len(lines) > 1:
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(i, data.draw(st.text(max_size=40)))
    reviews, problems = parse("\n".join(lines), "/g/x.md")
    assert all(r.body.strip() not in ("", PLACEHOLDER) for r in reviews)
    assert all(str(p) for p in problems)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(review_file().map(lambda c: c[0].encode()), st.binary(max_size=200)), min_size=1, max_size=4))
def test_indexer_survives_any_files(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("notes")
    for i, data in enumerate(files):
        (folder / f"week{i}.md").write_bytes(data)
    summary = build_index([folder], folder / "index", FakeEncoder())
    idx = open_index(folder / "index")
    assert idx.size == summary.passages
    assert all(p.reviewer and p.text.strip() != PLACEHOLDER for p in idx.passages())


TOPIC_SPELLINGS = ["### 주제 {n}: {title}", "### 주제{n}. {title}", "### 주제 {n} - {title}", "### 주제 {n}) {title}",
                   "### 주제 {n} {title}", "### Topic {n}: {title}", "## 주제 {n}: {title}", "### 주제: {title}"]
# Bytes a file name may carry: ASCII, Hangul in UTF-8, and cp949 bytes that are not UTF-8.
NAME_BYTES = st.lists(st.sampled_from([b"w", b"3", b"_", b"-", b" ", "주차".encode(), b"\xc1\xd6", b"\xff", b"\xe2\x80\xae"]),
                      min_size=1, max_size=5).map(b"".join)


@st.composite
def marked_week(draw, file_no: int) -> str:
    """A week whose every review body names its paper (P<file>.<topic>), in drifting heading spellings,
    with duplicate numbers, code fences holding headings, and over-long words."""
    lines = ["# 📚 3주차"]
    for t in range(draw(st.integers(1, 3))):
        paper = f"P{file_no}.{t}"
        heading = draw(st.sampled_from(TOPIC_SPELLINGS))
        lines += [heading.format(n=draw(st.integers(1, 2)), title=f"Paper {paper} title"), "- **발표자**: 김", ""]
        for _ in range(draw(st.integers(1, 2))):
            lines += [f"### 리뷰 {draw(st.integers(1, 2))}", "- **리뷰어**: 이", "", f"{paper} 에 대한 리뷰다."]
            if draw(st.booleans()):
                lines += ["```", "### 주제 9: Not a paper", "### 리뷰 1", "```", f"{paper} 계속."]
            if draw(st.booleans()):
                lines.append("가" * draw(st.integers(1, 5000)))
            lines += ["", "---", ""]
    return "\n".join(lines)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_notes_never_abort_a_build_name_every_skip_and_keep_reviews_on_their_paper(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("notes")
    names = data.draw(st.lists(NAME_BYTES, min_size=1, max_size=4, unique=True))
    for i, name in enumerate(names):
        with open(os.fsencode(folder) + b"/" + name + b".md", "wb") as f:
            f.write(data.draw(marked_week(i)).encode("utf-8"))
    summary = build_index([folder], folder / "index", FakeEncoder())
    messages = [str(p) for p in summary.problems]
    for name in names:
        path = os.fsencode(folder.resolve()) + b"/" + name + b".md"
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:  # skipped, and named by its bytes
            assert any(m.startswith(path.decode("utf-8", "backslashreplace")) and "not UTF-8" in m for m in messages)
    assert summary.files + sum("not UTF-8" in m for m in messages) == len(names)
    with open_index(folder / "index") as idx:
        passages = idx.passages()
    assert all("Not a paper" not in p.topic for p in passages)
    for p in passages:
        marks = set(re.findall(r"P\d+\.\d+", p.text))
        assert marks <= {p.topic.split()[1]}, (p.topic, p.text[:80])


def start_slow_build(notes: Path, index: Path, delay: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(SLOW_BUILD), str(notes), str(index), str(delay)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    return proc


def test_killed_builds_always_leave_a_loadable_index(notes: Path, tmp_path: Path, fake_encoder):
    index = tmp_path / "index"
    build_index([notes], index, fake_encoder)
    rng = random.Random(7)
    with open_index(index) as idx:
        live = idx.size
    per_file = live  # the notes folder starts with one file
    for round_ in range(8):
        # each round adds a file, so every build writes a new, larger generation
        (notes / f"week{10 + round_}.md").write_text((notes / "week3.md").read_text(encoding="utf-8").replace("위스퍼", f"모델{round_}"), encoding="utf-8")
        complete = per_file * len(list(notes.glob("*.md")))
        proc = start_slow_build(notes, index, delay=0.02)
        time.sleep(rng.uniform(0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open_index(index) as idx:
            hits = Searcher(idx, fake_encoder).search(SearchRequest.parse("hallucination", k=3)).hits
            size = idx.size
        # the live index is the one before this build, or this build's if it got as far as the swap
        assert hits and size in (live, complete)
        live = size
    # a build that is allowed to finish cleans up what the killed ones left
    build_index([notes], index, fake_encoder)
    assert not list(index.glob(".tmp-*")) and len(list(index.glob("gen-*"))) <= 2


def test_concurrent_build_is_refused_clearly(notes: Path, tmp_path: Path, fake_encoder):
    index = tmp_path / "index"
    proc = start_slow_build(notes, index, delay=0.5)
    try:
        time.sleep(0.3)
        with pytest.raises(IndexBusy, match="another build is running"):
            build_index([notes], index, fake_encoder)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    with open_index(index) as idx:
        assert idx.size == 3
