"""The MaxSim pool of large indexes (ranking.LATE_POOL): what forcing a smaller pool costs, and query time.

    python bench/late_pool.py                         # nDCG@10 on both labelled sets, pool forced to 150/100/60/40
    python bench/late_pool.py --time /tmp/big-index   # warm late queries in process on a large index
    python bench/late_pool.py --time /tmp/big-index --pool 100000   # ... scoring every row

The labelled sets' indexes have 59 and 186 passages, under LATE_POOL, so
every row is scored there; forcing a smaller pool shows how much of the
dense + BM25 head MaxSim needs to see. Build the indexes first, as README
"Retrieval quality" says (/tmp/dev-index, /tmp/dev2-index). `--time` runs
bench/serve_latency.py's queries through SearchService (no HTTP): three
passes after a warm-up, p50 and p90.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from search.rank import searcher as ranking  # noqa: E402
from search.rank.evaluate import evaluate, read_queries  # noqa: E402
from search.rank.searcher import Searcher  # noqa: E402
from search.store.index import open_index  # noqa: E402

SHARED = ROOT.parent / "shared"
SETS = [("dev-corpus", Path("/tmp/dev-index")), ("dev-corpus-2", Path("/tmp/dev2-index"))]


def quality(pools: list[int | None]) -> None:
    default = ranking.LATE_POOL
    for name, index_dir in SETS:
        queries = read_queries(SHARED / name / "queries.jsonl")
        with open_index(index_dir) as idx:
            searcher = Searcher(idx)
            for pool in pools:
                ranking.LATE_POOL = default if pool is None else pool
                all_ = evaluate(searcher, queries).summary()["all"]
                label = f"every row ({idx.size})" if pool is None else f"pool {pool}"
                print(f"{name:13} {label:17} nDCG@10 {all_['ndcg']:.3f}")
    ranking.LATE_POOL = default


def timing(index_dir: Path) -> None:
    from serve_latency import QUERIES

    from search.rank.request import SearchRequest
    from search.service import SearchService

    service = SearchService(index_dir)
    try:
        for q in QUERIES[:3]:
            service.search(SearchRequest.parse(q))
        seconds = []
        for _ in range(3):
            for q in QUERIES:
                start = time.perf_counter()
                service.search(SearchRequest.parse(q))
                seconds.append(time.perf_counter() - start)
        size = service.status()["passages"]
    finally:
        service.close()
    print(f"{index_dir} ({size} passages, LATE_POOL {ranking.LATE_POOL}): late p50 {np.median(seconds) * 1e3:.1f} ms, "
          f"p90 {np.percentile(seconds, 90) * 1e3:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=Path, metavar="INDEX", help="time warm late queries on this index instead")
    ap.add_argument("--pool", type=int, help="with --time: the pool size to time (default: ranking.LATE_POOL)")
    args = ap.parse_args()
    if args.pool:
        ranking.LATE_POOL = args.pool
    if args.time:
        timing(args.time)
    else:
        quality([None, 150, 100, 60, 40])


if __name__ == "__main__":
    main()
