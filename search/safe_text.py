"""Text from disk made safe to show: characters that would act on a terminal or reorder text are
respelled, for a terminal as escapes, for a page as character references, in JSON as JSON escapes.

Kept apart from display.py so that `--json` output, which needs only this, does not import rich
(32 ms of a cold query).
"""

from __future__ import annotations

import unicodedata

# Escaped wherever text from disk is printed: controls (C0, DEL and the C1 range
# U+0080-U+009F, which some terminals obey as ESC sequences), format characters
# (bidi overrides U+202A-U+202E and isolates U+2066-U+2069 reorder what follows),
# surrogates, private use, and the line and paragraph separators.
_UNSAFE = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}


def clean(text: str, *, single_line: bool = False) -> str:
    """`text` with terminal control and format characters shown as escapes (`\\u001b`).

    Newlines and tabs are kept, unless `single_line`: names, titles, paths and
    one-line messages must not be able to start a line of their own.
    """
    return respell_unsafe(text, lambda ch: f"\\u{ord(ch):04x}", keep="" if single_line else "\n\t")


def respell_unsafe(text: str, spell, keep: str = "") -> str:
    """`text` with every character that would act on a terminal or reorder text (see _UNSAFE),
    but those in `keep`, replaced by `spell(ch)`: an escape for the terminal, a reference for HTML."""
    return "".join(spell(ch) if ch not in keep and unicodedata.category(ch) in _UNSAFE else ch for ch in text)


def json_text(payload, terminal: bool = False) -> str:
    """`payload` as indented JSON with UTF-8 text as is; for a terminal, every unsafe character
    (bidi overrides, C1 controls) as a `\\uXXXX` escape, which JSON reads back the same (`clean`).
    Lone surrogates (from file names that are not UTF-8) are escaped everywhere: they cannot be written."""
    import json

    text = json.dumps(payload, ensure_ascii=False, indent=1)
    return clean(text) if terminal else text.encode("utf-8", "backslashreplace").decode("utf-8")
