"""Wall time of query segmentation for long queries without spaces (issue #10.9).

    python bench/query_segmentation.py

Segments Hangul runs of 1,000 to 40,000 syllables against the vocabulary of
the labelled corpora (or a small built-in one where ../shared is absent) and
exits non-zero if 40,000 syllables take 2 s or more: the old greedy matcher
was cubic (4,000 syllables 4.25 s, 40,000 never finished).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.notes.terms import QuerySegmenter, passage_terms  # noqa: E402
from search.notes.reader import read_reviews  # noqa: E402

BOUND_SECONDS = 2.0


def vocabulary() -> set[str]:
    folders = [d for d in (ROOT.parent / "shared" / "dev-corpus" / "weeks", ROOT.parent / "shared" / "dev-corpus-2" / "weeks") if d.is_dir()]
    if not folders:
        return {"문제", "해결", "강화", "학습", "데이터", "위스퍼", "환각"}
    return {t for terms in passage_terms([r.body for r in read_reviews(folders).reviews]) for t in terms}


def main() -> int:
    vocab = vocabulary()
    segmenter = QuerySegmenter(vocab)
    rng = random.Random(0)
    pieces = sorted(w for w in vocab if "\uac00" <= w[0] <= "\ud7a3") + ["를", "은", "했다"]
    print(f"vocabulary: {len(vocab)} terms")
    seconds = 0.0
    for n in (1_000, 5_000, 40_000):
        query = "".join(rng.choice(pieces) for _ in range(n))[:n]
        started = time.perf_counter()
        terms = segmenter.terms(query)
        seconds = time.perf_counter() - started
        print(f"{n:>6} syllables: {len(terms):>6} terms in {seconds * 1000:.1f} ms")
    if seconds >= BOUND_SECONDS:
        print(f"FAIL: 40,000 syllables took {seconds:.2f} s (bound {BOUND_SECONDS} s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
