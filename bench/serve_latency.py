"""Warm latency of `review-search serve`: sequential HTTP queries against an in-process server.

    python bench/serve_latency.py --index index            # the index's own (real) model
    python bench/serve_latency.py --fake                   # fake encoder, throwaway index of the dev corpus

The server is started once (its start-up time is printed apart), a few
requests warm it up, then each query is timed from sending the request to
having read the whole response, as a client sees it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# search first, as in `review-search serve`: it sets the thread settings numpy reads on import.
import search  # noqa: E402, F401
import numpy as np  # noqa: E402
from search.request import DEFAULT_GROUP, DEFAULT_MODE, Group, Mode  # noqa: E402
from search.store import live_generation  # noqa: E402
from search.server import make_server  # noqa: E402

QUERIES = [
    "MoE 라우팅 top-2 expert load balancing",
    "dual encoder in-batch negative와 BM25 hard negative 학습",
    "SpecAugment time masking으로 WER 개선",
    "음성인식 모델이 잡음에 강한 이유",
    "환각 문제를 줄이는 방법",
    "low-rank adaptation으로 파인튜닝 비용 줄이기",
    "어텐션 메커니즘의 계산 복잡도",
    "contrastive learning 데이터 증강",
    "retrieval augmented generation 평가",
    "모델 크기와 성능의 스케일링 법칙",
    "how does the model handle long documents",
    "limitations of the evaluation benchmark",
    "지식 증류로 작은 모델 만들기",
    "강화학습으로 사람 선호도 맞추기",
    "zero-shot 성능이 좋았던 이유",
    "토크나이저가 한국어에서 문제가 되는 점",
    "실험 재현이 어려웠다는 후기",
    "sparse vs dense retrieval trade-off",
    "사전학습 데이터 품질 필터링",
    "아쉬웠던 점",
]


def fake_index(corpus: Path, folder: Path):
    """Build an index of `corpus` with the tests' fake encoder; returns the encoder."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes import FakeEncoder

    from search.build import build_index

    encoder = FakeEncoder()
    build_index([corpus], folder, encoder)
    return encoder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=ROOT / "index", help="index folder (ignored with --fake)")
    ap.add_argument("--fake", action="store_true", help="fake encoder on a throwaway index of --corpus")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "dev-corpus" / "weeks", help="notes for --fake")
    ap.add_argument("-n", type=int, default=200, help="timed queries")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--mode", default=DEFAULT_MODE.value, choices=[m.value for m in Mode])
    ap.add_argument("--group", default=DEFAULT_GROUP.value, choices=[g.value for g in Group])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        encoder = None
        index_dir = args.index
        if args.fake:
            if not args.corpus.exists():
                print(f"no notes at {args.corpus}; give --corpus", file=sys.stderr)
                return 2
            index_dir = Path(tmp) / "idx"
            encoder = fake_index(args.corpus, index_dir)
        elif live_generation(index_dir) is None:
            print(
                f"no index at {index_dir}; build one with\n"
                f"  review-search index {args.corpus} --index {index_dir}\n"
                "or run with --fake",
                file=sys.stderr,
            )
            return 2

        started = time.perf_counter()
        server = make_server(index_dir, "127.0.0.1", 0, encoder=encoder, log_requests=False)
        startup = time.perf_counter() - started
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            with urllib.request.urlopen(f"{base}/health") as r:
                health = r.read().decode("utf-8")

            def ask(query: str) -> float:
                url = f"{base}/search?" + urlencode({"q": query, "k": args.k, "mode": args.mode, "group": args.group})
                t = time.perf_counter()
                with urllib.request.urlopen(url) as r:
                    r.read()
                return (time.perf_counter() - t) * 1000

            for q in QUERIES[:5]:
                ask(q)
            ms = np.array([ask(QUERIES[i % len(QUERIES)]) for i in range(args.n)])
        finally:
            server.shutdown()
            server.server_close()

    print(f"index   {health}")
    print(f"startup {startup * 1000:.0f} ms (index and model load)")
    print(
        f"{args.n} sequential queries, mode={args.mode} group={args.group} k={args.k}: "
        f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
        f"mean {ms.mean():.1f} ms, max {ms.max():.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
