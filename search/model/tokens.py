"""Which token states count for MaxSim, on both sides: the special tokens, the e5
prefix and pure punctuation carry no topic and are dropped (docs/ranking.md has
the measurements). Used by every encoder that returns token states.
"""

from __future__ import annotations

import unicodedata

import numpy as np

TOKEN_RULE = "nopunct"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def is_punctuation(piece: str) -> bool:
    """A SentencePiece token made only of the word marker, punctuation and symbols."""
    core = piece.replace("\u2581", "")
    return not core or all(unicodedata.category(c)[0] in "PS" for c in core)


def keep_mask(pieces: list[str], prefix_tokens: int, rule: str = TOKEN_RULE) -> np.ndarray:
    """Token positions that count: `pieces` are the tokens of `<s> prefix text </s>`.

    Rules, cumulative: all; nospecial (drop <s>, </s>); noprefix (and the
    prefix's tokens); nopunct (and punctuation-only tokens). A text that would
    keep nothing keeps everything.
    """
    keep = np.ones(len(pieces), bool)
    if rule == "all" or len(pieces) < 2:
        return keep
    keep[0] = keep[-1] = False
    if rule in ("noprefix", "nopunct"):
        keep[1 : 1 + prefix_tokens] = False
    if rule == "nopunct":
        keep &= ~np.array([is_punctuation(p) for p in pieces])
    return keep if keep.any() else np.ones(len(pieces), bool)
