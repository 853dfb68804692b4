"""Synthetic weeks of notes in the real format, as many as a test needs: for indexes past the sizes
where the store changes how it works (store.index.VERIFY_ON_OPEN_BYTES, rank.searcher.LATE_POOL)."""

from __future__ import annotations

import random
from pathlib import Path

SYLLABLES = "가나다라마바사아자차카타파하음성인식모델학습데이터잡음환경평가방법결과한계문제해결"
ENGLISH = ["attention", "decoder", "encoder", "whisper", "hallucination", "retrieval", "LoRA", "adapter", "benchmark",
           "token", "latency", "robust", "dataset", "fine-tuning", "contrastive", "diffusion", "prompt", "graph"]
REVIEWERS = ["박민경", "이영희", "김철수", "최지우", "정하늘", "한소라", "오준호", "서다인"]


def _word(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(ENGLISH)
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(" ".join(_word(rng) for _ in range(rng.randint(10, 16))) + "이다." for _ in range(sentences))


def write_weeks(folder: Path, weeks: int, topics: int = 4, reviews: int = 3, paragraphs: int = 4,
                sentences: int = 12, seed: int = 0) -> Path:
    """`weeks` files of `topics` papers with `reviews` reviews each, deterministic in `seed`; returns `folder`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for w in range(1, weeks + 1):
        lines = [f"# 📚 {w}주차", ""]
        for t in range(1, topics + 1):
            title = " ".join(rng.choice(ENGLISH).capitalize() for _ in range(3)) + f" {w}-{t}"
            lines += [f"### 주제 {t}: {title}", f"- **발표자**: {rng.choice(REVIEWERS)}", ""]
            for r in range(1, reviews + 1):
                lines += [f"### 리뷰 {r}", f"- **리뷰어**: {rng.choice(REVIEWERS)}", ""]
                for _ in range(paragraphs):
                    lines += [_paragraph(rng, sentences), ""]
                lines += ["---", ""]
        (folder / f"week{w}.md").write_text("\n".join(lines), encoding="utf-8")
    return folder
