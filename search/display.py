"""Showing results in a terminal: a header per hit (file:line on a line of its own when narrow), then the passage.

Text from the notes goes to the terminal, so control characters (escape
sequences, bidi overrides) are made visible instead of being obeyed.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import shorten
from .safe_text import clean

if TYPE_CHECKING:  # for annotations only: printing an error must not import the search stack
    from .rank.people import Person
    from .rank.searcher import Hit
    from .rank.seen import SeenResult
    from .storage import Paper


def display_path(path: str) -> str:
    """The path relative to the working folder when that is shorter, else as stored; escaped for the terminal."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        rel = path
    return clean(rel if len(rel) < len(path) else path, single_line=True)


def week_label(week: int | None) -> str:
    return "week ?" if week is None else f"week {week}"


def highlight(text: str, terms: Iterable[str]) -> Text:
    """Rich text of `text` with every case-insensitive occurrence of the terms in bold yellow."""
    out = Text(text)
    words = sorted({t for t in terms if t}, key=len, reverse=True)
    if words:
        out.highlight_regex(re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE), style="bold yellow")
    return out


def render_hits(
    console: Console, hits: list[Hit], terms: Iterable[str], reviewers: list[tuple[str, ...]] | None = None
) -> None:
    """Print hits for people: paper, reviewer, week and file:line on one line, then the passage.

    `reviewers`, when given, replaces each hit's reviewer (papers rolled up from several reviews).
    """
    terms = list(terms)
    for i, hit in enumerate(hits, start=1):
        p = hit.passage
        names = reviewers[i - 1] if reviewers else (p.reviewer,)
        lead = Text(f"{i:>2}. ", style="bold")
        lead.append(f"{hit.score:.3f} ", style="dim")
        meta = Text()
        meta.append(f" · {', '.join(clean(n, single_line=True) or '(no reviewer)' for n in names)}", style="green")
        if p.section != "other":
            meta.append(f" · {p.section}", style="yellow")
        meta.append(f" · {week_label(p.week)}", style="dim")
        where = Text(f"{display_path(p.path)}:{p.line}", style="magenta")
        where.append(f" · presenter {clean(p.presenter, single_line=True) or '?'}", style="dim")
        title = Text(clean(p.topic, single_line=True), style="bold cyan")
        # file:line is what a reader opens, so it is never cut: when the line is too
        # narrow for everything, it moves to a line of its own and the title gets the room.
        one_line = lead.cell_len + min(title.cell_len, console.width // 3) + meta.cell_len + 3 + where.cell_len
        if one_line <= console.width:
            meta.append(" · ", style="dim")
            meta.append_text(where)
            where = None
        title.truncate(max(console.width - lead.cell_len - meta.cell_len, min(title.cell_len, console.width // 3)),
                       overflow="ellipsis")
        header = Text.assemble(lead, title, meta)
        header.truncate(console.width, overflow="ellipsis")
        console.print(header, no_wrap=True)
        if where is not None:
            # Longer than the line: left whole for the terminal to wrap, so a copied path still works.
            console.print(Text("    ") + where, no_wrap=True, overflow="ignore", crop=False)
        for line in highlight(clean(p.text), terms).wrap(console, max(console.width - 4, 20)):
            line.rstrip()
            console.print(Text("    ") + line, no_wrap=True)
        console.print()


def render_papers(console: Console, title: str, papers: Iterable[Paper]) -> None:
    """Print the papers of an index as a table: week, paper, presenter, reviewers, passages.

    Cells are Text, not strings, so that brackets in titles are shown rather
    than read as rich markup (`[/]` would raise, `[link=...]` would make a link).
    """
    table = Table(title=Text(clean(title, single_line=True)))
    for col in ("week", "paper", "presenter", "reviewers", "passages"):
        table.add_column(col, overflow="fold")
    for p in papers:
        table.add_row(
            week_label(p.week),
            Text(clean(p.topic, single_line=True)),
            Text(clean(p.presenter, single_line=True)),
            Text(", ".join(clean(n, single_line=True) or "(none)" for n in p.reviewers)),
            str(p.passages),
        )
    console.print(table)


def seen_lines(result: "SeenResult") -> list[str]:
    """`seen` for people: each matching paper with its week, presenter and reviewers' file:line,
    else where an identifier is only cited, else the closest titles."""

    def where(t) -> str:
        return f"{week_label(t.week)} · presenter {clean(t.presenter) or '?'} · {display_path(t.path)}:{t.line}"

    def reviewers(t) -> str:
        return ", ".join(f"{clean(r.reviewer) or '(no reviewer)'} ({display_path(r.path)}:{r.line})" for r in t.reviews)

    lines = []
    for m in result.matches:
        how = m.how + (f" {m.score:g}" if m.score is not None else "")
        lines += [f"reviewed: {clean(m.topic.title)}  [{how}]", f"  {where(m.topic)}", f"  reviewers: {reviewers(m.topic)}"]
    if result.reviewed:
        return lines
    if result.identifier is not None:
        lines.append(f"not reviewed: no topic is {result.identifier}" + ("; mentioned in:" if result.mentions else ""))
        lines += [f"  {clean(m.topic.title)} · {clean(m.reviewer) or '(no reviewer)'} · "
                  f"{week_label(m.topic.week)} · {display_path(m.path)}:{m.line}" for m in result.mentions]
        return lines
    lines.append("not reviewed; closest:" if result.closest else "not reviewed")
    for t, score in result.closest:
        lines += [f"  {score:.3f}  {clean(t.title)}", f"         {where(t)} · reviewers {', '.join(map(clean, t.reviewers))}"]
    return lines


def people_lines(people: list["Person"], depth: int, shown: int) -> list[str]:
    """`who` for people: each member's score and counts, then their `shown` best pieces of evidence."""
    lines = []
    for i, person in enumerate(people, start=1):
        lines.append(f"{i:>2}. {clean(person.name)}  {person.score:.2f}  "
                     f"({person.reviewed} reviewed, {person.presented} presented of the best {depth} reviews)")
        for e in person.evidence[:shown]:
            p = e.hit.passage
            role = "presented" if e.presented else "reviewed "
            by = f" (review by {clean(p.reviewer) or '?'})" if e.presented else ""
            lines.append(f"      #{e.rank:<3} {role} {shorten(clean(p.topic, single_line=True), 60)}{by} · "
                         f"{week_label(p.week)} · {display_path(p.path)}:{p.line}")
    return lines
