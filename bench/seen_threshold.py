"""How well `seen`'s title-cosine threshold (seen.SIMILAR_MIN) separates papers, on every title in the notes.

    python bench/seen_threshold.py                  # builds a throwaway index of seeds + both labelled sets
    python bench/seen_threshold.py --index DIR      # an index already built

Two lists of titles in bench/data/seen_titles.json: papers the notes do not
review (their best cosine against the notes' titles must stay below the
threshold) and rewordings of reviewed papers (theirs should reach it). For
each it prints the best cosine, the title it falls on, and whether the text
tiers (exact, short name, prefix, fuzzy) already match, then the margin:
the highest absent score against the lowest reworded ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from search.indexing.build import build_index  # noqa: E402
from search.model.encoders import load_encoder  # noqa: E402
from search.rank.seen import SIMILAR_MIN, _by_title, _title_similarity, topics  # noqa: E402
from search.store.index import open_index  # noqa: E402

SHARED = ROOT.parent / "shared"
ROOTS = [ROOT / "seeds", SHARED / "dev-corpus" / "weeks", SHARED / "dev-corpus-2" / "weeks"]


def report(index_dir: Path) -> None:
    titles = json.loads((ROOT / "bench" / "data" / "seen_titles.json").read_text(encoding="utf-8"))
    with open_index(index_dir) as idx:
        encoder = load_encoder(idx.info.model_id)
        all_topics = topics(idx.passages())
        print(f"{len(all_topics)} titles in the notes; threshold {SIMILAR_MIN}")
        best: dict[str, list[float]] = {}
        for kind in ("absent", "reworded"):
            for query in titles[kind]:
                cosines = _title_similarity(query, all_topics, encoder)
                top = int(np.argmax(cosines))
                text = "text tier" if _by_title(query, all_topics) else ""
                best.setdefault(kind, []).append(float(cosines[top]))
                print(f"{kind:8} {cosines[top]:.3f} {text:9} {query[:55]:55} -> {all_topics[top].title[:45]}")
    absent, reworded = best["absent"], best["reworded"]
    print(f"absent: highest {max(absent):.3f} ({sum(s >= SIMILAR_MIN for s in absent)} of {len(absent)} at or above)")
    print(f"reworded: {min(reworded):.3f}-{max(reworded):.3f} ({sum(s >= SIMILAR_MIN for s in reworded)} of {len(reworded)} at or above)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="an index of the notes (default: build one of seeds and both labelled sets)")
    args = ap.parse_args()
    if args.index:
        report(args.index)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_index([r for r in ROOTS if r.exists()], Path(tmp) / "index", load_encoder())
        report(Path(tmp) / "index")


if __name__ == "__main__":
    main()
