"""Late interaction (MaxSim over e5 token states): which arrangement, which tokens, which storage codec.

Reproducible scratch experiment behind issue #9 and README "Retrieval quality".
It builds (once) the two evaluation indexes the READMEs of the labelled sets
describe, embeds the token states of every passage and query once (cached as
.npy under --cache), then replays rankings offline:

    python bench/late_interaction.py                 # every table
    python bench/late_interaction.py --only codec    # one table: arrange|tokens|codec|levers|absent

Set A = ../shared/dev-corpus (index: its weeks + seeds), set B =
../shared/dev-corpus-2 (index: its weeks + dev-corpus + seeds). Choices are
made on one set and confirmed on the other, in both directions.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search import late  # noqa: E402
from search.embedding import DefaultE5Encoder  # noqa: E402
from search.evaluate import CUTOFF, LabelledQuery, Report, read_queries, score_query  # noqa: E402
from search.store import open_index  # noqa: E402

SHARED = ROOT.parent / "shared"
SETS = {
    "A": (SHARED / "dev-corpus", [SHARED / "dev-corpus/weeks", ROOT / "seeds"]),
    "B": (SHARED / "dev-corpus-2", [SHARED / "dev-corpus-2/weeks", SHARED / "dev-corpus/weeks", ROOT / "seeds"]),
}
RRF_K = 60


# ---------------------------------------------------------------- token states, cached


def _st_model(encoder: DefaultE5Encoder):
    return encoder._passages().model


def token_states(encoder: DefaultE5Encoder, texts: list[str], prefix: str, cache: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, raw last-layer states) per text, from sentence-transformers; cached by text hash."""
    cache.mkdir(parents=True, exist_ok=True)
    out: list = [None] * len(texts)
    todo = []
    for i, t in enumerate(texts):
        h = hashlib.sha256((prefix + t).encode()).hexdigest()[:24]
        f = cache / f"{h}.npz"
        if f.exists():
            z = np.load(f, allow_pickle=False)
            out[i] = (z["ids"], z["states"])
        else:
            todo.append((i, f))
    if todo:
        model = _st_model(encoder)
        batch = [prefix + texts[i] for i, _ in todo]
        states = model.encode(batch, output_value="token_embeddings", batch_size=16, convert_to_numpy=False)
        ids = model.tokenizer(batch)["input_ids"]
        for (i, f), s, tid in zip(todo, states, ids):
            s = s.float().numpy()
            assert len(tid) == len(s), (len(tid), s.shape)
            np.savez(f, ids=np.asarray(tid, np.int32), states=s)
            out[i] = (np.asarray(tid, np.int32), s)
    return out


# ---------------------------------------------------------------- data per set


@dataclass
class SetData:
    name: str
    queries: list[LabelledQuery]
    review_of_row: list[tuple[str, str, str]]  # (file, topic, reviewer) per row
    people_of_row: list[tuple[str, str]]  # (reviewer, presenter)
    dense: np.ndarray  # (q, rows) cosine
    lexical: np.ndarray  # (q, rows) BM25
    idf_weight: np.ndarray  # (q,) matched IDF mass fraction
    p_tokens: list  # per row (ids, states)
    q_tokens: list  # per query (ids, states)


def idf_fraction(lex, query: str) -> float:
    """Share of the query's IDF mass that the corpus vocabulary matches (unmatched words count at max IDF)."""
    from search.lexical import query_terms, stopwords

    n = lex.size
    stop = stopwords()
    terms = [t for t in query_terms(query, lex.vocab) if t not in stop]
    if not terms:
        return 0.0
    idf_max = np.log(1 + (n + 0.5) / 1.5)
    matched = total = 0.0
    for t in terms:
        if t in lex.vocab:
            j = lex._vocab[t]
            df = lex._indptr[j + 1] - lex._indptr[j]
            idf = float(np.log(1 + (n - df + 0.5) / (df + 0.5)))
            matched += idf
            total += idf
        else:
            total += idf_max
    return matched / total if total else 0.0


def load_set(name: str, encoder: DefaultE5Encoder, index_root: Path, cache: Path) -> SetData:
    from search.build import build_index

    labels, roots = SETS[name]
    index_dir = index_root / f"late-{name}"
    if not (index_dir / "CURRENT").exists():
        build_index(roots, index_dir, encoder)
    index = open_index(index_dir)
    queries = read_queries(labels / "queries.jsonl")
    passages = index.passages()
    vectors = index.vectors()
    qvec = np.vstack([encoder.embed_query(q.query) for q in queries])
    lex = index.lexical
    return SetData(
        name=name,
        queries=queries,
        review_of_row=[(p.file, p.topic, p.reviewer) for p in passages],
        people_of_row=[(p.reviewer, p.presenter) for p in passages],
        dense=qvec @ vectors.T,
        lexical=np.vstack([lex.scores_for(lex.terms(q.query)) for q in queries]),
        idf_weight=np.array([idf_fraction(lex, q.query) for q in queries]),
        p_tokens=token_states(encoder, [p.embed_text for p in passages], "passage: ", cache),
        q_tokens=token_states(encoder, [q.query for q in queries], "query: ", cache),
    )


# ---------------------------------------------------------------- ranking replays


def rrf(scores: list[np.ndarray], weights: list[float], mask: list[np.ndarray | None]) -> np.ndarray:
    """Weighted reciprocal rank fusion of full score vectors; rows outside `mask` are not ranked by that side."""
    fused = np.zeros(len(scores[0]))
    for s, w, m in zip(scores, weights, mask):
        rows = np.nonzero(m)[0] if m is not None else np.arange(len(s))
        order = rows[np.lexsort((rows, -s[rows]))]
        fused[order] += w / (RRF_K + np.arange(1, len(order) + 1))
    return fused


def reviews_ranked(d: SetData, scores: np.ndarray) -> list[tuple[str, str, str]]:
    seen, out = set(), []
    for r in np.lexsort((np.arange(len(scores)), -scores)):
        key = d.review_of_row[r]
        if key not in seen:
            seen.add(key)
            out.append(key)
            if len(out) == CUTOFF:
                break
    return out


def evaluate(d: SetData, score_fn) -> dict:
    rep = Report("x")
    for qi, q in enumerate(d.queries):
        s = score_fn(qi)
        rep.results.append(score_query(q, reviews_ranked(d, s), float(s.max())))
    return rep.summary()


class MaxSim:
    """MaxSim scores of every query against every passage for one token rule and one passage codec."""

    def __init__(self, d: SetData, tokenizer, rule: str, centre: np.ndarray | None, codec=None):
        self.q = [self._prep(ids, s, tokenizer, rule, centre, late.QUERY_PREFIX) for ids, s in d.q_tokens]
        ps = [self._prep(ids, s, tokenizer, rule, centre, late.PASSAGE_PREFIX) for ids, s in d.p_tokens]
        self.bytes = float(np.mean([len(p) * p.shape[1] * 4 for p in ps]))
        if codec is not None:
            enc = [codec.encode(p) for p in ps]
            self.bytes = float(np.mean([e.nbytes for e in enc]))
            ps = [codec.decode(e) for e in enc]
        self.p = ps
        self.scores = np.array([[late.maxsim(q, p) for p in self.p] for q in self.q])

    @staticmethod
    def _prep(ids, states, tokenizer, rule, centre, prefix):
        pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
        n_prefix = len(tokenizer(prefix.strip(), add_special_tokens=False)["input_ids"])
        s = states[late.keep_mask(pieces, n_prefix, rule)]
        if centre is not None:
            s = s - centre
        return late.unit_rows(s)


def arrangements(ms: np.ndarray, d: SetData, rv: np.ndarray | None = None):
    """name -> score function over query index (`rv`: review-level MaxSim, see review_level)."""
    lex_mask = [d.lexical[i] > 0 for i in range(len(d.queries))]
    out = {
        "dense": lambda i: d.dense[i],
        "lexical": lambda i: np.where(lex_mask[i], d.lexical[i], -1.0),
        "hybrid (dense+lex RRF)": lambda i: rrf([d.dense[i], d.lexical[i]], [1, 1], [None, lex_mask[i]]),
        "maxsim": lambda i: ms[i],
        "RRF maxsim+lex": lambda i: rrf([ms[i], d.lexical[i]], [1, 1], [None, lex_mask[i]]),
        "RRF dense+lex+maxsim": lambda i: rrf([d.dense[i], d.lexical[i], ms[i]], [1, 1, 1], [None, lex_mask[i], None]),
    }
    for w in (1.5, 2.0, 3.0):
        out[f"RRF maxsim x{w}+lex"] = lambda i, w=w: rrf([ms[i], d.lexical[i]], [w, 1], [None, lex_mask[i]])
        out[f"RRF dense+lex+maxsim x{w}"] = lambda i, w=w: rrf(
            [d.dense[i], d.lexical[i], ms[i]], [1, 1, w], [None, lex_mask[i], None])
    if rv is not None:
        out["RRF review-maxsim+lex"] = lambda i: rrf([rv[i], d.lexical[i]], [1, 1], [None, lex_mask[i]])
        out["RRF review-maxsim+dense+lex"] = lambda i: rrf([rv[i], d.dense[i], d.lexical[i]], [1, 1, 1], [None, None, lex_mask[i]])
        for w in (1.5, 2.0, 3.0):
            out[f"RRF review-maxsim x{w}+lex"] = lambda i, w=w: rrf([rv[i], d.lexical[i]], [w, 1], [None, lex_mask[i]])
    for n in (20, 50):
        def rerank(i, n=n):
            base = rrf([d.dense[i], d.lexical[i]], [1, 1], [None, lex_mask[i]])
            top = np.argsort(-base)[:n]
            s = np.full(len(base), -10.0)
            s[top] = ms[i][top]
            return s
        out[f"maxsim rerank hybrid top{n}"] = rerank
    return out


def fmt(summary: dict, kinds=("all", "keyword", "paraphrase", "crosslingual", "opinion", "related")) -> str:
    return " | ".join(f"{summary.get(k, {}).get('ndcg', float('nan')):.3f}" for k in kinds)


HEADER = "all | keyword | paraphrase | crosslingual | opinion | related"


def choose_confirm(results: dict[str, dict[str, dict]]) -> None:
    """results[config][set] = summary. Print best-on-A confirmed on B and vice versa."""
    for pick, other in (("A", "B"), ("B", "A")):
        best = max(results, key=lambda c: results[c][pick]["all"]["ndcg"])
        print(f"  chosen on {pick}: {best!r}: {pick} {results[best][pick]['all']['ndcg']:.3f}, "
              f"confirmed on {other}: {results[best][other]['all']['ndcg']:.3f}")
    best = max(results, key=lambda c: results[c]["A"]["all"]["ndcg"] + results[c]["B"]["all"]["ndcg"])
    print(f"  best on the mean of both: {best!r}")


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/late-interaction-cache"))
    ap.add_argument("--indexes", type=Path, default=Path("/tmp"))
    ap.add_argument("--only", choices=["tokens", "arrange", "codec", "levers", "absent"])
    args = ap.parse_args()

    encoder = DefaultE5Encoder()
    data = {n: load_set(n, encoder, args.indexes, args.cache) for n in SETS}
    tok = _st_model(encoder).tokenizer
    means = {n: late.unit_rows(np.vstack([s for _, s in data[n].p_tokens])).mean(0) for n in data}
    print(f"passages: A {len(data['A'].p_tokens)}, B {len(data['B'].p_tokens)}; "
          f"tokens/passage B {np.mean([len(i) for i, _ in data['B'].p_tokens]):.0f}")

    def run(rule, centred, codec=None, names=None, review=False):
        res = {}
        for n, d in data.items():
            c = means[n] if centred else None  # each index centred on its own passages' mean token
            ms = MaxSim(d, tok, rule, c, codec)
            arr = arrangements(ms.scores, d, review_level(d, ms) if review else None)
            for name, fn in arr.items():
                if names is None or name in names:
                    res.setdefault(name, {})[n] = evaluate(d, fn)
            res.setdefault("_bytes", {})[n] = ms.bytes
        return res

    if args.only in (None, "tokens"):
        print("\n## Which tokens count (MaxSim alone and RRF maxsim+lex), nDCG@10 all: A | B")
        grid = {}
        for rule, centred in itertools.product(("all", "nospecial", "noprefix", "nopunct"), (False, True)):
            r = run(rule, centred, names={"maxsim", "RRF maxsim+lex", "RRF dense+lex+maxsim"})
            for name in ("maxsim", "RRF maxsim+lex", "RRF dense+lex+maxsim"):
                cfg = f"{rule}{' centred' if centred else ''} / {name}"
                grid[cfg] = r[name]
                print(f"  {cfg:45s} {r[name]['A']['all']['ndcg']:.3f} | {r[name]['B']['all']['ndcg']:.3f}")
        choose_confirm(grid)

    if args.only in (None, "arrange"):
        print(f"\n## Arrangements (tokens: {late.TOKEN_RULE}), nDCG@10 per kind: {HEADER}")
        r = run(late.TOKEN_RULE, False, review=True)
        r.pop("_bytes")
        for name, per in r.items():
            print(f"  {name:32s} A: {fmt(per['A'])}   B: {fmt(per['B'])}")
        choose_confirm({k: v for k, v in r.items() if k not in ("dense", "lexical", "hybrid (dense+lex RRF)")})

    if args.only in (None, "codec"):
        codec_table(data, tok)
    if args.only in (None, "levers"):
        levers(data, tok)
    if args.only in (None, "absent"):
        absent(data, tok)


CHOSEN = f"RRF review-maxsim x{late.MAXSIM_WEIGHT}+lex"


class SignCodec:
    """Sign binarisation (1 bit a number), for the table only."""

    def encode(self, x):
        return late.Encoded(np.packbits(x > 0, axis=1), np.zeros(len(x), np.float16))

    def decode(self, e):
        return late.unit_rows(np.unpackbits(e.codes, axis=1).astype(np.float32) * 2 - 1)


def codec_table(data, tok) -> None:
    print(f"\n## Token storage: bytes per passage (tokens kept by {late.TOKEN_RULE!r}) vs nDCG@10 all, "
          f"MaxSim alone and {CHOSEN!r}")
    print("  codec | fitted on | bytes/passage A | B | maxsim A | B | chosen A | B")
    seeds_rows = {n: [i for i, (f, _, _) in enumerate(d.review_of_row) if f.startswith("000_")] for n, d in data.items()}
    for n, rows in seeds_rows.items():
        assert rows, f"no seed passages in {n}"

    def fit_tokens(n, where):
        d = data[n]
        rows = seeds_rows[n] if where == "seeds" else range(len(d.p_tokens))
        pre = [MaxSim._prep(d.p_tokens[r][0], d.p_tokens[r][1], tok, late.TOKEN_RULE, None, late.PASSAGE_PREFIX) for r in rows]
        return np.vstack(pre)

    configs = [("fp32", None, None, None)]
    configs += [("sign bits", "-", None, None)]
    for dim, bits in ((384, 8), (384, 4), (256, 4), (192, 8), (192, 4), (128, 8), (128, 4), (96, 8), (64, 8)):
        configs.append((f"PCA{dim} int{bits}", "own", dim, bits))
    for dim, bits in ((384, 4), (256, 4), (192, 4), (128, 8)):
        configs.append((f"PCA{dim} int{bits}", "seeds", dim, bits))
    for name, where, dim, bits in configs:
        row = {}
        for n, d in data.items():
            codec = None if name == "fp32" else SignCodec() if where == "-" else late.TokenCodec.fit(fit_tokens(n, where), dim, bits)
            ms = MaxSim(d, tok, late.TOKEN_RULE, None, codec)
            arr = arrangements(ms.scores, d, review_level(d, ms))
            row[n] = (ms.bytes, evaluate(d, arr["maxsim"])["all"]["ndcg"], evaluate(d, arr[CHOSEN])["all"]["ndcg"])
        print(f"  {name} | {where or '-'} | {row['A'][0]:,.0f} | {row['B'][0]:,.0f} | {row['A'][1]:.3f} | "
              f"{row['B'][1]:.3f} | {row['A'][2]:.3f} | {row['B'][2]:.3f}")


def review_level(d: SetData, ms: MaxSim, weights: list[np.ndarray] | None = None) -> np.ndarray:
    """MaxSim of each query against the union of the tokens of each passage's review (query tokens weighted if given)."""
    groups: dict = {}
    for r, key in enumerate(d.review_of_row):
        groups.setdefault(key, []).append(r)
    out = np.zeros_like(ms.scores)
    for rows in groups.values():
        toks = np.vstack([ms.p[r] for r in rows])
        for qi, q in enumerate(ms.q):
            best = (q @ toks.T).max(axis=1)
            out[qi, rows] = best.mean() if weights is None else (best * weights[qi]).sum() / weights[qi].sum()
    return out


def query_token_idf(d: SetData, tok) -> list[np.ndarray]:
    """Per query, the IDF of each kept token id over the passages of the index (unseen ids: the maximum)."""
    def kept_ids(ids, prefix):
        pieces = tok.convert_ids_to_tokens(ids.tolist())
        n_prefix = len(tok(prefix.strip(), add_special_tokens=False)["input_ids"])
        return ids[late.keep_mask(pieces, n_prefix)]

    df: dict[int, int] = {}
    for ids, _ in d.p_tokens:
        for t in set(kept_ids(ids, late.PASSAGE_PREFIX).tolist()):
            df[t] = df.get(t, 0) + 1
    n = len(d.p_tokens)
    return [np.log((n + 1) / (np.array([df.get(t, 0) for t in kept_ids(ids, late.QUERY_PREFIX).tolist()]) + 0.5))
            for ids, _ in d.q_tokens]


def levers(data, tok) -> None:
    print(f"\n## Levers on {CHOSEN!r}: nDCG@10 per kind: {HEADER}")
    res = {}
    for n, d in data.items():
        ms = MaxSim(d, tok, late.TOKEN_RULE, None)
        rv = review_level(d, ms)
        idf = query_token_idf(d, tok)
        rv_idf = review_level(d, ms, idf)
        rv_sqrt = review_level(d, ms, [np.sqrt(w) for w in idf])
        lex_mask = [d.lexical[i] > 0 for i in range(len(d.queries))]
        people = {p for pair in d.people_of_row for p in pair if p}
        named = [[p for p in people if p in q.query] for q in d.queries]
        print(f"  {n}: {sum(map(bool, named))} queries name a reviewer or presenter")

        def base(i, wl=1.0, m=None):
            return rrf([rv[i] if m is None else m[i], d.lexical[i]], [late.MAXSIM_WEIGHT, wl], [None, lex_mask[i]])

        variants = {
            "chosen": lambda i: base(i),
            "passage-level maxsim": lambda i: base(i, m=ms.scores),
            "passage+review maxsim": lambda i: base(i, m=(ms.scores + rv) / 2),
            "query tokens weighted by IDF": lambda i: base(i, m=rv_idf),
            "query tokens weighted by sqrt IDF": lambda i: base(i, m=rv_sqrt),
            "lexical x idf fraction": lambda i: base(i, d.idf_weight[i]),
            "lexical x sqrt idf fraction": lambda i: base(i, np.sqrt(d.idf_weight[i])),
        }
        for beta in (0.5, 1.0, 2.0):
            def named_boost(i, beta=beta):
                s = base(i)
                for r, (rev, pres) in enumerate(d.people_of_row):
                    if rev in named[i] or pres in named[i]:
                        s[r] += beta / (RRF_K + 1)
                return s
            variants[f"name boost {beta}"] = named_boost
        for name, fn in variants.items():
            res.setdefault(name, {})[n] = evaluate(d, fn)
    for name, per in res.items():
        print(f"  {name:30s} A: {fmt(per['A'])}   B: {fmt(per['B'])}")


def absent(data, tok) -> None:
    print("\n## No good match: best MaxSim (and best dense cosine) per query, absent vs answerable")
    for n, d in data.items():
        ms = MaxSim(d, tok, late.TOKEN_RULE, None)
        for label, mat in (("review maxsim", review_level(d, ms)), ("maxsim", ms.scores), ("dense", d.dense)):
            top = mat.max(axis=1)
            ab = np.array([not q.grades for q in d.queries])
            a, ok = top[ab], top[~ab]
            hidden = int((ok <= a.max()).sum())
            print(f"  {n} {label}: absent {np.round(np.sort(a), 3).tolist()}, answerable min {ok.min():.3f} "
                  f"p10 {np.quantile(ok, 0.1):.3f} median {np.median(ok):.3f}; a threshold above every absent "
                  f"query hides {hidden} of {len(ok)} answerable")


if __name__ == "__main__":
    main()
