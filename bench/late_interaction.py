"""Late interaction (MaxSim over e5 token states): which arrangement, which tokens, which storage codec.

Reproducible scratch experiment behind issue #9 and README "Retrieval quality".
It builds (once) the two evaluation indexes the READMEs of the labelled sets
describe, embeds the token states of every passage and query once (cached as
.npy under --cache), then replays rankings offline:

    python bench/late_interaction.py                 # every table
    python bench/late_interaction.py --only codec    # one table: arrange|tokens|codec|levers|absent|ideas|ideas2

Set A = ../shared/dev-corpus (index: its weeks + seeds), set B =
../shared/dev-corpus-2 (index: its weeks + dev-corpus + seeds). Choices are
made on one set and confirmed on the other, in both directions.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.rank import late  # noqa: E402
from search.model import tokens as token_rules  # noqa: E402
from search.store import tokens as token_store  # noqa: E402
from search.model.protocol import E5_PREFIXES  # noqa: E402
from search.model.encoders import DefaultE5Encoder  # noqa: E402
from search.rank.evaluate import CUTOFF, LabelledQuery, Report, read_queries, score_query  # noqa: E402
from search.rank.fusion import RRF_K  # noqa: E402
from search.store.index import open_index  # noqa: E402

SHARED = ROOT.parent / "shared"
SETS = {
    "A": (SHARED / "dev-corpus", [SHARED / "dev-corpus/weeks", ROOT / "seeds"]),
    "B": (SHARED / "dev-corpus-2", [SHARED / "dev-corpus-2/weeks", SHARED / "dev-corpus/weeks", ROOT / "seeds"]),
}


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
    vectors: np.ndarray | None = None  # (rows, dim) passage vectors
    qvec: np.ndarray | None = None  # (q, dim) query vectors
    p_terms: list | None = None  # per row, its BM25 terms
    p_embed: list | None = None  # per row, the text embedded ("{topic}\n{passage}")


def idf_fraction(lex, query: str) -> float:
    """Share of the query's IDF mass that the corpus vocabulary matches (unmatched words count at max IDF)."""
    from search.notes.terms import query_terms, stopwords

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
    from search.indexing.build import build_index

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
        vectors=np.asarray(vectors),
        qvec=qvec,
        p_terms=[p.terms.split() for p in passages],
        p_embed=[p.embed_text for p in passages],
    )


# ---------------------------------------------------------------- ranking replays


def rrf(scores: list[np.ndarray], weights: list[float], mask: list[np.ndarray | None]) -> np.ndarray:
    """Weighted reciprocal rank fusion of full score vectors; rows outside `mask` are not ranked by that side."""
    orders = []
    for s, m in zip(scores, mask):
        rows = np.nonzero(m)[0] if m is not None else np.arange(len(s))
        orders.append(rows[np.lexsort((rows, -s[rows]))])
    return fuse_orders(orders, weights, len(scores[0]))


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
        self.q = [self._prep(ids, s, tokenizer, rule, centre, E5_PREFIXES["query"]) for ids, s in d.q_tokens]
        ps = [self._prep(ids, s, tokenizer, rule, centre, E5_PREFIXES["passage"]) for ids, s in d.p_tokens]
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
        s = states[token_rules.keep_mask(pieces, n_prefix, rule)]
        if centre is not None:
            s = s - centre
        return token_rules.unit_rows(s)


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
        for w in sorted({1.5, 2.0, 3.0, late.MAXSIM_WEIGHT}):
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
    ap.add_argument("--only", choices=["tokens", "arrange", "codec", "levers", "absent", "ideas", "ideas2"])
    args = ap.parse_args()

    encoder = DefaultE5Encoder()
    data = {n: load_set(n, encoder, args.indexes, args.cache) for n in SETS}
    tok = _st_model(encoder).tokenizer
    means = {n: token_rules.unit_rows(np.vstack([s for _, s in data[n].p_tokens])).mean(0) for n in data}
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
        print(f"\n## Arrangements (tokens: {token_rules.TOKEN_RULE}), nDCG@10 per kind: {HEADER}")
        r = run(token_rules.TOKEN_RULE, False, review=True)
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
    if args.only in (None, "ideas"):
        ideas(data, tok)
    if args.only in (None, "ideas2"):
        ideas2(data, tok, encoder, args.cache)


CHOSEN = f"RRF review-maxsim x{late.MAXSIM_WEIGHT}+lex"


class SignCodec:
    """Sign binarisation (1 bit a number), for the table only."""

    def encode(self, x):
        return token_store.Encoded(np.packbits(x > 0, axis=1), np.zeros(len(x), np.float16))

    def decode(self, e):
        return token_rules.unit_rows(np.unpackbits(e.codes, axis=1).astype(np.float32) * 2 - 1)


def codec_table(data, tok) -> None:
    print(f"\n## Token storage: bytes per passage (tokens kept by {token_rules.TOKEN_RULE!r}) vs nDCG@10 all, "
          f"MaxSim alone and {CHOSEN!r}")
    print("  codec | fitted on | bytes/passage A | B | maxsim A | B | chosen A | B")
    seeds_rows = {n: [i for i, (f, _, _) in enumerate(d.review_of_row) if f.startswith("000_")] for n, d in data.items()}
    for n, rows in seeds_rows.items():
        assert rows, f"no seed passages in {n}"

    def fit_tokens(n, where):
        d = data[n]
        rows = seeds_rows[n] if where == "seeds" else range(len(d.p_tokens))
        pre = [MaxSim._prep(d.p_tokens[r][0], d.p_tokens[r][1], tok, token_rules.TOKEN_RULE, None, E5_PREFIXES["passage"]) for r in rows]
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
            codec = None if name == "fp32" else SignCodec() if where == "-" else token_store.TokenCodec.fit(fit_tokens(n, where), dim, bits)
            ms = MaxSim(d, tok, token_rules.TOKEN_RULE, None, codec)
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


def kept_ids(tok, ids: np.ndarray, prefix: str) -> np.ndarray:
    """The token ids token_rules.keep_mask keeps of one tokenised `prefix + text`."""
    pieces = tok.convert_ids_to_tokens(ids.tolist())
    n_prefix = len(tok(prefix.strip(), add_special_tokens=False)["input_ids"])
    return ids[token_rules.keep_mask(pieces, n_prefix)]


def query_token_idf(d: SetData, tok) -> list[np.ndarray]:
    """Per query, the IDF of each kept token id over the passages of the index (unseen ids: the maximum)."""
    df: dict[int, int] = {}
    for ids, _ in d.p_tokens:
        for t in set(kept_ids(tok, ids, E5_PREFIXES["passage"]).tolist()):
            df[t] = df.get(t, 0) + 1
    n = len(d.p_tokens)
    return [np.log((n + 1) / (np.array([df.get(t, 0) for t in kept_ids(tok, ids, E5_PREFIXES["query"]).tolist()]) + 0.5))
            for ids, _ in d.q_tokens]


def levers(data, tok) -> None:
    print(f"\n## Levers on {CHOSEN!r}: nDCG@10 per kind: {HEADER}")
    res = {}
    for n, d in data.items():
        ms = MaxSim(d, tok, token_rules.TOKEN_RULE, None)
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
        ms = MaxSim(d, tok, token_rules.TOKEN_RULE, None)
        for label, mat in (("review maxsim", review_level(d, ms)), ("maxsim", ms.scores), ("dense", d.dense)):
            top = mat.max(axis=1)
            ab = np.array([not q.grades for q in d.queries])
            a, ok = top[ab], top[~ab]
            hidden = int((ok <= a.max()).sum())
            print(f"  {n} {label}: absent {np.round(np.sort(a), 3).tolist()}, answerable min {ok.min():.3f} "
                  f"p10 {np.quantile(ok, 0.1):.3f} median {np.median(ok):.3f}; a threshold above every absent "
                  f"query hides {hidden} of {len(ok)} answerable")



# ---------------------------------------------------------------- ideas on top of the default, replayed as it ranks


def fuse_orders(orders: list[np.ndarray], weights: list[float], n: int, k: int = RRF_K) -> np.ndarray:
    """Weighted RRF of row orders (best first); rows missing from an order get nothing from it."""
    fused = np.zeros(n)
    for order, w in zip(orders, weights):
        fused[order] += w / (k + np.arange(1, len(order) + 1))
    return fused


def order_of(*keys: np.ndarray) -> np.ndarray:
    """Rows best first by the keys (first key most significant, higher better), row number last."""
    n = len(keys[0])
    return np.lexsort((np.arange(n),) + tuple(-k for k in reversed(keys)))


BASELINE_WEIGHT = 2.0  # late.MAXSIM_WEIGHT when the ideas table was made


@dataclass
class Replay:
    """One set's scores as the default ranking sees them (codec-decoded passage tokens, as stored)."""

    d: SetData
    ms: MaxSim
    groups: list[list[int]]  # rows per review
    review_of: np.ndarray  # row -> group index
    rv: np.ndarray | None = None  # (q, rows) the default's review MaxSim

    def lex_order(self, i: int, lexical: np.ndarray | None = None) -> np.ndarray:
        s = self.d.lexical[i] if lexical is None else lexical
        rows = np.nonzero(s > 0)[0]
        return rows[order_of(s[rows])]

    def default(self, i: int, review: np.ndarray | None = None, k: int = RRF_K, extra=(), lexical=None,
                weight: float = BASELINE_WEIGHT) -> np.ndarray:
        """search.rank.searcher's late fusion: review MaxSim (passage MaxSim breaks ties) x2 + BM25, plus `extra` (order, weight).

        `weight` defaults to x2, the value before this table chose late.MAXSIM_WEIGHT, so "default" rows stay that baseline.
        """
        rv = self.rv[i] if review is None else review
        orders = [order_of(rv, self.ms.scores[i]), self.lex_order(i, lexical)] + [o for o, _ in extra]
        weights = [weight, 1.0] + [w for _, w in extra]
        return fuse_orders(orders, weights, len(rv), k)


def make_replay(d: SetData, tok, codec: tuple[int, int] | None = (token_store.CODEC_DIM, token_store.CODEC_BITS)) -> Replay:
    """The replay with tokens through a codec of (dim, bits) fitted on the index's own tokens, as a fresh build does."""
    pre = [MaxSim._prep(ids, s, tok, token_rules.TOKEN_RULE, None, E5_PREFIXES["passage"]) for ids, s in d.p_tokens]
    ms = MaxSim(d, tok, token_rules.TOKEN_RULE, None, None if codec is None else token_store.TokenCodec.fit(np.vstack(pre), *codec))
    keys: dict = {}
    review_of = np.array([keys.setdefault(key, len(keys)) for key in d.review_of_row])
    groups = [list(np.nonzero(review_of == g)[0]) for g in range(len(keys))]
    r = Replay(d, ms, groups, review_of)
    r.rv = review_variants(r)["union (default)"]
    return r


def review_variants(r: Replay, q_weights: dict[str, list[np.ndarray]] | None = None, prf: dict | None = None) -> dict[str, np.ndarray]:
    """Review-level score matrices (q, rows) for aggregation, symmetric MaxSim and query-token weights."""
    ms, nq = r.ms, len(r.ms.q)
    out: dict[str, np.ndarray] = {}

    def put(name, qi, rows, v):
        out.setdefault(name, np.zeros((nq, len(r.review_of))))[qi, rows] = v

    for rows in r.groups:
        toks = np.vstack([ms.p[x] for x in rows])
        per_passage = np.sort(ms.scores[:, rows], axis=1)[:, ::-1]
        for qi, q in enumerate(ms.q):
            sim = q @ toks.T
            best = sim.max(axis=1)
            put("union (default)", qi, rows, best.mean())
            put("best passage", qi, rows, per_passage[qi, 0])
            put("top-2 passages mean", qi, rows, per_passage[qi, :2].mean())
            put("(union + best passage)/2", qi, rows, (best.mean() + per_passage[qi, 0]) / 2)
            back = sim.max(axis=0).mean()
            for a in (0.25, 0.5, 1.0):
                put(f"symmetric, review->query x{a}", qi, rows, (best.mean() + a * back) / (1 + a))
            for name, ws in (q_weights or {}).items():
                w = ws[qi]
                put(name, qi, rows, (best * w).sum() / w.sum() if w.sum() > 0 else best.mean())
            if prf is not None:
                e = prf["tokens"][qi]
                eb = (e @ toks.T).max(axis=1) if len(e) else np.zeros(0)
                for beta in prf["betas"]:
                    put(f"PRF beta {beta}", qi, rows, (best.sum() + beta * eb.sum()) / (len(best) + beta * len(eb)))
    return out


def query_token_df(d: SetData, tok, by_review: bool) -> tuple[list[np.ndarray], int]:
    """Per query, the document frequency of each kept token id over passages (or reviews), and that count."""
    units: dict = {}
    for r, (ids, _) in enumerate(d.p_tokens):
        units.setdefault(d.review_of_row[r] if by_review else r, set()).update(kept_ids(tok, ids, E5_PREFIXES["passage"]).tolist())
    df: dict[int, int] = {}
    for toks in units.values():
        for t in toks:
            df[t] = df.get(t, 0) + 1
    return [np.array([df.get(t, 0) for t in kept_ids(tok, ids, E5_PREFIXES["query"]).tolist()], float) for ids, _ in d.q_tokens], len(units)


def ideas(data, tok) -> None:
    """Each idea's settings on both sets; a setting is chosen on one set and confirmed on the other."""
    res: dict[str, dict[str, dict[str, dict]]] = {}  # idea -> setting -> set -> summary

    def record(idea, setting, n, d, fn):
        res.setdefault(idea, {}).setdefault(setting, {})[n] = evaluate(d, fn)

    for n, d in data.items():
        r = make_replay(d, tok)
        nq = len(d.queries)
        base = lambda i: r.default(i)  # noqa: E731
        for idea in ("dense third ranking", "query token weights", "symmetric MaxSim", "review aggregation",
                     "token PRF", "BM25 over reviews", "RRF k", "MaxSim weight"):
            record(idea, "default", n, d, base)

        # 1. dense cosine as a third ranking: passage cosine, best passage of the review, review mean vector
        mean_vec = np.zeros((len(r.groups), d.vectors.shape[1]))
        for g, rows in enumerate(r.groups):
            mean_vec[g] = token_rules.unit_rows(d.vectors[rows].mean(0, keepdims=True))[0]
        rev_mean = (d.qvec @ mean_vec.T)[:, r.review_of]
        rev_max = np.zeros_like(d.dense)
        for rows in r.groups:
            rev_max[:, rows] = d.dense[:, rows].max(axis=1, keepdims=True)
        for label, mat in (("passage cosine", d.dense), ("review best cosine", rev_max), ("review mean-vector cosine", rev_mean)):
            for w in (0.25, 0.5, 1.0):
                record("dense third ranking", f"{label} x{w}", n, d,
                       lambda i, mat=mat, w=w: r.default(i, extra=[(order_of(mat[i], d.dense[i]), w)]))

        # 2-4. query token weights (IDF over passages or reviews, drop tokens in over half), symmetric, aggregation
        weights = {}
        for by_review in (False, True):
            df, units = query_token_df(d, tok, by_review)
            unit = "reviews" if by_review else "passages"
            weights[f"IDF over {unit}"] = [np.log((units + 1) / (x + 0.5)) for x in df]
            weights[f"sqrt IDF over {unit}"] = [np.sqrt(np.log((units + 1) / (x + 0.5))) for x in df]
            weights[f"drop tokens in > half the {unit}"] = [(x <= units / 2).astype(float) for x in df]
        # 5. token PRF: the tokens of the default's top review that best match each query token
        tops = [r.review_of[np.argmax(base(i))] for i in range(nq)]
        prf_tokens = []
        for i, g in enumerate(tops):
            toks = np.vstack([r.ms.p[x] for x in r.groups[g]])
            sim = r.ms.q[i] @ toks.T
            prf_tokens.append(toks[np.argsort(-sim.max(axis=0))[: len(r.ms.q[i])]])
        variants = review_variants(r, weights, {"tokens": prf_tokens, "betas": (0.25, 0.5, 1.0)})
        for name, mat in variants.items():
            idea = ("query token weights" if name in weights else "token PRF" if name.startswith("PRF")
                    else "symmetric MaxSim" if name.startswith("symmetric") else "review aggregation")
            if name != "union (default)":
                record(idea, name, n, d, lambda i, mat=mat: r.default(i, review=mat[i]))

        # 6. BM25 over whole reviews (a review's passages' terms as one document), instead of or with passages
        from search.store.bm25 import LexicalIndex

        rev_lex = LexicalIndex.build([[t for x in rows for t in d.p_terms[x]] for rows in r.groups])
        rev_bm25 = np.vstack([rev_lex.scores_for(rev_lex.terms(q.query))[r.review_of] for q in d.queries])
        record("BM25 over reviews", "reviews instead of passages", n, d, lambda i: r.default(i, lexical=rev_bm25[i]))
        for w in (0.5, 1.0):
            record("BM25 over reviews", f"passages + reviews x{w}", n, d,
                   lambda i, w=w: r.default(i, extra=[(r.lex_order(i, rev_bm25[i] + 1e-6 * d.lexical[i]), w)]))

        # 7. RRF k
        for k in (10, 20, 30, 45, 80, 100):
            record("RRF k", f"k={k}", n, d, lambda i, k=k: r.default(i, k=k))
        # 8. the MaxSim ranking's weight (x2 was chosen on float32 tokens, where x2 and x3 tied)
        for w in (1.0, 1.5, 2.5, 3.0, 4.0, 5.0, 8.0):
            record("MaxSim weight", f"x{w}", n, d, lambda i, w=w: r.default(i, weight=w))

    kinds = ("all", "paraphrase", "crosslingual", "opinion", "related")
    print(f"\n## The fusion's shape under other token precisions (is the gain the stored codec's?), nDCG@10: "
          f"{' | '.join(kinds)}")
    for label, codec in (("float32", None), ("PCA384 int8", (384, 8)), ("PCA256 int8", (256, 8)),
                         (f"PCA{token_store.CODEC_DIM} int{token_store.CODEC_BITS} (stored)", (token_store.CODEC_DIM, token_store.CODEC_BITS)),
                         ("PCA192 int4", (192, 4))):
        reps = {n: make_replay(d, tok, codec) for n, d in data.items()}
        for k, w in ((RRF_K, BASELINE_WEIGHT), (RRF_K, 3.0), (RRF_K, 4.0), (10, BASELINE_WEIGHT)):
            per = {n: evaluate(d, lambda i: reps[n].default(i, k=k, weight=w)) for n, d in data.items()}
            print(f"  {label:20s} k={k:2d} x{w}   A: {fmt(per['A'], kinds)}   B: {fmt(per['B'], kinds)}")
    print(f"\n## Ideas on the default (MaxSim x{BASELINE_WEIGHT} + BM25, RRF k = {RRF_K}; codec-decoded tokens, as stored), "
          f"nDCG@10: {' | '.join(kinds)}")
    for idea, settings in res.items():
        print(f"\n### {idea}")
        for setting, per in settings.items():
            print(f"  {setting:40s} A: {fmt(per['A'], kinds)}   B: {fmt(per['B'], kinds)}")
        for pick, other in (("A", "B"), ("B", "A")):
            # ties go to the default, then to the earlier setting: a change has to win to be chosen
            best = max(settings, key=lambda s: (settings[s][pick]["all"]["ndcg"], s == "default"))
            dflt = settings["default"]
            print(f"  chosen on {pick}: {best!r} {pick} {settings[best][pick]['all']['ndcg']:.3f} "
                  f"(default {dflt[pick]['all']['ndcg']:.3f}); confirmed on {other}: "
                  f"{settings[best][other]['all']['ndcg']:.3f} (default {dflt[other]['all']['ndcg']:.3f}), "
                  f"paraphrase {settings[best][other]['paraphrase']['ndcg']:.3f} "
                  f"(default {dflt[other]['paraphrase']['ndcg']:.3f})")


# ---------------------------------------------------------------- ideas II, on the default as it is now (MaxSim x4)


def evaluate_per(d: SetData, score_fn) -> dict:
    """evaluate(), plus "_per": each query's nDCG@10 (None for absent queries), for better/worse counts."""
    rep = Report("x")
    for qi, q in enumerate(d.queries):
        s = score_fn(qi)
        rep.results.append(score_query(q, reviews_ranked(d, s), float(s.max())))
    out = rep.summary()
    out["_per"] = [x.ndcg for x in rep.results]
    return out


def better_worse(new: dict, old: dict) -> tuple[int, int]:
    """How many answerable queries rank better and worse (nDCG@10) under `new` than under `old`."""
    pairs = [(a, b) for a, b in zip(new["_per"], old["_per"]) if a is not None]
    return sum(a > b + 1e-9 for a, b in pairs), sum(a < b - 1e-9 for a, b in pairs)


def review_maxsim(r: Replay, queries: list[np.ndarray]) -> np.ndarray:
    """(len(queries), reviews): union MaxSim of each (prepared) query against each review's stored tokens."""
    out = np.zeros((len(queries), len(r.groups)))
    for g, rows in enumerate(r.groups):
        toks = np.vstack([r.ms.p[x] for x in rows])
        for qi, q in enumerate(queries):
            out[qi, g] = (q @ toks.T).max(axis=1).mean() if len(q) else 0.0
    return out


def background_queries(d: SetData, kind: str, n: int = 80, seed: int = 0) -> tuple[list[str], list[str]]:
    """Pseudo-queries drawn from the index alone, with the paper title each came from.

    kind "titles": every paper title of the index; "sentences": `n` random
    sentences (20-200 characters) of the passages, seeded.
    """
    import random
    import re

    if kind == "titles":
        titles = sorted({t for _, t, _ in d.review_of_row})
        return titles, titles
    pool = []
    for (_, topic, _), text in zip(d.review_of_row, d.p_embed):
        body = text.split("\n", 1)[1] if "\n" in text else text
        pool += [(x.strip(), topic) for x in re.split(r"(?<=[.!?])\s+|\n+", body) if 20 <= len(x.strip()) <= 200]
    pick = random.Random(seed).sample(pool, min(n, len(pool)))
    return [x for x, _ in pick], [t for _, t in pick]


def without_title(d: SetData, tok) -> list:
    """Each passage's (ids, states) with the paper title's tokens removed (the title still shaped the others)."""
    out = []
    for (ids, states), text, (_, topic, _) in zip(d.p_tokens, d.p_embed, d.review_of_row):
        head = tok(E5_PREFIXES["passage"] + topic)["input_ids"][:-1]  # <s> prefix title, without </s>
        n_prefix = len(tok(E5_PREFIXES["passage"].strip(), add_special_tokens=False)["input_ids"])
        assert text.startswith(topic + "\n") and ids[: len(head)].tolist() == head, "title is not a token prefix"
        keep = np.ones(len(ids), bool)
        keep[1 + n_prefix: len(head)] = False
        out.append((ids[keep], states[keep]))
    return out


def ideas2(data, tok, encoder, cache: Path) -> None:
    """Issue #9, second round: length bias, paper context, paper-level evidence, on the x4 default.

    "default" is the ranking before late.PAPER_WEIGHT (MaxSim x4 + BM25): idea 3 at x0.5 is what search/ now does.
    """
    from dataclasses import replace

    W = late.MAXSIM_WEIGHT
    res: dict[str, dict[str, dict[str, dict]]] = {}

    def record(idea, setting, n, d, fn):
        res.setdefault(idea, {}).setdefault(setting, {})[n] = evaluate_per(d, fn)

    for n, d in data.items():
        r = make_replay(d, tok)
        base = lambda i: r.default(i, weight=W)  # noqa: E731
        by_review = lambda m: m[:, r.review_of]  # noqa: E731  (q, reviews) -> (q, rows)
        rv = np.stack([r.rv[:, rows[0]] for rows in r.groups], axis=1)  # (q, reviews)
        n_tok = np.array([sum(len(r.ms.p[x]) for x in rows) for rows in r.groups], float)
        paper_of_group = [d.review_of_row[rows[0]][1] for rows in r.groups]

        # 1. review-length bias: subtract b*log(n tokens), or normalise by background pseudo-queries
        idea = "1 length bias"
        record(idea, "default", n, d, base)
        for b in (0.0025, 0.005, 0.01, 0.02):
            adj = by_review(rv - b * np.log(n_tok))
            record(idea, f"minus {b}*log n", n, d, lambda i, adj=adj: r.default(i, review=adj[i], weight=W))
        for kind in ("titles", "sentences"):
            texts, papers = background_queries(d, kind)
            bq = [MaxSim._prep(ids, s, tok, token_rules.TOKEN_RULE, None, E5_PREFIXES["query"])
                  for ids, s in token_states(encoder, texts, "query: ", cache)]
            bg = review_maxsim(r, bq)  # (bg, reviews)
            other = np.array([[p != g for g in paper_of_group] for p in papers])  # only other papers' pseudo-queries
            mu = np.array([bg[other[:, g], g].mean() for g in range(len(r.groups))])
            sd = np.array([bg[other[:, g], g].std() for g in range(len(r.groups))])
            b_fit = float(np.polyfit(np.log(n_tok), mu, 1)[0])
            print(f"  {n}: background {kind}: {len(texts)} pseudo-queries; slope of their mean MaxSim on log n "
                  f"tokens {b_fit:.4f} (corr {np.corrcoef(np.log(n_tok), mu)[0, 1]:.2f}); log n {np.log(n_tok).min():.1f}"
                  f"-{np.log(n_tok).max():.1f}")
            for label, m in ((f"minus fitted b*log n ({kind})", rv - b_fit * np.log(n_tok)),
                             (f"minus background mean ({kind})", rv - mu),
                             (f"z-score on background ({kind})", (rv - mu) / sd)):
                adj = by_review(m)
                record(idea, label, n, d, lambda i, adj=adj: r.default(i, review=adj[i], weight=W))

        # 2. paper context for passage tokens: embedded as "{title}\n{text}" (the current build), title tokens dropped, no title
        idea = "2 paper context"
        record(idea, "default (title embedded, its tokens kept)", n, d, base)
        r2 = make_replay(replace(d, p_tokens=without_title(d, tok)), tok)
        record(idea, "title embedded, its tokens dropped", n, d, lambda i: r2.default(i, weight=W))
        bodies = [t.split("\n", 1)[1] for t in d.p_embed]
        r3 = make_replay(replace(d, p_tokens=token_states(encoder, bodies, "passage: ", cache)), tok)
        record(idea, "no title", n, d, lambda i: r3.default(i, weight=W))

        # 3. paper-level evidence: MaxSim against all tokens of the paper's reviews, as a third ranking
        idea = "3 paper-level ranking"
        record(idea, "default", n, d, base)
        papers: dict = {}
        paper_of_row = np.array([papers.setdefault(key[:2], len(papers)) for key in d.review_of_row])
        pm = np.zeros((len(d.queries), len(papers)))
        for p in range(len(papers)):
            toks = np.vstack([r.ms.p[x] for x in np.nonzero(paper_of_row == p)[0]])
            for qi, q in enumerate(r.ms.q):
                pm[qi, p] = (q @ toks.T).max(axis=1).mean()
        pm = pm[:, paper_of_row]
        for w in (0.25, 0.5, 1.0):
            record(idea, f"paper MaxSim x{w}", n, d,
                   lambda i, w=w: r.default(i, weight=W, extra=[(order_of(pm[i], r.rv[i], r.ms.scores[i]), w)]))

        # 4. paper-level BM25 (a paper's reviews as one document): the lexical side of idea 3, alone or with it
        from search.store.bm25 import LexicalIndex

        idea = "4 paper-level BM25"
        record(idea, "default", n, d, base)
        paper_lex = LexicalIndex.build([[t for x in np.nonzero(paper_of_row == p)[0] for t in d.p_terms[x]]
                                        for p in range(len(papers))])
        pb = np.vstack([paper_lex.scores_for(paper_lex.terms(q.query))[paper_of_row] for q in d.queries])
        for wb in (0.25, 0.5, 1.0):
            for wm in (0.0, 0.25, 0.5):
                extra = lambda i, wb=wb, wm=wm: ([(r.lex_order(i, pb[i] + 1e-6 * d.lexical[i]), wb)]  # noqa: E731
                                                 + ([(order_of(pm[i], r.rv[i], r.ms.scores[i]), wm)] if wm else []))
                record(idea, f"paper BM25 x{wb}" + (f" + paper MaxSim x{wm}" if wm else ""), n, d,
                       lambda i, extra=extra: r.default(i, weight=W, extra=extra(i)))

        # 5. idea 4 again, on the default as search/ ranks now (paper MaxSim x late.PAPER_WEIGHT included), so the
        # better/worse counts are against what ships, not against the ranking before paper MaxSim
        idea = f"5 paper-level BM25 on the shipped default (paper MaxSim x{late.PAPER_WEIGHT})"
        shipped = lambda i: [(order_of(pm[i], r.rv[i], r.ms.scores[i]), late.PAPER_WEIGHT)]  # noqa: E731
        record(idea, "default", n, d, lambda i: r.default(i, weight=W, extra=shipped(i)))
        for wb in (0.125, 0.25, 0.5, 0.75, 1.0):
            record(idea, f"+ paper BM25 x{wb}", n, d, lambda i, wb=wb: r.default(
                i, weight=W, extra=shipped(i) + [(r.lex_order(i, pb[i] + 1e-6 * d.lexical[i]), wb)]))

    print_ideas(res)


def print_ideas(res: dict) -> None:
    """Per idea: every setting per kind, then chosen on each set and confirmed on the other with per-query counts."""
    kinds = ("all", "paraphrase", "crosslingual", "opinion", "related")
    print(f"\n## Ideas II on the default (MaxSim x{late.MAXSIM_WEIGHT} + BM25, RRF k = {RRF_K}; tokens as stored), "
          f"nDCG@10: {' | '.join(kinds)}; +/- = queries better/worse than the default")
    for idea, settings in res.items():
        print(f"\n### {idea}")
        dflt = next(iter(settings.values()))
        for setting, per in settings.items():
            counts = "  ".join(f"{n} +{b}/-{w}" for n in ("A", "B") for b, w in [better_worse(per[n], dflt[n])])
            print(f"  {setting:42s} A: {fmt(per['A'], kinds)}   B: {fmt(per['B'], kinds)}   {counts}")
        for pick, other in (("A", "B"), ("B", "A")):
            # ties go to the default (listed first), then to the earlier setting: a change has to win to be chosen
            names = list(settings)
            best = max(names, key=lambda s: (settings[s][pick]["all"]["ndcg"], -names.index(s)))
            got, was = settings[best], dflt
            b, w = better_worse(got[other], was[other])
            ok = (got[other]["all"]["ndcg"] >= was[other]["all"]["ndcg"]
                  and min(got[x]["crosslingual"]["ndcg"] for x in ("A", "B")) >= 0.88)
            print(f"  chosen on {pick}: {best!r} {got[pick]['all']['ndcg']:.3f} (default {was[pick]['all']['ndcg']:.3f}) "
                  f"-> {other} {got[other]['all']['ndcg']:.3f} (default {was[other]['all']['ndcg']:.3f}; paraphrase "
                  f"{got[other]['paraphrase']['ndcg']:.3f} vs {was[other]['paraphrase']['ndcg']:.3f}; {other} queries "
                  f"+{b}/-{w}) {'holds' if best != names[0] and ok else 'default kept' if best == names[0] else 'FAILS'}")


if __name__ == "__main__":
    main()
