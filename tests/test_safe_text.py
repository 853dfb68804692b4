"""Text from disk made safe to show (search/safe_text.py): shown, never obeyed (issues #10.15, #24)."""

from __future__ import annotations

import json

import pytest

from search.safe_text import clean, json_text

# Sequences a note or a file name could carry to drive a terminal.
HOSTILE = {
    "clear screen": "\x1b[2J",
    "OSC window title": "\x1b]0;owned\x07",
    "OSC 8 hyperlink": "\x1b]8;;http://evil/\x1b\\",
    "C1 CSI": "\x9b2J",
    "C1 OSC": "\x9d0;owned\x9c",
    "right-to-left override": "\u202e",
    "left-to-right embedding": "\u202a",
    "pop directional formatting": "\u202c",
    "right-to-left isolate": "\u2067",
    "pop directional isolate": "\u2069",
    "carriage return": "\r",
    "backspace": "\x08",
    "line separator": "\u2028",
}


def raw_controls(out: str) -> list[str]:
    """The hostile sequences found verbatim in terminal output (the console's own SGR colours are fine)."""
    return [name for name, seq in HOSTILE.items() if seq in out]


@pytest.mark.parametrize("name, seq", list(HOSTILE.items()))
def test_clean_escapes_every_control_sequence(name, seq):
    shown = clean(f"앞{seq}뒤")
    assert raw_controls(shown) == [] and shown.startswith("앞") and shown.endswith("뒤")
    assert "\\u" in shown


def test_clean_keeps_text_newlines_and_tabs_unless_one_line():
    assert clean("한국어 English 📚 (내용)\n\t다음 줄") == "한국어 English 📚 (내용)\n\t다음 줄"
    assert clean("a\nb\tc", single_line=True) == "a\\u000ab\\u0009c"


def test_json_for_a_terminal_escapes_what_would_act_on_it_and_reads_back_the_same():
    payload = {"topic": "week31\u202egnp \x9b2J \x1b[2J 한국어", "lone": "\udcc1"}
    shown = json_text(payload, terminal=True)
    assert raw_controls(shown) == [] and "\u202e" not in shown and "\x9b" not in shown and "한국어" in shown
    assert json.loads(shown) == payload
    piped = json_text(payload, terminal=False)
    assert "\u202e" in piped and "\x9b" in piped and "\udcc1" not in piped  # exact, but writable
    assert json.loads(piped) == payload
