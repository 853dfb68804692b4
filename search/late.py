"""Late interaction: score a passage by MaxSim over e5 token states, stored compactly.

MaxSim (ColBERT's late interaction): for each query token, the best cosine
against the passage's tokens, averaged over the query tokens. Token states are
the last hidden layer of the same model that makes the passage vectors, read
with the model's `query: ` / `passage: ` prefixes. The special tokens, the
prefix and pure punctuation carry no topic and are dropped on both sides
(README, "Retrieval quality", has the measurements).

Storage: 384 float32 numbers per token would be ~180 KB per passage. The codec
centres the token states on a mean, projects them on the top `dim` principal
directions and keeps each projected token as int8 with one float16 scale;
decoding maps back to the model's space, so MaxSim stays a plain cosine. The
mean and the projection are fitted once, on the first build's tokens, and then
reused by every incremental build (a fixed transform: stored codes stay valid).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
TOKEN_RULE = "nopunct"
CODEC_DIM = 128  # principal directions kept; README "Token storage" has the bytes/quality table
CODEC_BITS = 8


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def maxsim(query: np.ndarray, passage: np.ndarray) -> float:
    """Mean over query tokens of the best cosine against the passage's tokens (unit rows in, both)."""
    if not len(query) or not len(passage):
        return 0.0
    return float((query @ passage.T).max(axis=1).mean())


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


@dataclass(frozen=True)
class Encoded:
    """One passage's tokens as stored: int8 (or packed int4) codes and a float16 scale per token."""

    codes: np.ndarray  # (n, dim) int8, or (n, dim // 2) uint8 for 4 bits
    scales: np.ndarray  # (n,) float16

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


@dataclass(frozen=True)
class TokenCodec:
    """Centre, project on principal directions, quantise per token; decode back to unit rows."""

    mean: np.ndarray  # (d_model,) float32
    basis: np.ndarray  # (dim, d_model) float32, orthonormal rows
    bits: int = CODEC_BITS

    @classmethod
    def fit(cls, states: np.ndarray, dim: int = CODEC_DIM, bits: int = CODEC_BITS) -> "TokenCodec":
        """Fit on unit token rows (n, d_model); with fewer tokens than `dim`, keeps what there is."""
        x = unit_rows(states)
        mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1], np.float32)
        # SVD of the centred tokens: its right singular vectors are the principal directions.
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        basis = vt[: min(dim, len(vt))]
        if len(basis) < dim:  # too few tokens to fit `dim` directions: complete with an orthonormal basis
            q, _ = np.linalg.qr(np.vstack([basis, np.eye(x.shape[1], dtype=np.float32)]).T)
            basis = q.T[:dim]
        return cls(mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32), bits)

    @property
    def dim(self) -> int:
        return len(self.basis)

    def encode(self, states: np.ndarray) -> Encoded:
        """Compress unit token rows (n, d_model)."""
        z = (unit_rows(states) - self.mean) @ self.basis.T
        top = (1 << (self.bits - 1)) - 1  # 127 or 7
        scale = np.abs(z).max(axis=1) / top
        scale = np.where(scale > 0, scale, 1.0).astype(np.float16)
        q = np.clip(np.rint(z / scale.astype(np.float32)[:, None]), -top, top).astype(np.int8)
        if self.bits == 4:
            u = (q + 8).astype(np.uint8)
            if u.shape[1] % 2:
                u = np.hstack([u, np.full((len(u), 1), 8, np.uint8)])
            q = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)
        return Encoded(q, scale)

    def decode(self, enc: Encoded) -> np.ndarray:
        """Unit token rows (n, d_model) approximating what was encoded."""
        q = enc.codes
        if self.bits == 4:
            q = np.empty((len(q), q.shape[1] * 2), np.int8)
            q[:, 0::2] = (enc.codes & 0x0F).astype(np.int8) - 8
            q[:, 1::2] = (enc.codes >> 4).astype(np.int8) - 8
            q = q[:, : self.dim]
        z = q.astype(np.float32) * enc.scales.astype(np.float32)[:, None]
        return unit_rows(z @ self.basis + self.mean)
