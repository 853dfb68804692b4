"""A small deterministic encoder for fast tests: hashed character trigrams, no model."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


class FakeEncoder:
    """Implements search.model.protocol.Encoder; texts sharing trigrams get similar vectors."""

    model_id = "fake/trigram-64"
    dim = 64

    def __init__(self):
        self.embedded: list[str] = []  # every passage text it was asked to embed, in order
        self.token_embedded: list[str] = []  # every passage text whose token states it computed

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        t = f"  {text.lower()}  "
        for i in range(len(t) - 2):
            h = int.from_bytes(hashlib.blake2b(t[i : i + 3].encode(), digest_size=4).digest(), "little")
            v[h % self.dim] += 1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_passages(self, texts: Sequence[str], progress=None) -> np.ndarray:
        self.embedded.extend(texts)
        out = np.vstack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        if progress:
            progress(len(texts))
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    def _tokens(self, text: str) -> np.ndarray:
        """One token per word: that word's trigram vector (deterministic, unit rows)."""
        words = text.split() or [text]
        return np.vstack([self._vector(w) for w in words]).astype(np.float32)

    def embed_passages_and_tokens(self, texts: Sequence[str], progress=None) -> tuple[np.ndarray, list[np.ndarray]]:
        self.token_embedded.extend(texts)
        return self.embed_passages(texts, progress), [self._tokens(t) for t in texts]

    def embed_query_tokens(self, text: str) -> np.ndarray:
        return self._tokens(text)

    def embed_query_and_tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        return self._vector(text), self._tokens(text)
