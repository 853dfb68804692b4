"""Has the group reviewed this paper? A title, an arXiv id or URL, or a DOI, looked up in the notes.

Titles are matched by `titles.match_titles`'s strict tiers (the same title
or short name, the start of a title, a near spelling), the ones that say the
query *is* that paper. When none matches, a similar title by embedding
counts: the index's model embeds the query and every title (there are
dozens) and a cosine of at least 0.93 counts as the same paper under another
wording. Against the 34 titles of the dev notes, 25 titles of papers not
among them scored at most 0.913 (RoBERTa against BERT), and 9 of 10
rewordings of reviewed titles 0.936 to 0.983 (the tenth, 0.899, is missed:
a thin margin, measured on few titles; bench/seen_threshold.py).

When nothing matches, the closest titles by that cosine are listed.

Identifiers: arXiv ids and URLs (`2505.03335`, `arxiv.org/abs/...`,
`arxiv.org/pdf/...v2`, `arXiv:...`) and DOIs (`10.xxxx/...`, `doi.org/...`)
are found in the notes' text. Reviews often cite other papers, so an
identifier is the reviewed paper's own only where it stands in the topic
title or on the first line of a review (where people paste the paper's
link); anywhere else it is listed as "mentioned in", which is weaker.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from ..model.protocol import Encoder
from ..errors import BadRequest
from .request import paper_name
from ..storage import Backend, StoredPassage
from ..notes.titles import match_titles

SIMILAR_MIN = 0.93  # title cosine for "the same paper, other wording" (see module doc)
CLOSEST = 3

# New-style arXiv ids (YYMM.NNNNN) and old-style ones (hep-th/9901001).
_ARXIV_ID = r"(\d{4}\.\d{4,5}|[a-z][a-z.\-]*/\d{7})(?:v\d+)?"
_ARXIV = re.compile(
    rf"(?:arxiv\.org/(?:abs|pdf|html)/|arxiv:\s*|10\.48550/arxiv\.){_ARXIV_ID}", re.IGNORECASE
)
_BARE_ARXIV = re.compile(rf"^{_ARXIV_ID}$", re.IGNORECASE)
_DOI = re.compile(r"\b(10\.\d{4,9}/[^\s\"'<>()\[\]{}]+)", re.IGNORECASE)


def find_identifiers(text: str) -> list[str]:
    """Paper identifiers in `text`, normalised (`arxiv:2505.03335`, `doi:10.1145/…`), in order, once each."""
    found = [f"arxiv:{m.group(1).lower()}" for m in _ARXIV.finditer(text)]
    for m in _DOI.finditer(text):
        doi = m.group(1).rstrip(".,;:").lower()
        if not doi.startswith("10.48550/arxiv."):  # arXiv's own DOIs are arXiv ids, found above
            found.append(f"doi:{doi}")
    return list(dict.fromkeys(found))


def parse_identifier(query: str) -> str | None:
    """The identifier a query is, when it is one (an arXiv id or URL, a DOI or doi.org URL), else None."""
    text = query.strip()
    bare = _BARE_ARXIV.match(text)
    if bare:
        return f"arxiv:{bare.group(1).lower()}"
    ids = find_identifiers(text)
    # Only a query that is an identifier (perhaps as a URL) counts, not a title quoting one.
    if len(ids) == 1 and (" " not in text or text.lower().startswith(("http", "arxiv", "doi", "10."))):
        return ids[0]
    return None


@dataclass(frozen=True)
class ReviewRef:
    """One review of a topic: who wrote it and where it starts."""

    reviewer: str
    path: str
    file: str
    line: int


@dataclass(frozen=True)
class Topic:
    """One reviewed paper in one week's notes, with its presenter and reviews."""

    title: str
    week: int | None
    path: str
    file: str
    topic_no: int
    presenter: str
    line: int  # where its first review starts
    reviews: tuple[ReviewRef, ...]

    @property
    def reviewers(self) -> list[str]:
        return [r.reviewer for r in self.reviews]


@dataclass(frozen=True)
class Match:
    """A topic the query names, and how it was recognised."""

    topic: Topic
    how: str  # title, short name, prefix, fuzzy, similar, arxiv, doi
    score: float | None = None  # fuzzy ratio or cosine, where one decided


@dataclass(frozen=True)
class Mention:
    """An identifier cited inside a review of another topic."""

    topic: Topic
    reviewer: str
    path: str
    file: str
    line: int


@dataclass(frozen=True)
class SeenResult:
    """The answer to `seen`: matching topics, or where the identifier is only cited, or the closest titles."""

    query: str
    identifier: str | None
    matches: list[Match] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)
    closest: list[tuple[Topic, float]] = field(default_factory=list)

    @property
    def reviewed(self) -> bool:
        return bool(self.matches)

    def as_dict(self) -> dict:
        """The JSON shape of `seen --json`."""

        def topic(t: Topic) -> dict:
            d = asdict(t)
            d["reviewers"] = t.reviewers
            return d

        return {
            "query": self.query,
            "identifier": self.identifier,
            "reviewed": self.reviewed,
            "matches": [{**topic(m.topic), "match": m.how, "score": m.score} for m in self.matches],
            "mentioned_in": [
                {"topic": m.topic.title, "week": m.topic.week, "reviewer": m.reviewer, "path": m.path,
                 "file": m.file, "line": m.line}
                for m in self.mentions
            ],
            "closest": [{**topic(t), "score": round(s, 4)} for t, s in self.closest],
        }


def topics(passages: list[StoredPassage]) -> list[Topic]:
    """The index's passages gathered into topics, in week, file and topic order."""
    by_topic: dict[tuple[str, int], list[StoredPassage]] = {}
    for p in passages:
        by_topic.setdefault(p.paper_key, []).append(p)
    out = []
    for ps in by_topic.values():
        first: dict[int, StoredPassage] = {}
        for p in sorted(ps, key=lambda p: p.line):
            first.setdefault(p.review_no, p)
        reviews = tuple(ReviewRef(p.reviewer, p.path, p.file, p.line) for p in sorted(first.values(), key=lambda p: p.line))
        p0 = ps[0]
        out.append(Topic(p0.topic, p0.week, p0.path, p0.file, p0.topic_no, p0.presenter, reviews[0].line, reviews))
    return sorted(out, key=lambda t: (t.week is None, t.week or 0, t.file, t.topic_no))


def _by_title(query: str, all_topics: list[Topic]) -> list[Match]:
    """Matches from the text of the titles alone (the strict tiers of `titles.match_titles`)."""
    by_title: dict[str, list[Topic]] = {}
    for t in all_topics:
        by_title.setdefault(t.title, []).append(t)
    return [Match(t, m.how, m.score) for m in match_titles(query, list(by_title)) for t in by_title[m.title]]


def _title_similarity(query: str, all_topics: list[Topic], encoder: Encoder) -> np.ndarray:
    """Cosine of the query to each topic's title, both embedded as queries (a symmetric comparison)."""
    q = encoder.embed_query(query)
    titles = np.vstack([_title_vector(encoder, t.title) for t in all_topics])
    return titles @ q


@lru_cache(maxsize=4096)
def _title_vector(encoder: Encoder, title: str) -> np.ndarray:
    # A server answers many `seen` calls with the same titles; embedding every title
    # takes about 20 ms each (0.8 s for the 34 titles of the labelled sets).
    return encoder.embed_query(title)


def _by_identifier(identifier: str, passages: list[StoredPassage], all_topics: list[Topic]) -> tuple[list[Match], list[Mention]]:
    key = {(t.path, t.topic_no): t for t in all_topics}  # a passage's paper_key
    own: dict[tuple, Topic] = {}
    mentions: list[Mention] = []
    for p in passages:
        topic = key[p.paper_key]
        if identifier in find_identifiers(p.topic):
            own[p.paper_key] = topic
        # The first line of a review is where the paper's own link goes.
        elif p.passage_no == 1 and identifier in find_identifiers(p.text.split("\n", 1)[0]):
            own[p.paper_key] = topic
        elif identifier in find_identifiers(p.text):
            mentions.append(Mention(topic, p.reviewer, p.path, p.file, p.line))
    how = identifier.split(":", 1)[0]
    mentions = [m for m in mentions if (m.path, m.topic.topic_no) not in own]
    return [Match(t, how) for t in own.values()], mentions


def seen(
    index: Backend, query: str, encoder: Callable[[], Encoder] | None = None, closest: int = CLOSEST
) -> SeenResult:
    """Whether the group reviewed the paper `query` names (title, arXiv id/URL or DOI), and where.

    `encoder` returns the model to embed titles with (normally the index's);
    it is called only when the title tiers find nothing, for the
    similar-title tier and the closest titles, so most lookups never load a
    model. Without it, those two are skipped.
    """
    query = paper_name(query)
    if not query:
        raise BadRequest("the paper is empty; give a title, an arXiv id or URL, or a DOI")
    passages = index.passages()
    all_topics = topics(passages)
    identifier = parse_identifier(query)
    if identifier is not None:
        matches, mentions = _by_identifier(identifier, passages, all_topics)
        return SeenResult(query, identifier, matches, mentions)
    matches = _by_title(query, all_topics)
    if matches or encoder is None or not all_topics:
        return SeenResult(query, None, matches)
    cosines = _title_similarity(query, all_topics, encoder())
    order = np.argsort(-cosines, kind="stable")
    similar = [Match(all_topics[i], "similar", round(float(cosines[i]), 4)) for i in order if cosines[i] >= SIMILAR_MIN]
    if similar:
        return SeenResult(query, None, similar)
    return SeenResult(query, None, closest=[(all_topics[i], float(cosines[i])) for i in order[:closest]])
