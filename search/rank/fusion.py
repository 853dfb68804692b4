"""Reciprocal rank fusion: several rankings into one, with no score calibration between
their very different scales (cosines bunch near 0.85, BM25 runs to 20)."""

from __future__ import annotations

RRF_K = 60  # the constant from Cormack et al. (2009); damps the weight of rank 1 vs rank 2


def rrf(rankings: list[dict[int, float]], k: int = RRF_K, weights: list[float] | None = None) -> dict[int, float]:
    """Reciprocal rank fusion of several {row: score} rankings, each optionally weighted."""
    fused: dict[int, float] = {}
    for scores, w in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, row in enumerate(sorted(scores, key=lambda r: (-scores[r], r)), start=1):
            fused[row] = fused.get(row, 0.0) + w / (k + rank)
    return fused
