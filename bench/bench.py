"""End-to-end benchmark on the dev corpus: index throughput, cold query time, peak memory.

    python bench/bench.py                      # dev corpus + seed week, default model
    python bench/bench.py --runs 15 --out bench/results/bench.json

Each measurement runs `review-search` as a separate process, the way people
use it, and reports medians (this machine's timings are noisy):

* index: a full build (`index --full`) of the corpus; passages/s counts the
  passages embedded divided by the whole command's wall time, so it includes
  start-up, loading the model, reading, Kiwi and writing the index; embedding
  passages/s counts the embedding step alone.
* cold query: `review-search query` from process start to exit, with the
  index already built, over varied Korean and English queries.
* peak memory: the largest resident set size of those processes.
* warm embedding: passages/s of the default model's passage encoder in this
  process, model already loaded (second pass over the corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "dev-corpus" / "weeks"
QUERIES = [
    "whisper hallucination 해결",
    "MoE 라우팅 top-2 expert load balancing",
    "두 문장을 미리 벡터로 만들어 두고 비교하는 방법",
    "Why is attention scaled by the square root of the key dimension?",
    "박민경이 Constitutional AI에 대해 우려한 점",
    "강화학습 보상 설계",
]


def python(args: list[str], cwd: Path = ROOT) -> tuple[float, int, float, str]:
    """Wall seconds, peak RSS in MiB, CPU seconds (user + system) and stdout of one `python ARGS` process,
    run in `cwd` with that folder's `search` package first on the path (another checkout, to compare)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(cwd)}
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"python {' '.join(args)} failed: {err.read().strip()}")
        return seconds, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime, out.read()


def run(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in MiB and stdout of one `review-search` process."""
    seconds, rss, _, out = python(["-m", "search", *args])
    return seconds, rss, out


def report(result: dict, out: Path | None) -> None:
    """Print the results as JSON, and write them to `out` if given."""
    print(json.dumps(result, indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def warm_embedding(paths: list[str]) -> float:
    """Passages per second of the default encoder once loaded, over the corpus's real passages."""
    sys.path.insert(0, str(ROOT))
    from search.notes.chunking import chunk_review
    from search.model.encoders import load_encoder
    from search.notes.reader import read_reviews

    encoder = load_encoder()
    texts = [p.embed_text for r in read_reviews(paths).reviews for p in chunk_review(r, encoder.count_tokens)]
    encoder.embed_passages(texts[:8])  # loads the model
    start = time.perf_counter()
    encoder.embed_passages(texts)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", default=[str(DEV), str(ROOT / "seeds")])
    ap.add_argument("--runs", type=int, default=3, help="full builds to time")
    ap.add_argument("--query-runs", type=int, default=15, help="cold queries to time")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        builds = []
        for _ in range(a.runs):
            seconds, rss, out = run(["index", *a.paths, "--index", index, "--full", "--json"])
            builds.append((seconds, rss, json.loads(out)))
        passages = builds[0][2]["passages"]
        build_s = statistics.median(b[0] for b in builds)
        cold = []
        for i in range(a.query_runs):
            cold.append(run(["query", QUERIES[i % len(QUERIES)], "--index", index, "--json"]))
        result = {
            "passages": passages,
            "index_seconds_median": round(build_s, 2),
            "index_passages_per_second": round(passages / build_s, 1),
            "embed_step_passages_per_second": round(passages / statistics.median(b[2]["embed_seconds"] for b in builds), 1),
            "embed_warm_passages_per_second": round(warm_embedding(a.paths), 1),
            "index_peak_rss_mib": max(b[1] for b in builds),
            "cold_query_seconds_median": round(statistics.median(c[0] for c in cold), 3),
            "cold_query_seconds_max": round(max(c[0] for c in cold), 3),
            "query_peak_rss_mib": max(c[1] for c in cold),
            "runs": {"index": a.runs, "query": a.query_runs},
            "cpus": os.cpu_count(),
        }
    report(result, a.out)


if __name__ == "__main__":
    main()
