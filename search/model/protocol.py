"""What every encoder provides, and the e5 constants: imports nothing of the package,
so the encoders, the converter and the query encoder can all build on it.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

DEFAULT_MODEL = "intfloat/multilingual-e5-small"
E5_PREFIXES = {"query": "query: ", "passage": "passage: "}

Progress = Callable[[int], None]


class Encoder(Protocol):
    """What the indexer and the query path need from a model."""

    model_id: str
    dim: int

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text` as a passage (prefix and special tokens included)."""

    def embed_passages(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """(n, dim) float32 unit vectors; `progress(k)` is called as each batch of k finishes."""

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32 unit vector for a search query."""

    def embed_passages_and_tokens(self, texts: Sequence[str], progress: Progress | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """`embed_passages` and, per text, the (tokens, dim) unit rows that count for MaxSim, in one pass."""

    def embed_query_tokens(self, text: str) -> np.ndarray:
        """(tokens, dim) unit rows of a query's tokens that count for MaxSim."""

    def embed_query_and_tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """`embed_query_tokens` and a query vector from the same pass, for late ranking that needs both."""
