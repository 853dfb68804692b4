"""Showing results in a terminal: one header line per hit, then the passage, query terms highlighted.

Text from the notes goes to the terminal, so control characters (escape
sequences, bidi overrides) are made visible instead of being obeyed.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.padding import Padding
from rich.text import Text

from .ranking import Hit


def clean(text: str) -> str:
    """`text` with terminal control and format characters shown as escapes; newlines and tabs kept."""
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co") else f"\\u{ord(ch):04x}"
        for ch in text
    )


def display_path(path: str) -> str:
    """The path relative to the working folder when it is inside it, else as stored."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except ValueError:  # another drive on Windows
        return path


def week_label(week: int | None) -> str:
    return "week ?" if week is None else f"week {week}"


def highlight(text: str, terms: Iterable[str]) -> Text:
    """Rich text of `text` with every case-insensitive occurrence of the terms in bold yellow."""
    out = Text(text)
    words = sorted({t for t in terms if t}, key=len, reverse=True)
    if words:
        out.highlight_regex(re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE), style="bold yellow")
    return out


def render_hits(console: Console, hits: list[Hit], terms: Iterable[str], show_scores: bool = True) -> None:
    """Print hits for people: paper, reviewer, week and file:line on one line, then the passage."""
    terms = list(terms)
    for i, hit in enumerate(hits, start=1):
        p = hit.passage
        lead = Text(f"{i:>2}. ", style="bold")
        if show_scores:
            lead.append(f"{hit.score:.3f}  ", style="dim")
        meta = Text()
        meta.append(f"  · {clean(p.reviewer) or '(no reviewer)'}", style="green")
        meta.append(f" · {week_label(p.week)}", style="dim")
        meta.append(f" · {display_path(p.path)}:{p.line}", style="magenta")
        if hit.passages > 1:
            meta.append(f" · +{hit.passages - 1} passages", style="dim")
        meta.append(f" · presenter {clean(p.presenter) or '?'}", style="dim")
        # The title gives way to the metadata so the header stays on one line.
        title = Text(clean(p.topic), style="bold cyan")
        title.truncate(max(12, console.width - lead.cell_len - meta.cell_len), overflow="ellipsis")
        console.print(Text.assemble(lead, title, meta), no_wrap=True, overflow="ellipsis")
        console.print(Padding(highlight(clean(p.text), terms), (0, 0, 1, 4)))
