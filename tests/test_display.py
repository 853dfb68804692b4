"""Terminal output: everything that came from disk is shown, never obeyed (issue #10.15)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from search.display import display_path, render_hits, render_papers
from search.rank.searcher import Hit
from search.store.index import Paper, StoredPassage
from test_safe_text import HOSTILE, raw_controls

def passage(**fields) -> StoredPassage:
    base = dict(row=0, key="k", path="/notes/week3.md", file="week3.md", week=3, topic_no=1, topic="Whisper",
                presenter="김철수", review_no=1, reviewer="이영희", line=7, end_line=9, passage_no=0,
                text="위스퍼는 robust하다.", embed_text="Whisper\n위스퍼는 robust하다.", terms="", section="other")
    base.update(fields)
    return StoredPassage(**base)


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system="truecolor", width=200), out


@pytest.mark.parametrize("field", ["path", "topic", "presenter", "reviewer", "text"])
def test_hits_never_print_raw_control_sequences(field):
    hostile = "".join(HOSTILE.values())
    value = f"/notes/{hostile}week3.md" if field == "path" else f"x{hostile}y"
    console, out = terminal()
    render_hits(console, [Hit(passage(**{field: value}), 0.5, 0.5, None)], ["robust"])
    assert raw_controls(out.getvalue()) == []


def test_rolled_up_reviewer_names_are_escaped_too():
    console, out = terminal()
    render_hits(console, [Hit(passage(), 0.5, 0.5, None)], [], reviewers=[("a\x1b[2J", "b\u202e")])
    assert raw_controls(out.getvalue()) == []


def test_a_newline_in_a_file_name_cannot_forge_a_line():
    console, out = terminal()
    render_hits(console, [Hit(passage(path="/notes/a\n 2. 0.999 forged.md"), 0.5, 0.5, None)], [])
    assert "\n 2. 0.999" not in out.getvalue()
    assert display_path("/notes/a\nb.md") == "/notes/a\\u000ab.md"


def test_display_path_is_relative_when_shorter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert display_path(str(tmp_path / "notes" / "week3.md")) == "notes/week3.md"
    assert display_path("/x.md") == "/x.md"


def test_paper_table_shows_markup_and_controls_as_text():
    console, out = terminal()
    papers = [Paper(3, "week3.md", 1, "[bold red]BERT[/] [/] [link=http://evil]x\x1b[2J", "P\u202e", ["R\x9b2J", ""], 4)]
    render_papers(console, "index: 1 papers", papers)
    shown = out.getvalue()
    assert raw_controls(shown) == []
    assert "[bold red]BERT[/] [/]" in shown and "(none)" in shown
