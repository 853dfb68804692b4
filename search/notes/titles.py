"""Which reviewed paper a name refers to: the one title matcher behind `seen` and `related`.

Titles are compared after normalisation (Unicode NFKC, case folded, version
markers such as `v2` dropped, punctuation to spaces), in tiers from the
surest to the loosest; the first tier with a match answers:

1. **title**: the same title;
2. **short name**: the same part before the colon (`Calm-Whisper`,
   `QLoRA`), on either side, so another subtitle or a later version of a
   paper still matches;
3. **prefix**: the query is the start of a title (at least two words), or a
   whole title followed by more words (a year, a venue). Not a title inside
   the query: `Improved Baselines with Visual Instruction Tuning` is another
   paper than `Visual Instruction Tuning`;
4. **fuzzy**: rapidfuzz's `ratio` of at least 90 against the title, its short
   name or its start of the query's length (one or two typos), for queries of
   8 characters or more (`LoRA` is one edit from `QLoRA`).

Those four are strict: each says the query *is* that paper, which is what
`seen` needs before it answers "reviewed". `related` names a paper the group
did review, so it goes on, still surest first, with loose tiers:

5. **words**: the query's words appear together, as whole words, in a title
   (`speculative decoding`, `siamese`; `lora` is not `qlora`);
6. **acronym**: a one-word query of two or more letters or digits that starts
   a title's initials (`DPR`, `RAG`);
7. **similar**: rapidfuzz's `WRatio` of at least 70 (partial and reordered
   wording), the best one unless the runner-up is within 3 points, for
   queries of 8 letters or digits or more (WRatio finds a partial match for
   almost any short string: `' OR 1=1 --` is not a paper).

A title that normalises to nothing (an empty heading) is never named.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

FUZZY_MIN = 90  # rapidfuzz ratio (0-100) for a near spelling
FUZZY_MIN_CHARS = 8  # below this one edit is a different name, not a typo
PREFIX_MIN_WORDS = 2
SIMILAR_MIN = 70  # rapidfuzz WRatio (0-100) for the loosest tier
SIMILAR_TIE = 3  # a runner-up within this many points makes the loosest tier ambiguous

_VERSION = re.compile(r"\bv\d+\b")
_NON_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class TitleMatch:
    """A title the query names, which tier recognised it, and the score that decided (fuzzy tiers)."""

    title: str
    how: str  # title, short name, prefix, fuzzy, words, acronym, similar
    score: float | None = None


def normalise_title(title: str) -> str:
    """`Calm-Whisper: Reduce …` → `calm whisper reduce …`; `… v2` loses the version."""
    text = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(_VERSION.sub(" ", _NON_WORD.sub(" ", text)).split())


def short_name(title: str) -> str:
    """The normalised part before the first colon (`QLoRA`), or '' when the title has none."""
    head, colon, _ = unicodedata.normalize("NFKC", title).partition(":")
    return normalise_title(head) if colon else ""


def initials(title: str) -> str:
    """`Dense Passage Retrieval for ...` → `DPRF...`: how people abbreviate papers (DPR, RAG, CoT)."""
    return "".join(w[0] for w in re.split(r"[\s\-:]+", title) if w and w[0].isalnum()).upper()


def match_titles(query: str, titles: list[str], loose: bool = False) -> list[TitleMatch]:
    """The titles `query` names, from the first tier that matches any (strict tiers only unless `loose`).

    Titles are taken once each, in the order given; a tier's matches come best
    score first. Empty when nothing matches.
    """
    from rapidfuzz import fuzz

    q, q_short = normalise_title(query), short_name(query)
    if not q:
        return []
    unique = list(dict.fromkeys(titles))
    normalised = {t: normalise_title(t) for t in unique}
    tiers: dict[str, list[TitleMatch]] = {"title": [], "short name": [], "prefix": [], "fuzzy": []}
    for t in unique:
        title, short = normalised[t], short_name(t)
        if not title:
            continue
        if q == title:
            tiers["title"].append(TitleMatch(t, "title"))
        elif short and (q == short or q_short == short):
            tiers["short name"].append(TitleMatch(t, "short name"))
        elif (len(q.split()) >= PREFIX_MIN_WORDS and f"{title} ".startswith(f"{q} ")) or f"{q} ".startswith(f"{title} "):
            tiers["prefix"].append(TitleMatch(t, "prefix"))
        elif len(q) >= FUZZY_MIN_CHARS:
            candidates = [title, short, title[: len(q)]] if len(q.split()) >= PREFIX_MIN_WORDS else [title, short]
            score = max(fuzz.ratio(q, c) for c in candidates if c)
            if score >= FUZZY_MIN:
                tiers["fuzzy"].append(TitleMatch(t, "fuzzy", round(score, 1)))
    if loose:
        word = query.strip().upper()
        tiers["words"] = [TitleMatch(t, "words") for t in unique if f" {q} " in f" {normalised[t]} "]
        tiers["acronym"] = [TitleMatch(t, "acronym") for t in unique
                            if len(word) >= 2 and word.isalnum() and initials(t).startswith(word)]
        if sum(ch.isalnum() for ch in q) >= FUZZY_MIN_CHARS:
            tiers["similar"] = _similar(query, [t for t in unique if normalised[t]])
    for matches in tiers.values():
        if matches:
            return sorted(matches, key=lambda m: -(m.score or 100))
    return []


def _similar(query: str, titles: list[str]) -> list[TitleMatch]:
    """The clear WRatio winner, or every title tied with it (within SIMILAR_TIE points)."""
    from rapidfuzz import fuzz, process, utils

    scored = process.extract(query, titles, scorer=fuzz.WRatio, processor=utils.default_process, limit=3)
    good = [(t, s) for t, s, _ in scored if s >= SIMILAR_MIN]
    if not good:
        return []
    return [TitleMatch(t, "similar", round(s, 1)) for t, s in good if good[0][1] - s < SIMILAR_TIE]
