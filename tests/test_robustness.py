"""Robustness: generated and mutated notes never crash the parser or indexer; killed and
concurrent builds never leave the group without a working index."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.build import build_index
from search.chunking import chunk_review
from search.ranking import Searcher
from search.reader import PLACEHOLDER, parse
from search.errors import IndexBusy
from search.request import SearchRequest
from search.store import open_index

from fakes import FakeEncoder

HERE = Path(__file__).resolve().parent
SLOW_BUILD = HERE / "slow_build.py"

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
