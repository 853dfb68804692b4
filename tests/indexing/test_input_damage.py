"""Damaged or hostile input (issue #10): absurd numbers, unreadable folders, special files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from search.indexing.build import build_index
from search.errors import BadRequest
from search.notes.reader import MAX_NUMBER, parse, read_reviews, week_from_name
from search.store.index import open_index

from conftest import ROOT, SAMPLE_WEEK
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


# --- #10.13 and #10.3: folders that cannot be read -------------------------------

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def deny(monkeypatch, folder: Path, *, listable: bool) -> None:
    """Make `folder` lose its execute permission (and its read permission unless `listable`).

    chmod where it has an effect; root ignores permission bits, so there the
    system calls the reader makes fail exactly as the kernel fails them for
    others: EACCES for every path through the folder, and for listing it.
    """
    if not IS_ROOT:
        folder.chmod(0o444 if listable else 0)  # restore_permissions puts it back
        return
    inside = str(folder) + os.sep

    def guard(call, blocks_folder: bool):
        def guarded(path, *args, **kwargs):
            p = os.path.abspath(os.fspath(path))
            if p.startswith(inside) or (blocks_folder and p == str(folder)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), p)
            return call(path, *args, **kwargs)

        return guarded

    for name in ("stat", "lstat", "open"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), False))
    monkeypatch.setattr(os, "scandir", guard(os.scandir, not listable))


@pytest.fixture
def restore_permissions(tmp_path: Path, monkeypatch):
    yield
    monkeypatch.undo()  # the simulated denial first, so that the clean-up can walk the folders
    for p in tmp_path.rglob("*"):
        if not p.is_symlink():
            p.chmod(0o755)


def nested_notes(tmp_path: Path) -> tuple[Path, Path]:
    """notes/week3.md readable, notes/locked/week4.md and notes/locked/inner/week5.md to be locked."""
    notes = tmp_path / "notes"
    (notes / "locked" / "inner").mkdir(parents=True)
    for f in ("week3.md", "locked/week4.md", "locked/inner/week5.md"):
        (notes / f).write_text(SAMPLE_WEEK, encoding="utf-8")
    return notes, notes / "locked"


@pytest.mark.parametrize("listable", [True, False], ids=["read-no-execute", "chmod-000"])
def test_unreadable_subfolder_is_a_warning_naming_it(tmp_path, monkeypatch, restore_permissions, listable):
    notes, locked = nested_notes(tmp_path)
    deny(monkeypatch, locked, listable=listable)
    result = read_reviews([notes])
    assert [Path(f).name for f in result.files] == ["week3.md"] and len(result.reviews) == 2
    assert result.unreadable_dirs == [str(locked.resolve())]
    (problem,) = result.problems
    assert problem.path == str(locked.resolve()) and "cannot read this folder (Permission denied)" in problem.message
    assert result.unreadable(str((locked / "inner" / "week5.md").resolve()))
    assert result.unreadable(str(locked.resolve()))
    assert not result.unreadable(str((notes / "week3.md").resolve()))
    assert not result.unreadable(str(locked.resolve()) + "-other/week4.md")


@pytest.mark.parametrize("listable", [True, False], ids=["read-no-execute", "chmod-000"])
def test_unreadable_root_folder_is_a_warning(tmp_path, monkeypatch, restore_permissions, listable):
    notes, _ = nested_notes(tmp_path)
    deny(monkeypatch, notes, listable=listable)
    result = read_reviews([notes])
    assert result.reviews == [] and result.unreadable_dirs == [str(notes.resolve())]
    assert result.unreadable(str((notes / "locked" / "week4.md").resolve()))


def test_path_behind_an_unsearchable_folder_is_a_warning(tmp_path, monkeypatch, restore_permissions):
    notes, locked = nested_notes(tmp_path)
    deny(monkeypatch, notes, listable=True)
    result = read_reviews([locked])  # os.stat of the root itself fails
    assert result.reviews == [] and result.unreadable_dirs == [str(locked.resolve())]


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"), reason="needs root to switch to an unprivileged user")
def test_real_permissions_as_an_unprivileged_user(restore_permissions, tmp_path):
    # The same reads with real chmod bits, in a process that cannot ignore them.
    base = Path(tempfile.mkdtemp(prefix="perm-"))
    try:
        base.chmod(0o755)
        notes, locked = nested_notes(base)
        (notes / "noexec").mkdir()
        (notes / "noexec" / "week6.md").write_text(SAMPLE_WEEK, encoding="utf-8")
        locked.chmod(0)
        (notes / "noexec").chmod(0o444)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", shutil.which("python3") or sys.executable]
        probe = subprocess.run([*as_nobody, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import search.notes.reader", str(ROOT)],
                               capture_output=True, text=True, timeout=60, cwd="/")
        if probe.returncode != 0:
            pytest.skip(f"cannot import the reader as nobody here: {probe.stderr.strip().splitlines()[-1:]}")
        script = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); from search.notes.reader import read_reviews; "
            "r = read_reviews([sys.argv[2]]); print(json.dumps([r.files, r.unreadable_dirs, [str(p) for p in r.problems]]))"
        )
        run = subprocess.run([*as_nobody, "-c", script, str(ROOT), str(notes)], capture_output=True, text=True, timeout=60, cwd="/")
        assert run.returncode == 0, run.stderr
        files, unreadable, problems = json.loads(run.stdout)
        assert [Path(f).name for f in files] == ["week3.md"]
        assert unreadable == [str(locked.resolve()), str((notes / "noexec").resolve())]
        assert len(problems) == 2 and all("Permission denied" in p for p in problems)
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755)
        shutil.rmtree(base)


# --- #10.14: special files are named and never opened ----------------------------


def test_special_files_are_named_and_never_opened(notes: Path, monkeypatch):
    os.mkfifo(notes / "fifo.md")
    (notes / "zero.md").symlink_to("/dev/zero")
    (notes / "loop.md").symlink_to(notes / "loop2.md")
    (notes / "loop2.md").symlink_to(notes / "loop.md")
    (notes / "dangling.md").symlink_to(notes / "gone.md")
    outside = notes.parent / "elsewhere"
    outside.mkdir()
    (outside / "week9.md").write_text(SAMPLE_WEEK.replace("3주차", "9주차"), encoding="utf-8")
    (notes / "linked.md").symlink_to(outside / "week9.md")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(os.fspath(path)) or real_open(path, *a, **k))

    result = read_reviews([notes])

    assert sorted(Path(f).name for f in result.files) == ["week3.md", "week9.md"]  # the link to a note is read
    assert sorted({r.week for r in result.reviews}) == [3, 9]
    assert sorted(Path(p).name for p in opened) == ["week3.md", "week9.md"]
    problems = {Path(p.path).name: p.message for p in result.problems}
    assert problems == {
        "fifo.md": "not a regular file (a FIFO), skipped",
        "zero.md": "not a regular file (a character device), skipped",
        "loop.md": "cannot read (Too many levels of symbolic links), skipped",
        "loop2.md": "cannot read (Too many levels of symbolic links), skipped",
        "dangling.md": "cannot read (No such file or directory), skipped",
    }
    assert all(p.line is None and os.path.isabs(p.path) for p in result.problems)


def test_a_note_swapped_for_a_fifo_after_listing_does_not_block(notes: Path, monkeypatch):
    from search.notes import reader

    real_find = reader.find_note_files

    def find_then_swap(paths):
        found = real_find(paths)
        (notes / "week3.md").unlink()
        os.mkfifo(notes / "week3.md")
        return found

    monkeypatch.setattr(reader, "find_note_files", find_then_swap)
    result = read_reviews([notes])  # a blocking open would hang here
    assert result.reviews == [] and result.problems[0].message == "not a regular file (a FIFO), skipped"


def test_root_paths_that_are_not_files_or_folders(tmp_path: Path):
    os.mkfifo(tmp_path / "fifo.md")
    with pytest.raises(BadRequest, match="not a regular file or folder"):
        read_reviews([tmp_path / "fifo.md"])
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(BadRequest, match="loop: cannot be read"):
        read_reviews([tmp_path / "loop"])


@pytest.mark.parametrize("listable", [True, False], ids=["read-no-execute", "chmod-000"])
def test_build_keeps_the_passages_of_an_unreadable_folder(tmp_path, monkeypatch, restore_permissions, listable):
    notes, locked = nested_notes(tmp_path)
    (notes / "week3.md").write_text(SAMPLE_WEEK.replace("3주차", "3주차 "), encoding="utf-8")
    index = tmp_path / "index"
    encoder = FakeEncoder()
    first = build_index([notes], index, encoder)
    before = sorted((p.path, p.text) for p in open_index(index).passages())

    deny(monkeypatch, locked, listable=listable)
    second = build_index([notes], index, encoder)
    monkeypatch.undo()

    assert second.passages == first.passages and second.embedded == 0
    assert sorted((p.path, p.text) for p in open_index(index).passages()) == before
    messages = [str(p) for p in second.problems]
    assert any(str(locked.resolve()) in m and "cannot read this folder" in m for m in messages)
    assert sum("kept its" in m for m in messages) == 2  # locked/week4.md and locked/inner/week5.md
