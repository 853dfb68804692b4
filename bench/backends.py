"""The same labelled queries through each storage backend, and an ingest/query sketch on Qdrant Edge.

    python bench/backends.py                     # nDCG@10 and warm search p50 per backend, both labelled sets
    python bench/backends.py --synthetic 100000  # Qdrant Edge: upsert, disk, reopen and late-style queries at N points

Build the indexes first (README, "Quality and speed" and "Backends"): /tmp/dev-index and
/tmp/dev2-index locally, and with the same notes qdrant:/tmp/qdrant-dev1 and qdrant:/tmp/qdrant-dev2
(embedded). The qdrant-client path (the code a server is reached by) is built here, in process,
in qdrant-client's in-memory local mode, from the same notes with the default model: its
latency is that pure-Python mode's, not a server's.
Latency is `Searcher.search` in process with the query embedded beforehand, so it measures
the backend and the ranking, not the model: the median over three passes of all queries.

The synthetic sketch writes points shaped as search/qdrant/index.py writes them (dense 384-d; a passage
multivector of `--tokens` unit rows in float16; a sparse BM25 vector of 30 terms), with one
review point per 4 passages and one paper point per 3 reviews carrying their passages'
tokens, then times the calls a late query makes: dense and BM25 candidate lists of 1000
over the whole shard, and the three MaxSim levels for a pool of 400 of them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from search.backends import open_backend  # noqa: E402
from search.rank.evaluate import evaluate, read_queries  # noqa: E402
from search.rank.request import SearchRequest  # noqa: E402
from search.rank.searcher import Searcher  # noqa: E402

SHARED = ROOT.parent / "shared"
WEEKS = {"dev-corpus": [SHARED / "dev-corpus" / "weeks", ROOT / "seeds"],
         "dev-corpus-2": [SHARED / "dev-corpus-2" / "weeks", SHARED / "dev-corpus" / "weeks", ROOT / "seeds"]}
SETS = [("dev-corpus", {"local": "/tmp/dev-index", "qdrant": "qdrant:/tmp/qdrant-dev1",
                        "qdrant-client": "qdrant-memory:dev1"}),
        ("dev-corpus-2", {"local": "/tmp/dev2-index", "qdrant": "qdrant:/tmp/qdrant-dev2",
                          "qdrant-client": "qdrant-memory:dev2"})]


def labelled() -> None:
    from search.indexing.build import build_index
    from search.model.encoders import load_encoder

    for name, locations in SETS:
        queries = read_queries(SHARED / name / "queries.jsonl")
        for kind, where in locations.items():
            if where.startswith("qdrant-memory:"):
                build_index(WEEKS[name], where, load_encoder(None))
            with open_backend(where) as index:
                searcher = Searcher(index)
                summary = evaluate(searcher, queries).summary()
                ndcg, paraphrase = summary["all"]["ndcg"], summary["paraphrase"]["ndcg"]
                requests = [SearchRequest.parse(q.query, k=10) for q in queries]
                embedded = [searcher.embed(r) for r in requests]
                passes = []
                for _ in range(3):
                    times = []
                    for r, e in zip(requests, embedded):
                        started = time.perf_counter()
                        searcher.search(r, e)
                        times.append(time.perf_counter() - started)
                    passes.append(statistics.median(times))
            print(f"{name:13} {kind:13} nDCG@10 {ndcg:.3f} (paraphrase {paraphrase:.3f})   search p50 {statistics.median(passes) * 1000:6.1f} ms")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic(n: int, tokens: int, folder: Path) -> None:
    from qdrant_edge import EdgeShard

    from search.qdrant.embedded import EdgeEngine, _config
    from search.qdrant.index import BM25, DENSE, PAPER, REVIEW, TOKENS, NewPoint, Sparse, Where, _uuid

    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    engine = EdgeEngine(EdgeShard.create(str(folder), _config(384)))
    started = time.perf_counter()
    ids = [_uuid("synthetic", i) for i in range(n)]
    row_of = {pid: i for i, pid in enumerate(ids)}
    review_of = np.arange(n) // 4
    paper_of = review_of // 3
    for a in range(0, n, 256):
        engine.upsert([NewPoint(ids[i], {"kind": "passage", "reviewer": f"r{i % 8}"}, {
            DENSE: unit(rng.standard_normal(384)).tolist(),
            TOKENS: unit(rng.standard_normal((tokens, 384))).astype(np.float16).astype(np.float32).tolist(),
            BM25: Sparse(rng.choice(50_000, 30, replace=False).tolist(), rng.random(30).tolist())})
            for i in range(a, min(n, a + 256))])
    for kind, group, size in (("review", review_of, 4), ("paper", paper_of, 12)):
        for g in range(int(group.max()) + 1):
            states = unit(rng.standard_normal((tokens * size, 384))).astype(np.float16).astype(np.float32)
            engine.upsert([NewPoint(_uuid(kind, g), {"kind": kind}, {kind: states.tolist()})])
    engine.shard.flush()
    upsert = time.perf_counter() - started
    started = time.perf_counter()
    engine.shard.optimize()
    optimize = time.perf_counter() - started
    engine.close()
    disk = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
    started = time.perf_counter()
    engine = EdgeEngine(EdgeShard.load(str(folder)))
    reopen = time.perf_counter() - started
    assert sum(engine.count(Where(k)) for k in ("passage", "review", "paper")) == n + int(review_of.max()) + int(paper_of.max()) + 2

    times = []
    for _ in range(20):  # the calls QdrantIndex makes for one late query
        q = unit(rng.standard_normal((16, 384))).tolist()
        started = time.perf_counter()
        dense = engine.query(DENSE, unit(rng.standard_normal(384)).tolist(), 1000, Where("passage"))
        engine.query(BM25, Sparse(rng.choice(50_000, 8, replace=False).tolist(), [1.0] * 8), 1000, Where("passage"))
        pool = [pid for pid, _ in dense[:400]]
        rows = [row_of[p] for p in pool[:50]]  # the reviews and papers of the pool's head
        engine.query(TOKENS, q, 400, Where("passage", frozenset(pool)))
        engine.query(REVIEW, q, 100, Where("review", frozenset(_uuid("review", int(review_of[r])) for r in rows)))
        engine.query(PAPER, q, 40, Where("paper", frozenset(_uuid("paper", int(paper_of[r])) for r in rows)))
        times.append(time.perf_counter() - started)
    engine.close()
    print(f"{n} passages x {tokens} tokens: upsert {upsert:.0f} s, optimize {optimize:.0f} s, "
          f"{disk / 2**30:.2f} GiB on disk, reopen {reopen:.2f} s, late-style query p50 {statistics.median(times) * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", type=int, help="points for the Qdrant Edge sketch instead of the labelled sets")
    ap.add_argument("--tokens", type=int, default=30, help="token states per synthetic passage")
    ap.add_argument("--folder", type=Path, default=Path("/tmp/qdrant-synthetic"))
    args = ap.parse_args()
    if args.synthetic:
        synthetic(args.synthetic, args.tokens, args.folder)
    else:
        labelled()


if __name__ == "__main__":
    main()
