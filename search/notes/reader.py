"""Reading weekly review files: Markdown notes in, `Review` records out.

The notes follow a loose template (docs/notes-format.md):

    # 📚 11주차
    ### 주제 1: <paper title>
    - **발표자**: <presenter>
    ### 리뷰 1
    - **리뷰어**: <reviewer>
    <free text>
    ---
    <br>

Real files drift from it (CRLF, BOM, `##` instead of `###`, a missing week
number, colons inside titles, trailing spaces, bullet lists inside a review),
so the parser is line-based and forgiving: metadata lines only count right
after their heading, and anything it cannot place becomes a `Problem` rather
than an exception. A week, topic or review number over MAX_NUMBER is junk, not
a number (it would not fit SQLite): a header's week then comes from the file
name, a file name's week is unknown, and a topic or review is numbered by its
position in the file (topic) or under its topic (review), each with a warning.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable

from ..errors import BadRequest

# Larger files are not review notes; reading them whole would only waste memory.
MAX_FILE_BYTES = 5 * 1024 * 1024

_WEEK_IN_HEADER = re.compile(r"(\d+)\s*주차")
_WEEK_IN_NAME = re.compile(r"(?:(\d+)\s*주차|week[\s_-]*(\d+))", re.IGNORECASE)
_H1 = re.compile(r"^#(?!#)\s*(.*)$")
# A topic heading: `### 주제 1: Title`, and the spellings people drift to (`주제2. Title`,
# `주제 2 - Title`, `주제 2) Title`, `주제 2 Title`, `Topic 2: Title`). A heading that
# starts like one but has no number (`### 주제: Title`) is still a topic, numbered by
# position with a warning: filing its reviews under the previous paper would be worse.
_TOPIC_WORD = r"^#{1,6}\s*(?:주제|topic)(?=[\s\d:：.)\-–—]|$)"
_TOPIC = re.compile(_TOPIC_WORD + r"\s*(\d+)(?:\s*[:：.)\-–—]\s*|\s+|$)(.*)$", re.IGNORECASE)
_TOPIC_LIKE = re.compile(_TOPIC_WORD + r"\s*[:：.)\-–—]?\s*(.*)$", re.IGNORECASE)
_REVIEW = re.compile(r"^#{1,6}\s*(?:리뷰|review)\s*(\d+)\s*[:：.)]?\s*$", re.IGNORECASE)
_FENCE = re.compile(r"^(```|~~~)")
_PRESENTER = re.compile(r"^[-*+]\s*\*\*\s*발표자\s*[:：]?\s*\*\*\s*[:：]?(.*)$")
_REVIEWER = re.compile(r"^[-*+]\s*\*\*\s*리뷰어\s*[:：]?\s*\*\*\s*[:：]?(.*)$")
_SEPARATOR = re.compile(r"^(?:-{3,}|\*{3,}|_{3,}|<br\s*/?>)$", re.IGNORECASE)
PLACEHOLDER = "(내용)"
# Titles are embedded with every passage of their reviews; a longer one is a paste
# accident, cut here (the model reads ~512 tokens in all).
MAX_TITLE_CHARS = 300
# Week, topic and review numbers above this are typos or junk, not numbers: they
# would overflow SQLite's 64-bit integers (and Python's int() past 4,300 digits).
MAX_NUMBER = 1_000_000


@dataclass(frozen=True)
class ReviewInfo:
    """Where a review is and whose it is: the metadata every passage of it carries, declared once."""

    path: str  # resolved path of the file, the review's identity across runs
    file: str  # file name only, NFC-normalised
    week: int | None
    topic_no: int
    topic: str
    presenter: str
    review_no: int
    reviewer: str

    @property
    def review_key(self) -> tuple[str, int, int]:
        """Identity of the review."""
        return (self.path, self.topic_no, self.review_no)

    @property
    def paper_key(self) -> tuple[str, int]:
        """Identity of the reviewed paper: its week file and topic (storage.Backend.paper_groups groups the same way)."""
        return (self.path, self.topic_no)

    def review_info(self) -> dict:
        """These fields alone, for making a record that carries them."""
        return {f.name: getattr(self, f.name) for f in fields(ReviewInfo)}


@dataclass(frozen=True)
class Review(ReviewInfo):
    """One reviewer's notes on one paper, with where they came from."""

    body_start: int  # 1-based line number of body_lines[0]
    body_lines: tuple[str, ...]

    @property
    def body(self) -> str:
        return "\n".join(self.body_lines).strip()


@dataclass(frozen=True)
class Problem:
    """Something in the input that was skipped, with the file and line to look at."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


@dataclass
class ReadResult:
    """Everything read from a set of paths: the reviews, the files they came from, and what was skipped."""

    reviews: list[Review]
    files: list[str]  # files that were parsed
    skipped: list[str]  # files that exist but could not be read as text
    problems: list[Problem]
    # Folders whose files could not even be listed or reached (resolved paths):
    # what was in them is unknown this time, not gone.
    unreadable_dirs: list[str] = field(default_factory=list)

    def unreadable(self, path: str) -> bool:
        """Whether the file at `path` (resolved) may exist but was not read: skipped, or under an unreadable folder.

        A build keeps the previous passages of such files rather than dropping them.
        """
        return path in self.skipped or any(
            path == folder or path.startswith(folder.rstrip(os.sep) + os.sep) for folder in self.unreadable_dirs
        )


def bounded_number(digits: str) -> int | None:
    """The value of a digit string, or None when it is over MAX_NUMBER."""
    if len(digits.lstrip("0")) > len(str(MAX_NUMBER)):
        return None  # checked before int(): a 5,000-digit string would raise
    value = int(digits)
    return value if value <= MAX_NUMBER else None


def _too_large(kind: str, digits: str) -> str:
    shown = digits if len(digits) <= 12 else f"{digits[:12]}… ({len(digits)} digits)"
    return f"{kind} number {shown} is over {MAX_NUMBER:,}"


def _week_digits_in_name(name: str) -> str | None:
    m = _WEEK_IN_NAME.search(name)
    return (m.group(1) or m.group(2)) if m else None


def week_from_name(name: str) -> int | None:
    """Week number from a file name like `week11.md` or `2025-06-16_15주차.md`, else None."""
    digits = _week_digits_in_name(name)
    return bounded_number(digits) if digits else None


def week_of(lines: list[str], path: str) -> tuple[int | None, list[Problem]]:
    """Week from the first `# ... N주차` header, else from the file name, else None; and what was wrong with them.

    A number over MAX_NUMBER counts as no number, with a warning.
    """
    problems: list[Problem] = []
    for line_no, line in enumerate(lines, start=1):
        if m := _H1.match(line.strip()):
            if found := _WEEK_IN_HEADER.search(m.group(1)):
                if (week := bounded_number(found.group(1))) is not None:
                    return week, problems
                problems.append(Problem(path, line_no, _too_large("week", found.group(1)) + "; week taken from the file name"))
            break
    file = unicodedata.normalize("NFC", Path(path).name)
    week = week_from_name(file)
    if week is None and (digits := _week_digits_in_name(file)):
        problems.append(Problem(path, None, _too_large("week", digits) + " in the file name; week unknown"))
    return week, problems


def decode(data: bytes, path: str) -> tuple[str | None, Problem | None]:
    """Bytes of a review file to normalised text (LF line ends, NFC, no BOM), or the reason it is not text."""
    if b"\x00" in data:
        return None, Problem(path, None, "binary file (contains NUL bytes), skipped")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, Problem(path, line, "not UTF-8 text, skipped")
    # NFC: notes typed on macOS arrive as decomposed Hangul, which would neither
    # match queries nor tokenize like the same words typed elsewhere.
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text, None


def parse(text: str, path: str) -> tuple[list[Review], list[Problem]]:
    """Parse one file's text into reviews; placeholders and topics without reviews yield nothing."""
    file = unicodedata.normalize("NFC", Path(path).name)
    lines = text.split("\n")
    week, problems = week_of(lines, path)
    state = _FileParse(path, file, week, problems=problems)
    for line_no, raw in enumerate(lines, start=1):
        state.feed(line_no, raw)
    return state.finish()


@dataclass
class _Topic:
    number: int
    title: str
    presenter: str = ""


@dataclass
class _OpenReview:
    """The review whose lines are being collected."""

    number: int
    heading_line: int
    reviewer: str = ""
    body: list[tuple[int, str]] = field(default_factory=list)  # (line number, raw text)

    def content(self) -> list[tuple[int, str]]:
        """The body without its leading and trailing blank lines."""
        filled = [i for i, (_, t) in enumerate(self.body) if t.strip()]
        return self.body[filled[0] : filled[-1] + 1] if filled else []


@dataclass
class _FileParse:
    """The state of one file's parse, fed line by line.

    A metadata line (presenter, reviewer) only counts as the next non-blank
    line after its heading; `expect` names the one allowed now.
    """

    path: str
    file: str
    week: int | None
    reviews: list[Review] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    topic: _Topic | None = None
    review: _OpenReview | None = None
    topics_seen: int = 0  # positions, for numbers that are not numbers
    reviews_in_topic: int = 0
    topic_numbers: set[int] = field(default_factory=set)  # used in this file, to tell duplicates
    review_numbers: set[int] = field(default_factory=set)  # used under the current topic
    expect: re.Pattern[str] | None = None
    saw_structure: bool = False
    fence: str | None = None  # the open code fence: nothing inside it is a heading

    def feed(self, line_no: int, raw: str) -> None:
        line = raw.strip()
        if fence := _FENCE.match(line):
            if self.fence is None:
                self.fence = fence.group(1)
            elif fence.group(1) == self.fence:
                self.fence = None
        elif self.fence is not None:
            if self.review is not None:
                self.review.body.append((line_no, raw))
            return
        if self.expect is not None:
            if not line:
                return
            wanted, self.expect = self.expect, None
            if m := wanted.match(line):
                if wanted is _PRESENTER:
                    self.topic.presenter = m.group(1).strip()
                else:
                    self.review.reviewer = m.group(1).strip()
                return

        if (m := _TOPIC.match(line)) or (like := _TOPIC_LIKE.match(line)):
            self.close_review()
            self.topics_seen += 1
            self.reviews_in_topic = 0
            self.review_numbers = set()
            if m:
                number, title = self._number("주제", m.group(1), self.topics_seen, line_no), m.group(2).strip()
            else:
                number, title = self.topics_seen, like.group(1).strip()
                self.problems.append(Problem(self.path, line_no, f"topic heading without a number; numbered {number} by position"))
            self.topic = _Topic(self._unique("주제", number, self.topic_numbers, line_no), self._title(title, line_no))
            self.expect = _PRESENTER
            self.saw_structure = True
        elif m := _REVIEW.match(line):
            self.close_review()
            self.saw_structure = True
            if self.topic is None:
                self.problems.append(Problem(self.path, line_no, "review before any 주제 heading, skipped"))
                return
            self.reviews_in_topic += 1
            number = self._number("리뷰", m.group(1), self.reviews_in_topic, line_no)
            self.review = _OpenReview(self._unique("리뷰", number, self.review_numbers, line_no), line_no)
            self.expect = _REVIEWER
        elif _SEPARATOR.match(line):
            self.close_review()
        elif self.review is not None:
            self.review.body.append((line_no, raw))

    def _number(self, kind: str, digits: str, position: int, line_no: int) -> int:
        """The heading's number, or its position among its kind when the number is absurd."""
        if (value := bounded_number(digits)) is not None:
            return value
        self.problems.append(Problem(self.path, line_no, f"{_too_large(kind, digits)}; numbered {position} by position"))
        return position

    def _unique(self, kind: str, number: int, used: set[int], line_no: int) -> int:
        """`number`, or the next free one when it is already taken: a duplicate must not hide the other."""
        if number in used:
            free = max(used) + 1
            self.problems.append(Problem(self.path, line_no, f"{kind} {number} appears twice; this one numbered {free}"))
            number = free
        used.add(number)
        return number

    def _title(self, title: str, line_no: int) -> str:
        if not title:
            self.problems.append(Problem(self.path, line_no, "topic has no title"))
        elif len(title) > MAX_TITLE_CHARS:
            self.problems.append(Problem(self.path, line_no, f"title of {len(title):,} characters cut to {MAX_TITLE_CHARS}"))
            title = title[:MAX_TITLE_CHARS]
        return title

    def close_review(self) -> None:
        """Turn the open review into a `Review`, unless it is an empty or placeholder slot."""
        review, self.review = self.review, None
        if review is None:
            return
        body = review.content()
        content = "\n".join(t for _, t in body).strip()
        if not content or content == PLACEHOLDER:
            return  # placeholder slot in the template, not a review
        if not review.reviewer:
            self.problems.append(Problem(self.path, review.heading_line, f"리뷰 {review.number} has no reviewer; indexed as unnamed"))
        self.reviews.append(
            Review(
                path=self.path,
                file=self.file,
                week=self.week,
                topic_no=self.topic.number,
                topic=self.topic.title,
                presenter=self.topic.presenter,
                review_no=review.number,
                reviewer=review.reviewer,
                body_start=body[0][0],
                body_lines=tuple(t.rstrip() for _, t in body),
            )
        )

    def finish(self) -> tuple[list[Review], list[Problem]]:
        self.close_review()
        if not self.saw_structure:
            self.problems.append(Problem(self.path, None, "no 주제/리뷰 headings found, nothing indexed"))
        return self.reviews, self.problems


@dataclass
class NoteFiles:
    """The note files found under some paths, and what could not be looked at."""

    files: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unreadable_dirs: list[str] = field(default_factory=list)  # resolved paths

    def add_unreadable_dir(self, folder: Path | str, error: OSError) -> None:
        resolved = os.path.realpath(folder)
        self.unreadable_dirs.append(resolved)
        self.problems.append(Problem(resolved, None, f"cannot read this folder ({error.strerror}), its files skipped"))


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind}), skipped"


def find_note_files(paths: Iterable[str | Path]) -> NoteFiles:
    """The `.md` files named by `paths` (files as given, folders searched recursively), sorted and unique.

    Only regular files (after following symlinks) are listed, so nothing else
    is ever opened. Special files, broken links and folders that cannot be
    listed become problems; a path that does not exist is a BadRequest.
    """
    found = NoteFiles()
    for p in paths:
        p = Path(p)
        try:
            mode = os.stat(p).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise BadRequest(f"{p}: no such file or folder") from None
        except PermissionError as e:  # a folder on the way cannot be searched
            found.add_unreadable_dir(p, e)
            continue
        except OSError as e:
            raise BadRequest(f"{p}: cannot be read ({e.strerror})") from None
        if stat.S_ISDIR(mode):
            _walk(p, found)
        elif stat.S_ISREG(mode):
            found.files.append(p)
        else:
            raise BadRequest(f"{p}: not a regular file or folder")
    seen: set[str] = set()
    unique = []
    for f in found.files:
        key = os.path.realpath(f)
        if not _utf8(key):
            # Not storable or printable as text (a cp949 name, say): named by its bytes.
            shown = os.fsencode(key).decode("utf-8", "backslashreplace")
            found.problems.append(Problem(shown, None, "file name is not UTF-8, skipped"))
            continue
        if key not in seen and f.name.lower() != "readme.md":
            seen.add(key)
            unique.append(f)
    found.files = unique
    return found


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False


def _walk(folder: Path, found: NoteFiles) -> None:
    """Add the note files under `folder`, depth first in name order (the order of sorted paths)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        if entries:
            # Listing needs read permission, reaching the entries execute
            # permission: without it every file below fails alike, so the
            # folder is reported once instead.
            os.lstat(entries[0].path)
    except OSError as e:
        found.add_unreadable_dir(folder, e)
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):  # linked folders are not followed: no cycles
                _walk(path, found)
                continue
            if path.suffix.lower() != ".md":
                continue
            mode = os.stat(path).st_mode
        except OSError as e:
            found.problems.append(Problem(os.path.abspath(path), None, f"cannot read ({e.strerror}), skipped"))
            continue
        if stat.S_ISREG(mode):
            found.files.append(path)
        elif not stat.S_ISDIR(mode):  # a link to a folder named like a note is a folder
            found.problems.append(Problem(os.path.abspath(path), None, _not_regular(mode)))


def _read_note(path: str) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; OSError or _NotANote otherwise.

    Opened non-blocking and checked again after opening: a file swapped for a
    FIFO since it was listed must not hang the build.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _NotANote(_not_regular(info.st_mode))
        if info.st_size > MAX_FILE_BYTES:
            raise _NotANote(_too_big(info.st_size))
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # it grew since fstat
        raise _NotANote(_too_big(len(data)))
    return data


class _NotANote(Exception):
    """A file that is there but is not something to read as notes; the message says why."""


def _too_big(size: int) -> str:
    return f"file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit for notes, skipped"


def read_reviews(paths: Iterable[str | Path]) -> ReadResult:
    """Read every review file under `paths`; unreadable files and folders become problems, never exceptions."""
    found = find_note_files(paths)
    result = ReadResult([], [], [], list(found.problems), list(found.unreadable_dirs))
    for f in found.files:
        path = str(f.resolve())
        try:
            text, problem = decode(_read_note(path), path)
            if problem is None and not text.strip():
                problem = Problem(path, None, "empty file, skipped")
        except _NotANote as e:
            problem = Problem(path, None, str(e))
        except OSError as e:
            problem = Problem(path, None, f"cannot read ({e.strerror}), skipped")
        if problem:
            result.skipped.append(path)
            result.problems.append(problem)
            continue
        reviews, problems = parse(text, path)
        result.files.append(path)
        result.reviews.extend(reviews)
        result.problems.extend(problems)
    return result
