"""The storage interface: what ranking, related, seen, who and the front ends need from an index,
whatever engine holds it.

Everything above this module reads an index through `Backend` and the records declared here;
`backends.open_backend` picks the engine a location names. The FAISS + SQLite store
(`store/index.py`) is the `local` backend. Filters travel as a `Filters` value that each backend
translates itself (the local one into SQL), so no query language leaks upwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Protocol, Sequence

import numpy as np

from .model.protocol import Encoder, Progress
from .notes.reader import Problem, ReviewInfo
from .notes.sections import Section


@dataclass(frozen=True)
class StoredPassage(ReviewInfo):
    """A passage as kept in the index: the review it belongs to (ReviewInfo) and what it says.

    The one declaration of passage metadata: its fields are what every backend
    stores per passage, and `PUBLIC` names the ones every front end shows.
    """

    row: int  # the passage's number in the index, what every ranking is keyed by
    key: str  # content hash of (model, embedded text); how vectors are reused across builds
    line: int
    end_line: int
    passage_no: int
    text: str
    embed_text: str
    terms: str  # its BM25 terms, space-separated: kept so unchanged passages skip Kiwi next build
    section: str  # summary, method, results, opinion, limitations or other (sections.py)

    PUBLIC = ("file", "path", "line", "end_line", "week", "topic_no", "topic", "presenter", "review_no", "reviewer",
              "section", "text")

    def public(self) -> dict[str, Any]:
        """The fields front ends show, as a JSON-ready dict."""
        return {name: getattr(self, name) for name in self.PUBLIC}


PASSAGE_FIELDS = [f.name for f in fields(StoredPassage)]


@dataclass(frozen=True)
class Paper:
    """One reviewed paper in the index: who presented it, who reviewed it, how many passages."""

    week: int | None
    file: str
    topic_no: int
    topic: str
    presenter: str
    reviewers: list[str]
    passages: int


@dataclass(frozen=True)
class IndexInfo:
    """What an index was built with and holds, as every backend reports it."""

    version: str  # which build is live (the local backend's generation); a reader compares it to notice a rebuild
    model_id: str
    dim: int
    created: str
    files: int
    passages: int
    reviews: int
    roots: list[str]  # the paths given to the build; a later `index` with no paths reuses them


@dataclass(frozen=True)
class CheckReport:
    """What `Backend.check` verified: where, how many files and bytes, how many passages."""

    where: str
    files: int
    bytes: int
    passages: int

    @classmethod
    def of_folder(cls, folder: Path, passages: int) -> "CheckReport":
        """The report for a backend whose index lives in `folder`: its files and their bytes."""
        files = [p for p in folder.rglob("*") if p.is_file()]
        return cls(str(folder), len(files), sum(p.stat().st_size for p in files), passages)


class Settings(NamedTuple):
    """What the last build of an index was given: kept apart from the builds themselves."""

    roots: list[str] | None
    model_id: str | None


@dataclass(frozen=True)
class Filters:
    """Which passages a search may return; None means no restriction (`request.parse_filters` reads user input)."""

    reviewer: str | None = None
    topic: str | None = None  # case-insensitive substring of the paper title
    weeks: tuple[int, int] | None = None  # inclusive range
    section: Section | None = None  # only passages of this kind (sections.py)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.reviewer, self.topic, self.weeks, self.section))


@dataclass(frozen=True)
class LateScores:
    """Per row: MaxSim of the query against its paper's, its review's and its own passage's tokens."""

    paper: dict[int, float]
    review: dict[int, float]
    passage: dict[int, float]


class Backend(Protocol):
    """One live index, read-only: candidates by vector, by BM25 terms and by token similarity,
    passages and their paper groups by row. Usable with `with`; raises IndexDamaged on damage."""

    info: IndexInfo
    size: int  # passages; rows run from 0 to size - 1

    def passages(self, rows: Iterable[int] | None = None) -> list[StoredPassage]:
        """Passages by row (in the order given), or all of them in row order."""

    def paper_groups(self, rows: Iterable[int]) -> list[list[list[int]]]:
        """The given rows grouped by review, and the reviews by the paper they review."""

    def papers(self) -> list[Paper]:
        """Every reviewed paper, in week, file and topic order."""

    def review_at(self, file: str, line: int) -> list[StoredPassage]:
        """All passages of the review covering `line` of `file` (a path or a file name); empty when none does."""

    def rows_matching(self, filters: Filters) -> np.ndarray:
        """Rows of the passages `filters` allow, ascending."""

    def dense_search(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> dict[int, float]:
        """The k rows (of `allowed`, when given) whose vectors have the highest inner product with `vector`."""

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """Stored passage vectors by row, all of them when `rows` is None."""

    def query_terms(self, query: str) -> list[str]:
        """The query's BM25 terms, as the passages' were made."""

    def lexical_scores(self, terms: list[str], allowed: np.ndarray | None, limit: int) -> dict[int, float]:
        """BM25 of the `limit` best (allowed) rows with at least one of `terms`."""

    def paper_lexical_scores(self, terms: list[str], rows: Iterable[int]) -> dict[int, float]:
        """BM25 of each given row's paper (all its reviews' passages as one document), for rows whose paper matched."""

    def late_scores(self, query: np.ndarray, papers: list[list[list[int]]]) -> "LateScores":
        """MaxSim of the query's token rows against each given row's paper, review and passage tokens
        (`papers`: rows grouped by review, reviews by paper, as `paper_groups` gives them)."""

    def warm(self) -> None:
        """Load now what queries read, so a server's first request does not pay for it."""

    def check(self) -> CheckReport:
        """Verify everything the index holds, whatever its size; raises IndexDamaged naming what is damaged."""

    def close(self) -> None: ...

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc) -> None: ...


@dataclass(frozen=True)
class Written:
    """What `Writer.update` did."""

    embedded: int  # passages whose vectors were computed rather than reused
    tokens_embedded: int  # passages whose token states were computed rather than reused
    embed_seconds: float
    written: bool  # False when the index already held exactly this and nothing was written


class Writer(Protocol):
    """One build's write into an index. Inside `with` it holds the build lock (IndexBusy when another
    build has it) and `previous` is the live index (None when there is none or it is unusable;
    `previous_problem` then says why). Leaving without `update` changes nothing."""

    previous: Backend | None
    previous_problem: str | None

    def previous_passages(self, problems: list[Problem]) -> list[StoredPassage]:
        """The live index's passages in row order (none without one, or when they cannot be read:
        that goes into `problems`)."""

    def update(self, records: Sequence[StoredPassage], roots: list[str], encoder: Encoder, full: bool,
               problems: list[Problem], on_start: Callable[[int], None] | None = None,
               progress: Progress | None = None) -> Written:
        """Make `records` (row i = records[i]) the live index, built from `roots` with `encoder`:
        embedding what the index cannot reuse (everything with `full`), and writing nothing when it
        already holds exactly this. Reuse it had to give up is added to `problems`. Raises DiskError
        when the write is refused, with the live index unchanged."""

    def __enter__(self) -> "Writer": ...

    def __exit__(self, *exc) -> None: ...


class ClosedOnExit:
    """`with` support for a backend or anything with `close()`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def paper_groups(rows: Iterable[tuple[int, str, int, int]]) -> list[list[list[int]]]:
    """(row, path, topic_no, review_no) tuples as rows grouped by review, and reviews by paper, in row order:
    what `Backend.paper_groups` returns."""
    papers: dict[tuple, dict[int, list[int]]] = {}
    for row, path, topic_no, review_no in sorted(rows):
        papers.setdefault((path, topic_no), {}).setdefault(review_no, []).append(row)
    return [list(reviews.values()) for reviews in papers.values()]


def counts(passages: Sequence[StoredPassage]) -> dict[str, Any]:
    """What a manifest records of an index's passages: passages per file, passages, reviews."""
    per_file: dict[str, int] = {}
    for p in passages:
        per_file[p.path] = per_file.get(p.path, 0) + 1
    return {"files": [{"path": f, "passages": n} for f, n in sorted(per_file.items())],
            "passages": len(passages), "reviews": len({p.review_key for p in passages})}


def contents(backend: Backend) -> dict:
    """What `list --json` and the API's /papers show: the index's totals, model and every paper."""
    m = backend.info
    return {
        "model": m.model_id, "created": m.created, "files": m.files, "reviews": m.reviews,
        "passages": m.passages, "papers": [asdict(p) for p in backend.papers()],
    }


def review_dict(passages: list[StoredPassage]) -> dict:
    """A whole review (`Backend.review_at`) as JSON: its metadata, its text and its passages with their lines."""
    first, last = passages[0], passages[-1]
    return {
        "file": first.file, "path": first.path, "line": first.line, "end_line": last.end_line,
        "week": first.week, "topic_no": first.topic_no, "topic": first.topic, "presenter": first.presenter,
        "review_no": first.review_no, "reviewer": first.reviewer,
        "text": "\n\n".join(p.text for p in passages),
        "passages": [{"line": p.line, "end_line": p.end_line, "text": p.text} for p in passages],
    }
