"""Query token states from multilingual-e5-small without torch.

The default ranking compares a query's token states (the last hidden layer)
with passages' token states, and the one-shot CLI must answer in a fraction of
a second, so it cannot import torch (about 2 s) or load ``tokenizer.json``
with the ``tokenizers`` library (over 0.5 s: 250k pieces and a giant regex).
:class:`QueryTokenEncoder` runs the model on the converted folder from
:func:`search.model.convert.ensure_model` with numpy instead:

* Tokenizing reproduces that folder's ``tokenizer.json`` (special-token
  literals, the ``Precompiled`` per-codepoint map with its grapheme quirk,
  space collapsing, ``Metaspace``, isolating characters that have no piece,
  Unigram best path with the same tie-breaking), so token ids equal the
  sentence-transformers tokenizer's. It reads a compact table file,
  ``query_tokenizer.safetensors``, written once beside the weights and
  memory-mapped like them: 64-bit hashes of the pieces, sorted, looked up
  with ``searchsorted`` instead of building a 250k-entry dict (about 0.2 s)
  in every process.
* The forward pass reads ``model.safetensors`` through a read-only memory
  map: only the rows of the word-embedding table the query uses are touched.
  The layer matrices come from ``query_layers.safetensors``, the same weights
  transposed and with query, key and value side by side (:func:`write_layers`),
  also memory-mapped and used in place, never copied.

onnxruntime over an encoder-only export was measured too: 11 ms per short
query once loaded (this module: about 19 ms today), but importing it and creating
the session cost about 0.35 s of CPU per process, more than a whole query.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .protocol import E5_PREFIXES
from ..errors import ModelError

QUERY_PREFIX = E5_PREFIXES["query"]
MAX_TOKENS = 512
TABLES = "query_tokenizer.safetensors"
LAYERS = "query_layers.safetensors"

_META = "\u2581"
# Precompiled replaces a whole grapheme cluster shorter than this many UTF-8 bytes by its first codepoint's mapping.
_CLUSTER_BYTES = 6
_DTYPES = {"F32": "<f4", "U64": "<u8", "I32": "<i4", "U32": "<u4", "U8": "u1"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def piece_hashes(pieces: list[bytes]) -> np.ndarray:
    """64-bit hashes of UTF-8 strings, the lookup key of the table file."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(p, digest_size=8).digest(), "little") for p in pieces),
        dtype=np.uint64,
        count=len(pieces),
    )


def write_tables(path: Path, pieces: list[str], scores: np.ndarray, norm: dict[int, str], specials: dict[str, int]) -> None:
    """Write the tokenizer tables that :class:`QueryTokenEncoder` reads, atomically.

    ``pieces`` and ``scores`` are the Unigram vocabulary in id order, ``norm`` the
    per-codepoint normalisation map and ``specials`` the ids of ``bos``, ``eos``,
    ``unk`` and of every special-token literal (``literal:<s>`` ...).
    """
    encoded = [p.encode() for p in pieces]
    hashes = piece_hashes(encoded)
    order = np.argsort(hashes, kind="stable")
    if np.any(hashes[order][1:] == hashes[order][:-1]):
        raise ValueError("two tokenizer pieces share a 64-bit hash")  # never seen; lookups would be ambiguous
    offsets = np.zeros(len(encoded) + 1, dtype=np.uint32)
    offsets[1:] = np.cumsum([len(p) for p in encoded])
    norm_cp = np.array(sorted(norm), dtype=np.uint32)
    outs = [norm[int(cp)] for cp in norm_cp]
    norm_off = np.zeros(len(outs) + 1, dtype=np.uint32)
    norm_off[1:] = np.cumsum([len(o) for o in outs])
    single = np.array(sorted({ord(p) for p in pieces if len(p) == 1}), dtype=np.uint32)
    tables = {
        "hash": hashes[order],
        "hash_id": order.astype(np.int32),
        "score": np.asarray(scores, dtype=np.float32),
        "piece_offset": offsets,
        "piece_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "single_char": single,
        "norm_cp": norm_cp,
        "norm_offset": norm_off,
        "norm_out": np.array([ord(c) for o in outs for c in o], dtype=np.uint32),
    }
    _save(path, tables, {"specials": json.dumps(specials), "max_piece_chars": str(max(map(len, pieces)))})


def write_layers(model_dir: Path) -> None:
    """Write the layer matrices the forward pass multiplies by into ``model_dir / LAYERS``, atomically.

    They are ``model.safetensors``'s own weights, laid out for a query's few
    rows: transposed to (in, out), and query, key and value side by side so
    they are one product. Streaming the layer weights from memory dominates a
    query's pass (85 MB for 12 tokens), and OpenBLAS reads this layout about a
    fifth faster (docs/performance.md).
    """
    w = _SafeTensors(Path(model_dir) / "model.safetensors")
    layers = int(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])
    tensors = {}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        qkv = [p + f"attention.self.{m}" for m in ("query", "key", "value")]
        tensors[f"{i}.qkv"] = np.concatenate([w[n + ".weight"] for n in qkv]).T
        tensors[f"{i}.qkv_bias"] = np.concatenate([w[n + ".bias"] for n in qkv])
        for name, src in (("attention_out", "attention.output.dense"), ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense")):
            tensors[f"{i}.{name}"] = w[p + src + ".weight"].T
    _save(Path(model_dir) / LAYERS, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, {})


def _save(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save

    data = save(tensors, metadata=metadata or None)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # readers see no file or a whole one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Tokenizer:
    """The converted folder's ``tokenizer.json`` pipeline, for single texts, from the table file."""

    def __init__(self, path: Path):
        t = _SafeTensors(path)
        self._hash = t["hash"]
        self._hash_id = t["hash_id"]
        self._score = t["score"]
        self._offset = t["piece_offset"]
        self._bytes = t["piece_bytes"]
        self._single = t["single_char"]
        self._max_chars = int(t.metadata["max_piece_chars"])
        specials = json.loads(t.metadata["specials"])
        norm_cp, norm_off, norm_out = t["norm_cp"], t["norm_offset"].tolist(), t["norm_out"].tolist()
        self._norm = {
            cp: "".join(map(chr, norm_out[a:b])) for cp, a, b in zip(norm_cp.tolist(), norm_off[:-1], norm_off[1:])
        }
        self.bos, self.eos, self.unk = specials.pop("bos"), specials.pop("eos"), specials.pop("unk")
        self._literals = {name.removeprefix("literal:"): i for name, i in specials.items()}
        # Longest first: the added-vocabulary matcher prefers the longest literal at a position.
        self._literal_re = re.compile("|".join(map(re.escape, sorted(self._literals, key=len, reverse=True))))

    def piece(self, token_id: int) -> str:
        """The vocabulary piece of a token id (``▁`` marks a word start)."""
        return bytes(self._bytes[self._offset[token_id] : self._offset[token_id + 1]]).decode("utf-8")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with ``<s>`` and ``</s>``, untruncated.

        Lone surrogates (undecodable bytes in a command line) count as U+FFFD, which the map turns into a space.
        """
        text = _SURROGATE.sub("\ufffd", text)
        ids = [self.bos]
        start = 0
        for m in self._literal_re.finditer(text):
            ids += self._segment(text[start : m.start()], first=start == 0)
            ids.append(self._literals[m.group()])
            start = m.end()
        ids += self._segment(text[start:], first=start == 0)
        ids.append(self.eos)
        return ids

    def _segment(self, text: str, first: bool) -> list[int]:
        s = re.sub(" {2,}", " ", self._normalize(text)).replace(" ", _META)
        if first and s and not s.startswith(_META):
            s = _META + s
        ids: list[int] = []
        for word in re.split(f"(?={_META})", s):
            for part, known in self._isolate(word):
                ids += self._unigram(part) if known else [self.unk]
        return ids

    def _normalize(self, text: str) -> str:
        norm = self._norm
        if not any(ord(c) in norm for c in text[:-1]):
            return "".join(norm.get(ord(c), c) for c in text)
        import regex  # grapheme clusters are needed only here, and the import costs ~10 ms

        out = []
        for cluster in regex.findall(r"\X", text):
            head = norm.get(ord(cluster[0]))
            if len(cluster) > 1 and head is not None and len(cluster.encode()) < _CLUSTER_BYTES:
                out.append(head)
            else:
                out.append("".join(norm.get(ord(c), c) for c in cluster))
        return "".join(out)

    def _isolate(self, word: str) -> list[tuple[str, bool]]:
        """Split off each character that has no piece of its own (each becomes one ``<unk>``)."""
        if not word:
            return []
        cps = np.frombuffer(word.encode("utf-32-le"), dtype=np.uint32)
        at = np.minimum(np.searchsorted(self._single, cps), len(self._single) - 1)
        known = self._single[at] == cps
        if known.all():
            return [(word, True)]
        parts: list[tuple[str, bool]] = []
        run = ""
        for c, k in zip(word, known.tolist()):
            if k:
                run += c
                continue
            if run:
                parts.append((run, True))
                run = ""
            parts.append((c, False))
        if run:
            parts.append((run, True))
        return parts

    def _lookup(self, candidates: list[bytes]) -> list[int]:
        """Piece id of each candidate, or -1."""
        hashes = piece_hashes(candidates)
        at = np.minimum(np.searchsorted(self._hash, hashes), len(self._hash) - 1)
        ids = np.where(self._hash[at] == hashes, self._hash_id[at], -1).tolist()
        out = []
        for cand, i in zip(candidates, ids):
            # The hash only finds the candidate; the bytes decide.
            if i >= 0 and self._bytes[self._offset[i] : self._offset[i + 1]].tobytes() != cand:
                i = -1
            out.append(i)
        return out

    def _unigram(self, word: str) -> list[int]:
        """Best segmentation, as tokenizers' ``Unigram.encode_optimized``: a strictly better score wins a tie's first."""
        n = len(word)
        spans = [(i, e) for i in range(n) for e in range(i + 1, min(n, i + self._max_chars) + 1)]
        found = self._lookup([word[i:e].encode() for i, e in spans])
        # Python floats: tokenizers sums the f32 scores in f64. (Rows for -1 are skipped below.)
        piece_scores = self._score[found].tolist()
        best: list[float | None] = [0.0] + [None] * n
        back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
        for (i, e), piece, piece_score in zip(spans, found, piece_scores):
            if piece < 0 or best[i] is None:
                continue
            score = best[i] + piece_score
            if best[e] is None or score > best[e]:
                best[e], back[e] = score, (i, piece)
        ids = []
        e = n
        while e > 0:
            # Every character of a word has a piece of its own (see _isolate), so every position is reached.
            e, piece = back[e]
            ids.append(piece)
        return ids[::-1]


@dataclass(frozen=True)
class QueryTokens:
    """One query through the model.

    ``states`` rows follow ``ids``: ``<s>``, the tokens of ``query: `` (``n_prefix``
    of them), the query's own tokens, ``</s>``. ``special`` marks ``<s>`` and
    ``</s>``. ``vector`` is the mean of all rows, L2-normalised: the query's dense
    vector, as sentence-transformers pools e5. ``truncated`` is True when the
    text was cut to the model's 512 tokens.
    """

    ids: np.ndarray
    pieces: tuple[str, ...]  # the vocabulary piece of each id
    states: np.ndarray
    special: np.ndarray
    n_prefix: int
    vector: np.ndarray
    truncated: bool

    @property
    def content(self) -> np.ndarray:
        """The rows of the query's own tokens (no specials, no prefix)."""
        return self.states[1 + self.n_prefix : len(self.ids) - 1]


class _SafeTensors:
    """Read-only numpy views into a safetensors file, through one memory map."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            self._header = json.loads(f.read(size))
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._base = 8 + size
        end = max((e["data_offsets"][1] for k, e in self._header.items() if k != "__metadata__"), default=0)
        if self._base + end > len(self._map):
            raise ValueError(f"{path.name} is truncated")

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._header[name]
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        start, end = entry["data_offsets"]
        count = (end - start) // dtype.itemsize
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=self._base + start).reshape(entry["shape"])

    @property
    def metadata(self) -> dict[str, str]:
        return self._header.get("__metadata__", {})


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form: within 5e-4 of BERT's exact (erf) GELU, and a tenth of the numpy work.

    numpy has no erf; a polynomial for it took about 2 ms of a 20 ms query pass.
    The token states stay at cosine 0.99999 or more with sentence-transformers'
    exact ones (tests/model/test_query_encoder.py holds them to 0.999).
    """
    inner = x * x
    inner *= np.float32(0.044715)
    inner += 1
    inner *= x
    inner *= np.float32(np.sqrt(2 / np.pi))
    np.tanh(inner, out=inner)
    inner += 1
    inner *= x
    inner *= np.float32(0.5)
    return inner


class QueryTokenEncoder:
    """multilingual-e5-small's query side in numpy, over a folder from ``ensure_model``."""

    def __init__(self, model_dir: Path):
        """Load from ``model_dir``; a missing or damaged folder raises ``ModelError`` naming it."""
        model_dir = Path(model_dir)
        try:
            self._load(model_dir)
        except (OSError, ValueError, KeyError, struct.error) as e:
            raise ModelError(
                f"cannot load the query encoder from {model_dir}: {e}; delete the folder to convert it again"
            ) from e

    def _load(self, model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.dim = int(config["hidden_size"])
        self._heads = int(config["num_attention_heads"])
        self._layers = int(config["num_hidden_layers"])
        self._eps = float(config["layer_norm_eps"])
        self.max_tokens = min(MAX_TOKENS, int(config["max_position_embeddings"]))
        self._tokenizer = _Tokenizer(model_dir / TABLES)
        self._n_prefix = len(self._tokenizer.encode(QUERY_PREFIX.rstrip())) - 2
        self._w = _SafeTensors(model_dir / "model.safetensors")
        self._layer_w = _SafeTensors(model_dir / LAYERS)
        from threadpoolctl import ThreadpoolController

        self._blas = ThreadpoolController()

    def token_ids(self, text: str) -> tuple[list[int], bool]:
        """The ids the model sees for query ``text`` (prefix and specials included), and whether they were cut."""
        ids = self._tokenizer.encode(QUERY_PREFIX + text)
        if len(ids) <= self.max_tokens:
            return ids, False
        return ids[: self.max_tokens - 1] + [self._tokenizer.eos], True

    def encode(self, text: str) -> QueryTokens:
        """Token states and the pooled unit vector of query ``text``."""
        ids, truncated = self.token_ids(text)
        # One BLAS thread: these matrices are small, and OpenBLAS's spinning workers made a
        # 12-token query take 1.7 s instead of 0.08 s on a busy 2-core machine (measured).
        with self._blas.limit(limits=1, user_api="blas"):
            states = self._forward(np.array(ids, dtype=np.int64))
        pooled = states.mean(0)
        special = np.isin(ids, [self._tokenizer.bos, self._tokenizer.eos])
        return QueryTokens(
            ids=np.array(ids, dtype=np.int32),
            pieces=tuple(self._tokenizer.piece(i) for i in ids),
            states=states,
            special=special,
            n_prefix=self._n_prefix,
            vector=(pooled / np.linalg.norm(pooled)).astype(np.float32),
            truncated=truncated,
        )

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        w, lw, n = self._w, self._layer_w, len(ids)
        hd = self.dim // self._heads
        scale = np.float32(1 / np.sqrt(hd))

        def norm(name: str, h: np.ndarray) -> np.ndarray:
            return _layer_norm(h, w[name + ".weight"], w[name + ".bias"], self._eps)

        x = w["embeddings.word_embeddings.weight"][ids]  # gathers n rows; the table stays on disk
        x = x + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
        x = norm("embeddings.LayerNorm", x)
        for i in range(self._layers):
            p = f"encoder.layer.{i}."
            qkv = x @ lw[f"{i}.qkv"] + lw[f"{i}.qkv_bias"]
            q, k, v = qkv.reshape(n, 3, self._heads, hd).transpose(1, 2, 0, 3)
            scores = q @ k.transpose(0, 2, 1) * scale
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = norm(p + "attention.output.LayerNorm", x + context @ lw[f"{i}.attention_out"] + w[p + "attention.output.dense.bias"])
            hidden = _gelu(x @ lw[f"{i}.ffn_in"] + w[p + "intermediate.dense.bias"])
            x = norm(p + "output.LayerNorm", x + hidden @ lw[f"{i}.ffn_out"] + w[p + "output.dense.bias"])
        return np.ascontiguousarray(x, dtype=np.float32)
