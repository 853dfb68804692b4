"""Token states stored compactly, for MaxSim (rank/late.py).

Storage: 384 float32 numbers per token would be ~180 KB per passage. The codec
centres the token states on a mean, projects them on the top `dim` principal
directions and keeps each projected token as int4 with one float16 scale;
decoding maps back to the model's space, so MaxSim stays a plain cosine. The
mean and the projection are fitted on a build's tokens and then reused by the
incremental builds that follow (stored codes stay valid), until the index has
doubled in tokens; then they are refitted and every passage's tokens embedded
again with the model and re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..model.tokens import TOKEN_RULE, unit_rows

CODEC_DIM = 256  # principal directions kept; docs/ranking.md, "Token storage", has the bytes/quality table
SCORE_SLICE = 2048  # tokens per product in TokenCodec.cosines: 2 MB of planes, about one core's L2
CODEC_BITS = 4



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

    @property
    def code_width(self) -> int:
        """Bytes a token's codes take: one a coordinate, or two coordinates a byte for 4 bits."""
        return (self.dim + 1) // 2 if self.bits == 4 else self.dim

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

    def decode(self, enc: Encoded, unit: bool = True) -> np.ndarray:
        """The token rows (n, d_model) `enc` stands for: unit length, or as decoded when not `unit`."""
        rows = (self._planes(enc) * enc.scales.astype(np.float32)[:, None]) @ self._plane_columns(self.basis.T).T + self.mean
        return unit_rows(rows) if unit else rows

    def cosines(self, query: np.ndarray, enc: Encoded, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(m, n) cosines of query unit rows with the tokens `enc` decodes to, without decoding them, and their lengths.

        A decoded token is mean + basisᵀ(s·c) for its codes c and scale s, so
        its dot product with a query row q is q·mean + s (basis·q)·c: products
        with the codes as small integers. The basis rows are orthonormal, so
        its squared length is |mean|² + 2s c·(basis·mean) + s²|c|². `lengths`
        are those lengths when the caller kept them from an earlier call;
        otherwise they are worked out from the same unpacked codes.
        """
        n = len(enc.codes)
        qb = np.ascontiguousarray(self._plane_columns(query @ self.basis.T).T)
        bm = self._plane_columns(self.basis @ self.mean)
        s = enc.scales.astype(np.float32)
        out = np.empty((len(query), n), np.float32)
        squared = None if lengths is not None else np.empty(n, np.float32)
        # In slices: the integer planes of 40,000 tokens would be 40 MB of float32, and
        # allocating and faulting in that much took longer than the product (docs/performance.md).
        for a in range(0, n, SCORE_SLICE):
            b = min(a + SCORE_SLICE, n)
            planes = self._planes(Encoded(enc.codes[a:b], enc.scales[a:b]))
            out[:, a:b] = (planes @ qb).T
            if squared is not None:
                squared[a:b] = 2 * s[a:b] * (planes @ bm) + s[a:b] ** 2 * np.einsum("ij,ij->i", planes, planes)
            # Freed before the next slice is unpacked, so the allocator hands the same 2 MB back
            # instead of mapping fresh pages each time (3x slower scoring when two were alive, measured).
            del planes
        if squared is not None:
            lengths = np.sqrt(np.maximum(self.mean @ self.mean + squared, 1e-12))
        out *= s
        out += (query @ self.mean)[:, None]
        out /= lengths
        return out, lengths

    def _planes(self, enc: Encoded) -> np.ndarray:
        """The codes as float32 integers c, in the column order `_plane_columns` puts coordinates in."""
        if self.bits != 4:
            return enc.codes.astype(np.float32)
        # Codes are stored as c + 8, two to a byte: the low nibbles hold the even
        # coordinates, the high ones the odd. Keeping the two nibble planes side by side,
        # and reordering the other operand's columns to match, instead of interleaving
        # the coordinates back, makes scoring several times faster (docs/performance.md).
        width = enc.codes.shape[1]
        planes = np.empty((len(enc.codes), 2 * width), np.float32)
        np.bitwise_and(enc.codes, 0x0F, out=planes[:, :width], casting="unsafe")
        np.right_shift(enc.codes, 4, out=planes[:, width:], casting="unsafe")
        planes -= 8
        return planes

    def _plane_columns(self, x: np.ndarray) -> np.ndarray:
        """`x`'s last axis (codec coordinates) in the column order of `_planes`."""
        if self.bits != 4:
            return x
        x = _pad(x, 2 * ((self.dim + 1) // 2))  # an odd dim's last high nibble codes 0
        return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    """`x` with zero columns (or elements) appended up to `width`."""
    extra = width - x.shape[-1]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)]) if extra else x


# Refit the codec (and re-embed every passage's tokens) once the index holds this
# many times the tokens it was fitted on: a codec fitted on a first small week
# lost 0.03 nDCG on a three-times-larger index (docs/ranking.md, "Token storage"), while
# doubling keeps the re-embedding cost to at most one extra full pass overall.
REFIT_GROWTH = 2.0
CODES, SCALES, OFFSETS, MEAN, BASIS, INFO = (
    "codes.npy", "scales.npy", "offsets.npy", "mean.npy", "basis.npy", "codec.json")


class TokenStore:
    """Every passage's compressed token states, row-aligned with the index, plus the codec that made them."""

    def __init__(self, codec: TokenCodec, fitted_tokens: int, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray):
        self.codec = codec
        self.fitted_tokens = fitted_tokens  # tokens the codec was fitted on
        self.codes, self.scales, self.offsets = codes, scales, offsets
        self._lengths: np.ndarray | None = None  # decoded token lengths, NaN until first needed

    def cosines(self, query: np.ndarray, rows: list[int]) -> np.ndarray:
        """(m, n) cosines of query unit rows with the tokens of `rows`, in order (`TokenCodec.cosines`).

        A token's decoded length depends on its codes only, so it is worked out
        the first time the token is scored and kept: a server scoring the same
        tokens query after query skips that part of the work.
        """
        tokens = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) if rows else np.zeros(0, np.int64)
        enc = Encoded(np.asarray(self.codes[tokens]), np.asarray(self.scales[tokens]))
        if self._lengths is None:
            self._lengths = np.full(self.total_tokens, np.nan, np.float32)
        kept = self._lengths[tokens]
        sims, lengths = self.codec.cosines(query, enc, None if np.isnan(kept).any() else kept)
        self._lengths[tokens] = lengths
        return sims

    @classmethod
    def from_encoded(cls, codec: TokenCodec, fitted_tokens: int, encoded: list[Encoded]) -> "TokenStore":
        """A store of `encoded` passages, row i = encoded[i]."""
        width = codec.code_width
        dtype = np.uint8 if codec.bits == 4 else np.int8
        offsets = np.zeros(len(encoded) + 1, np.int64)
        offsets[1:] = np.cumsum([len(e.scales) for e in encoded])
        codes = np.vstack([e.codes for e in encoded]) if encoded else np.zeros((0, width), dtype)
        scales = np.concatenate([e.scales for e in encoded]) if encoded else np.zeros(0, np.float16)
        return cls(codec, fitted_tokens, codes.astype(dtype), scales.astype(np.float16), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])

    def encoded(self, row: int) -> Encoded:
        a, b = self.offsets[row], self.offsets[row + 1]
        return Encoded(self.codes[a:b], self.scales[a:b])

    def states(self, row: int) -> np.ndarray:
        """Decoded unit token rows of one passage."""
        return self.codec.decode(self.encoded(row))

    def needs_refit(self, total_tokens: int) -> bool:
        """Whether an index of `total_tokens` tokens has outgrown the data the codec was fitted on."""
        return total_tokens >= REFIT_GROWTH * max(self.fitted_tokens, 1)

    def save(self, folder: Path) -> None:
        """Write arrays as .npy (no pickle) and the codec's settings as JSON into `folder`."""
        import json

        folder.mkdir(parents=True, exist_ok=True)
        for name, array in ((CODES, self.codes), (SCALES, self.scales), (OFFSETS, self.offsets),
                            (MEAN, self.codec.mean), (BASIS, self.codec.basis)):
            np.save(folder / name, array, allow_pickle=False)
        info = {"bits": self.codec.bits, "dim": self.codec.dim, "fitted_tokens": self.fitted_tokens, "rule": TOKEN_RULE}
        (folder / INFO).write_text(json.dumps(info), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "TokenStore":
        """Read a store written by `save`; raises ValueError or OSError when it is damaged."""
        import json

        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
        if info.get("rule") != TOKEN_RULE:  # stored tokens kept by another rule would not match the query's
            raise ValueError(f"token states kept by rule {info.get('rule')!r}, this version uses {TOKEN_RULE!r}")
        arrays = {n: np.load(folder / n, allow_pickle=False, mmap_mode="r") for n in (CODES, SCALES, OFFSETS)}
        codec = TokenCodec(np.load(folder / MEAN, allow_pickle=False), np.load(folder / BASIS, allow_pickle=False), int(info["bits"]))
        offsets = np.asarray(arrays[OFFSETS])
        codes = arrays[CODES]
        # Every passage keeps at least one token (keep_mask), so an empty span is damage.
        if (len(codec.basis) != info["dim"] or codes.ndim != 2 or codes.shape[1] != codec.code_width
                or offsets[0] != 0 or offsets[-1] != len(codes) or len(arrays[SCALES]) != len(codes)
                or np.any(np.diff(offsets) <= 0)):
            raise ValueError("token arrays disagree in length")
        _check_numbers(codec, np.asarray(arrays[SCALES]))
        return cls(codec, int(info["fitted_tokens"]), arrays[CODES], arrays[SCALES], offsets)


def _check_numbers(codec: TokenCodec, scales: np.ndarray) -> None:
    """ValueError unless the codec and the token scales are numbers a fitted store can hold.

    Checksums are verified on open only for small generations; on a large one a
    damaged basis made every score 8e36 and an inf scale hid the best review,
    with exit 0. The mean of unit rows is at most unit length, the basis rows
    are orthonormal, and a scale is a projected coordinate of at most 2 over
    the code's top value (or 1 for a zero row): anything else is damage. These
    arrays are small (the codes, which are not, stay memory-mapped).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if not (np.isfinite(codec.mean).all() and np.linalg.norm(codec.mean) <= 1 + 1e-3):
            raise ValueError("the codec's mean is damaged")
        norms = np.linalg.norm(codec.basis, axis=1)
        if not (np.isfinite(codec.basis).all() and np.all(np.abs(norms - 1) <= 1e-3)):
            raise ValueError("the codec's basis is damaged")
        s = scales.astype(np.float32)
        if not (np.isfinite(s).all() and np.all(s > 0) and np.all(s <= 1)):
            raise ValueError("token scales out of range")


def build_store(
    keys: list[str],
    texts: list[str],
    embed: Callable[[list[str]], list[np.ndarray]],
    old: TokenStore | None,
    old_rows: dict[str, int],
    fresh: dict[int, np.ndarray],
) -> tuple[TokenStore, int]:
    """The token store for passages `keys`/`texts` (row-aligned) and how many passages were embedded.

    `fresh` holds token states already computed (row -> states, from the pass
    that embedded the new passages' vectors). Passages whose key is in
    `old_rows` reuse their stored codes from `old`; the rest are embedded with
    `embed`. Without an old store, or once the index has outgrown what its
    codec was fitted on (REFIT_GROWTH), the codec is fitted anew on every
    passage's tokens and all are encoded with it.
    """
    states = dict(fresh)
    reuse = {i: old_rows[k] for i, k in enumerate(keys) if old is not None and k in old_rows and i not in states}
    todo = [i for i in range(len(keys)) if i not in reuse and i not in states]
    states.update(zip(todo, embed([texts[i] for i in todo]) if todo else []))
    total = sum(len(s) for s in states.values()) + sum(int(old.offsets[j + 1] - old.offsets[j]) for j in reuse.values())
    if old is None or old.needs_refit(total):
        rest = sorted(reuse)
        states.update(zip(rest, embed([texts[i] for i in rest]) if rest else []))
        every = [states[i] for i in range(len(keys))]
        if not every:  # an empty index has nothing to fit on; the next build fits
            return TokenStore.from_encoded(TokenCodec(np.zeros(1, np.float32), np.eye(1, dtype=np.float32)), 0, []), 0
        fit_on = np.vstack(every)
        codec = TokenCodec.fit(fit_on)
        return TokenStore.from_encoded(codec, len(fit_on), [codec.encode(s) for s in every]), len(keys)
    encoded = [old.encoded(reuse[i]) if i in reuse else old.codec.encode(states[i]) for i in range(len(keys))]
    return TokenStore.from_encoded(old.codec, old.fitted_tokens, encoded), len(states)
