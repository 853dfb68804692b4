"""Showing results in a terminal: one header line per hit, then the passage, query terms highlighted.

Text from the notes goes to the terminal, so control characters (escape
sequences, bidi overrides) are made visible instead of being obeyed.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Iterable

from rich.console import Console
from rich.text import Text

from .ranking import Hit


def clean(text: str) -> str:
    """`text` with terminal control and format characters shown as escapes; newlines and tabs kept."""
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co") else f"\\u{ord(ch):04x}"
        for ch in text
    )


def display_path(path: str) -> str:
    """The path relative to the working folder when that is shorter, else as stored."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return rel if len(rel) < len(path) else path


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
        meta.append(f" · {', '.join(clean(n) or '(no reviewer)' for n in names)}", style="green")
        if p.section != "other":
            meta.append(f" · {p.section}", style="yellow")
        meta.append(f" · {week_label(p.week)}", style="dim")
        meta.append(f" · {display_path(p.path)}:{p.line}", style="magenta")
        meta.append(f" · presenter {clean(p.presenter) or '?'}", style="dim")
        if hit.passages > 1:
            meta.append(f" · +{hit.passages - 1} passages", style="dim")
        # The title keeps at least a third of the line; what does not fit after it
        # is cut from the end, where the least needed fields are.
        title = Text(clean(p.topic), style="bold cyan")
        room = console.width - lead.cell_len - meta.cell_len
        title.truncate(max(room, min(title.cell_len, console.width // 3)), overflow="ellipsis")
        header = Text.assemble(lead, title, meta)
        header.truncate(console.width, overflow="ellipsis")
        console.print(header, no_wrap=True)
        for line in highlight(clean(p.text), terms).wrap(console, max(console.width - 4, 20)):
            line.rstrip()
            console.print(Text("    ") + line, no_wrap=True)
        console.print()
