"""Late interaction: score a passage by MaxSim over e5 token states.

MaxSim (ColBERT's late interaction): for each query token, the best cosine
against the passage's tokens, averaged over the query tokens. Token states are
the last hidden layer of the same model that makes the passage vectors, read
with the model's `query: ` / `passage: ` prefixes (model/tokens.py says which
count). Scored here at three levels (paper, review, passage) from the stored
tokens (the backend's `late_scores`, three levels); the weights below say how much each of late mode's
rankings counts in its fusion (`fuse`, at the end).
"""

from __future__ import annotations

import numpy as np

from ..storage import LateScores
from .fusion import rrf

# The MaxSim ranking counts this many times the BM25 ranking in the fusion (RRF,
# k = 60). Replayed with the tokens as stored (codec), `bench/late_interaction.py
# --only ideas`, nDCG@10 all for x1 / 1.5 / 2 / 2.5 / 3 / 4 / 5 / 8: dev-corpus
# 0.946 / 0.949 / 0.951 / 0.954 / 0.954 / 0.957 / 0.957 / 0.957; dev-corpus-2
# 0.820 / 0.834 / 0.830 / 0.840 / 0.843 / 0.844 / 0.839 / 0.832 (paraphrase
# 0.654 at x2, 0.740 at x4). Each set alone picks x4, which raises the other.
# (x2 had been chosen on float32 tokens, where x2 and x3 tied.)
MAXSIM_WEIGHT = 4.0
# A third ranking: MaxSim against all tokens of the paper's reviews (a review
# inherits its paper's score; its own MaxSim breaks ties). Reviewers of one
# paper describe the same method in different words, so a paraphrase one
# review misses may land in another's. `bench/late_interaction.py --only
# ideas2`, nDCG@10 all for x0 / 0.25 / 0.5 / 1: dev-corpus 0.957 / 0.958 /
# 0.958 / 0.958; dev-corpus-2 0.844 / 0.848 / 0.849 / 0.845 (paraphrase 0.740
# / 0.753 / 0.754 / 0.735). Chosen on dev-corpus-2; dev-corpus ties (3 queries
# better, none worse).
PAPER_WEIGHT = 0.5
# A fourth ranking, the lexical side of the third: BM25 with all of a paper's
# passages as one document (store.PAPER_LEXICAL), a row inheriting its paper's
# score, its passage's BM25 breaking ties. It lifts the reviews of a paper whose
# other reviews use the query's words. On top of PAPER_WEIGHT, `bench/
# late_interaction.py --only ideas2` (idea 5; docs/ranking.md, "Ideas II"), nDCG@10 all
# for x0 / 0.125 / 0.25 / 0.5 / 1: dev-corpus 0.958 / 0.958 / 0.958 / 0.958 /
# 0.955; dev-corpus-2 0.849 / 0.852 / 0.853 / 0.851 / 0.850 (paraphrase 0.754 /
# 0.754 / 0.757 / 0.746 / 0.714). Chosen on dev-corpus-2 (6 queries better,
# none worse); dev-corpus is unchanged. dev-corpus alone picks x0.5 (one query
# better), which confirms on dev-corpus-2 (0.851) but drops its paraphrase
# queries below 0.75.
PAPER_LEXICAL_WEIGHT = 0.25


def maxsim(query: np.ndarray, passage: np.ndarray) -> float:
    """Mean over query tokens of the best cosine against the passage's tokens (unit rows in, both)."""
    if not len(query) or not len(passage):
        return 0.0
    return float((query @ passage.T).max(axis=1).mean())


def fuse(ms: LateScores, lexical: dict[int, float], paper_lexical: dict[int, float]) -> dict[int, float]:
    """Late mode's order: the review-MaxSim, paper-MaxSim and paper-BM25 rankings and the passage BM25
    ranking, fused by weighted RRF (the weights above).

    The review ranking breaks ties by the passage's own MaxSim; the paper ranking
    breaks its ties (a paper's reviews) the same way, the paper BM25 ranking by
    the passage's BM25. Both paper rankings rank the rows MaxSim scored.
    """
    review = ms.review
    order = sorted(review, key=lambda r: (-review[r], -ms.passage[r], r))
    by_paper = sorted(review, key=lambda r: (-ms.paper[r], -review[r], -ms.passage[r], r))
    by_paper_bm25 = sorted(paper_lexical, key=lambda r: (-paper_lexical[r], -lexical.get(r, 0.0), r))
    return rrf([{r: -i for i, r in enumerate(ranked)} for ranked in (order, by_paper, by_paper_bm25)] + [lexical],
               weights=[MAXSIM_WEIGHT, PAPER_WEIGHT, PAPER_LEXICAL_WEIGHT, 1.0])
