"""Token states stored compactly, for MaxSim (rank/late.py).

Storage: 384 float32 numbers per token would be ~180 KB per passage. The codec
centres the token states on a mean, projects them on the top `dim` principal
directions and keeps each projected token as int4 with one float16 scale;
decoding maps back to the model's space, so MaxSim stays a plain cosine. The
mean and the projection are fitted on a build's tokens and then reused by the
incremental builds that follow (stored codes stay valid), until the index has
doubled in tokens; then they are refitted on the new passages' states and the
stored codes decoded, and every passage is encoded again: no passage is
embedded twice. Once fitted on FIT_TOKENS tokens (a sample of a larger build),
the codec is kept for good.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..model.tokens import TOKEN_RULE, unit_rows
from ..storage import LateScores
from .blocks import BlockCheck, block_digests

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
        """Fit on unit token rows (n, d_model)."""
        return cls.fit_parts([states], dim, bits)

    @classmethod
    def fit_parts(cls, parts: Iterable[np.ndarray], dim: int = CODEC_DIM, bits: int = CODEC_BITS) -> "TokenCodec":
        """Fit on token rows given in parts (one passage's each), never stacked: the mean and the
        principal directions come from sums accumulated in float64 (d_model x d_model), so fitting on
        n tokens costs no n-sized copy, where an SVD of the stacked tokens took several (#22)."""
        count, total, gram = 0, None, None
        for part in parts:
            x = unit_rows(part).astype(np.float64)
            if total is None:
                total, gram = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
            count, total, gram = count + len(x), total + x.sum(axis=0), gram + x.T @ x
        mean = total / max(count, 1)
        # The centred tokens' covariance; its eigenvectors by falling eigenvalue are the principal directions
        # (all d_model of them, so a codec fitted on fewer tokens than `dim` still has `dim` orthonormal rows).
        values, vectors = np.linalg.eigh(gram - count * np.outer(mean, mean))
        basis = vectors[:, np.argsort(values)[::-1][:dim]].T
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


# Refit the codec (from the stored codes, decoded, and the new states) once the index
# holds this many times the tokens it was fitted on: a codec fitted on a first small
# week lost 0.03 nDCG on a three-times-larger index (docs/ranking.md, "Token storage"),
# and doubling keeps the re-encoding to at most one extra pass over the codes overall...
REFIT_GROWTH = 2.0
# ...until it was fitted on this many tokens (about 1,900 passages of the labelled sets'
# kind): then it is kept for good, and a build holds at most this many tokens' states in
# float16 (150 MB) plus one chunk's, not every new passage's (#22). Indexes up to this size
# are fitted on all their tokens, as before. A sample is not free: a codec fitted on a
# third of dev-corpus-2's tokens (6.7k of 19k) lowered its late nDCG@10 from 0.853 to
# 0.823; this sample is 30 times that one, and what it costs is not measured
# (docs/ranking.md, "Token storage").
FIT_TOKENS = 200_000
CODES, SCALES, OFFSETS, MEAN, BASIS, INFO = (
    "codes.npy", "scales.npy", "offsets.npy", "mean.npy", "basis.npy", "codec.json")
# Block digests (store/blocks.py) of the codes, the one file a query reads only in part; a store
# written before them has none (one earlier version kept blake2b digests in codes.blocks.npy and
# scales.blocks.npy, which this one leaves alone: a rebuild replaces them).
CODE_BLOCKS = "codes.crc32.npy"


class TokenStore:
    """Every passage's compressed token states, row-aligned with the index, plus the codec that made them."""

    def __init__(self, codec: TokenCodec, fitted_tokens: int, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray,
                 code_check: BlockCheck | None = None):
        self.codec = codec
        self._code_check = code_check  # set when the codes are read from a file not verified as a whole
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
        if self._code_check is not None:
            width = self.codes.shape[1] * self.codes.itemsize
            spans = self.offsets[np.stack([rows, np.asarray(rows) + 1], axis=1)] if rows else np.zeros((0, 2), np.int64)
            self._code_check.verify(self.codes.offset + spans * width)
        enc = Encoded(np.asarray(self.codes[tokens]), np.asarray(self.scales[tokens]))
        if self._lengths is None:
            self._lengths = np.full(self.total_tokens, np.nan, np.float32)
        kept = self._lengths[tokens]
        sims, lengths = self.codec.cosines(query, enc, None if np.isnan(kept).any() else kept)
        self._lengths[tokens] = lengths
        return sims

    def late_scores(self, query: np.ndarray, papers: list[list[list[int]]]) -> LateScores:
        """MaxSim at three levels for the rows of `papers` (rows grouped by review, reviews by paper).

        Scoring the whole review rather than its best passage was worth +0.015
        and +0.026 nDCG@10 on the two labelled sets (docs/ranking.md): an answer is often
        spread over several paragraphs of one review. The paper score (all tokens
        of the paper's reviews) is a light third ranking (PAPER_WEIGHT). The
        passage score picks which of the review's passages to show. All candidate
        tokens are scored in one product, in the codec's projected space.
        """
        reviews = [review for paper in papers for review in paper]
        rows = [r for group in reviews for r in group]
        if not rows or not len(query):
            zero = {r: 0.0 for r in rows}
            return LateScores(dict(zero), dict(zero), dict(zero))
        sims = self.cosines(query, rows)
        counts = np.diff(self.offsets)[rows]

        def starts(sizes) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(sizes)[:-1]])

        # (query tokens, units): the best cosine of each query token within each passage, review, paper
        per_passage = np.maximum.reduceat(sims, starts(counts), axis=1)
        sizes = np.array([len(g) for g in reviews])
        per_review = np.maximum.reduceat(per_passage, starts(sizes), axis=1)
        per_paper = np.maximum.reduceat(per_review, starts([len(p) for p in papers]), axis=1)
        paper_rows = [sum(len(g) for g in p) for p in papers]
        return LateScores(
            paper=dict(zip(rows, np.repeat(per_paper.mean(axis=0), paper_rows).tolist())),
            review=dict(zip(rows, np.repeat(per_review.mean(axis=0), sizes).tolist())),
            passage=dict(zip(rows, per_passage.mean(axis=0).tolist())),
        )

    @classmethod
    def from_encoded(cls, codec: TokenCodec, fitted_tokens: int, encoded: list[Encoded]) -> "TokenStore":
        """A store of `encoded` passages, row i = encoded[i]; empties `encoded` as it copies, so the
        codes are in memory once, not twice (a build's largest array: 166 MB at 10,000 passages)."""
        offsets = np.zeros(len(encoded) + 1, np.int64)
        offsets[1:] = np.cumsum([len(e.scales) for e in encoded])
        codes = np.zeros((offsets[-1], codec.code_width), np.uint8 if codec.bits == 4 else np.int8)
        scales = np.zeros(offsets[-1], np.float16)
        for i in range(len(encoded)):
            codes[offsets[i] : offsets[i + 1]], scales[offsets[i] : offsets[i + 1]] = encoded[i].codes, encoded[i].scales
            encoded[i] = None
        return cls(codec, fitted_tokens, codes, scales, offsets)

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
        return self.fitted_tokens < FIT_TOKENS and total_tokens >= REFIT_GROWTH * max(self.fitted_tokens, 1)

    def save(self, folder: Path) -> None:
        """Write arrays as .npy (no pickle) and the codec's settings as JSON into `folder`."""
        import json

        folder.mkdir(parents=True, exist_ok=True)
        for name, array in ((CODES, self.codes), (SCALES, self.scales), (OFFSETS, self.offsets),
                            (MEAN, self.codec.mean), (BASIS, self.codec.basis)):
            np.save(folder / name, array, allow_pickle=False)
        np.save(folder / CODE_BLOCKS, block_digests(folder / CODES), allow_pickle=False)
        info = {"bits": self.codec.bits, "dim": self.codec.dim, "fitted_tokens": self.fitted_tokens, "rule": TOKEN_RULE}
        (folder / INFO).write_text(json.dumps(info), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, damaged: Callable[[str], Exception] | None = None) -> "TokenStore":
        """Read a store written by `save`; raises ValueError or OSError when it is damaged.

        With `damaged` (for a generation not verified as a whole, whose other
        files the index checks as it reads them), each passage's codes are
        checked against their block digests the first time they are scored; a
        mismatch raises `damaged(message)`.
        """
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
        check = None
        if damaged is not None and (folder / CODE_BLOCKS).exists():
            check = BlockCheck(folder / CODES, np.load(folder / CODE_BLOCKS, allow_pickle=False), damaged)
        _check_numbers(codec, np.asarray(arrays[SCALES]))
        return cls(codec, int(info["fitted_tokens"]), arrays[CODES], arrays[SCALES], offsets, check)


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


Embed = Callable[[list[int]], Iterator[tuple[list[int], list[np.ndarray]]]]


def build_store(
    keys: list[str],
    embed: Embed,
    old: TokenStore | None,
    old_rows: dict[str, int],
    must_embed: set[int],
    new_tokens: Callable[[list[int]], int],
    on_plan: Callable[[int], None] | None = None,
) -> tuple[TokenStore, int]:
    """The token store for passages `keys` (row order) and how many passages were embedded.

    Rows in `must_embed` (their vectors are needed anyway) and rows whose key is
    not in `old_rows` are embedded; the rest reuse their stored codes from `old`.
    `embed(rows)` yields, batch by batch, rows and their token states (the
    caller keeps the vectors of the same pass). States are encoded as they come,
    so what is held in float32 is bounded by the codec's sample: without an old
    store, or once the index outgrows what its codec was fitted on
    (`needs_refit`, judged with `new_tokens(rows)`, an estimate of the tokens of
    rows to embed), the codec is fitted on the first FIT_TOKENS tokens in a fixed
    random order (on all of them in row order when they are fewer): of every
    passage, embedded, without an old store; else of the new states and the old
    codes decoded (`_refit_from_codes`), and everything is encoded with it.
    `on_plan(n)` is told how many passages will be embedded before the first is.
    """
    reuse = {i: old_rows[k] for i, k in enumerate(keys) if old is not None and k in old_rows and i not in must_embed}
    todo = [i for i in range(len(keys)) if i not in reuse]
    if old is not None and old.needs_refit(new_tokens(todo) + sum(int(old.offsets[j + 1] - old.offsets[j]) for j in reuse.values())):
        return _refit_from_codes(keys, embed, old, reuse, todo, new_tokens, on_plan), len(todo)
    refit = old is None
    if refit:
        reuse = {}
        # A fixed pseudo-random order, so the codec's sample covers the whole corpus, not its first weeks.
        todo = sorted(range(len(keys)), key=lambda i: hashlib.blake2b(keys[i].encode(), digest_size=8).digest())
    encoded: list[Encoded | None] = [old.encoded(reuse[i]) if i in reuse else None for i in range(len(keys))]
    codec, fitted = (None, 0) if refit else (old.codec, old.fitted_tokens)
    if on_plan:
        on_plan(len(todo))
    held: dict[int, np.ndarray] = {}
    held_tokens = 0
    for rows, states in embed(todo):
        if codec is not None:
            for i, st in zip(rows, states):
                encoded[i] = codec.encode(st)
            continue
        held.update((i, st.astype(np.float16)) for i, st in zip(rows, states))  # half the memory; codes are 4-bit
        held_tokens += sum(len(st) for st in states)
        if held_tokens >= FIT_TOKENS:
            codec, fitted = _fit_and_encode(held, encoded)
            held = {}
    if codec is None:
        if not held:  # an empty index has nothing to fit on; the next build fits
            return TokenStore.from_encoded(TokenCodec(np.zeros(1, np.float32), np.eye(1, dtype=np.float32)), 0, []), 0
        codec, fitted = _fit_and_encode(held, encoded)
    return TokenStore.from_encoded(codec, fitted, encoded), len(todo)


def _refit_from_codes(keys: list[str], embed: Embed, old: TokenStore, reuse: dict[int, int], todo: list[int],
                      new_tokens: Callable[[list[int]], int], on_plan: Callable[[int], None] | None) -> TokenStore:
    """A store with a codec refitted for a grown index, embedding only the rows in `todo`: the
    stored codes of the others, decoded, stand in for their states, in the fit and when encoded
    again with the new codec, so no passage is embedded twice over the life of an index (#22).

    The fit takes the first FIT_TOKENS tokens in the same fixed pseudo-random order as a first
    build (`new_tokens` estimates the new rows' counts). New rows in that sample are embedded
    first and held until the fit; the rest are encoded as they come, so what is held in float32
    stays bounded by the sample, as in a first build."""
    def stored(i: int) -> int:
        return int(old.offsets[reuse[i] + 1] - old.offsets[reuse[i]])

    sample, counted = [], 0
    for i in sorted(range(len(keys)), key=lambda i: hashlib.blake2b(keys[i].encode(), digest_size=8).digest()):
        if counted >= FIT_TOKENS:
            break
        sample.append(i)
        counted += stored(i) if i in reuse else new_tokens([i])
    in_sample = set(sample)
    waiting = {i for i in todo if i in in_sample}
    if on_plan:
        on_plan(len(todo))
    encoded: list[Encoded | None] = [None] * len(keys)
    held: dict[int, np.ndarray] = {}
    codec: TokenCodec | None = None
    fitted = 0

    def fit() -> tuple[TokenCodec, int]:
        parts = {i: held[i] if i in held else old.states(reuse[i]) for i in sorted(sample)}
        return TokenCodec.fit_parts(parts.values()), sum(len(x) for x in parts.values())

    for rows, states in embed([i for i in todo if i in in_sample] + [i for i in todo if i not in in_sample]):
        for i, st in zip(rows, states):
            if codec is None:
                held[i] = st.astype(np.float16)
            else:
                encoded[i] = codec.encode(st)
        if codec is None and waiting <= held.keys():
            codec, fitted = fit()
            for i, st in held.items():
                encoded[i] = codec.encode(st)
            held = {}
    if codec is None:  # nothing new to embed
        codec, fitted = fit()
    for i, j in reuse.items():
        encoded[i] = codec.encode(old.states(j))
    return TokenStore.from_encoded(codec, fitted, encoded)


def _fit_and_encode(held: dict[int, np.ndarray], encoded: list) -> tuple[TokenCodec, int]:
    """Fit a codec on the held states (in row order) and encode them into `encoded`; returns it and
    the number of tokens it was fitted on."""
    rows = sorted(held)
    codec = TokenCodec.fit_parts(held[i] for i in rows)
    for i in rows:
        encoded[i] = codec.encode(held[i])
    return codec, sum(len(held[i]) for i in rows)
