"""Warm latency of `review-search serve`: sequential HTTP queries from another process, as a client sees them.

    python bench/serve_latency.py --index index            # the index's own (real) model
    python bench/serve_latency.py --fake                   # fake encoder, throwaway index of the dev corpus
    python bench/serve_latency.py --index index --new-connections   # a new TCP connection per query

The server runs as its own process (`review-search serve --port 0`, or the
tests' fake CLI with --fake), as it does for its users; this process is the
client. Start-up is timed from launch to the server's "serving" line. A few
requests warm it up, then each query is timed from sending the request to
having read the whole response, on one kept-alive connection (as a browser
or an MCP client keeps one) unless --new-connections.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from search.rank.request import DEFAULT_GROUP, DEFAULT_MODE, Group, Mode  # noqa: E402
from search.store.index import live_generation  # noqa: E402

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


def serve_command(index_dir: Path, fake: bool) -> list[str]:
    """The command that serves `index_dir` on a free port: the real CLI, or the tests' one with the fake encoder."""
    cli = [sys.executable, str(ROOT / "tests" / "fake_cli.py")] if fake else [sys.executable, "-m", "search"]
    return cli + ["serve", "--index", str(index_dir), "--port", "0"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=ROOT / "index", help="index folder (ignored with --fake)")
    ap.add_argument("--fake", action="store_true", help="fake encoder on a throwaway index of --corpus")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "dev-corpus" / "weeks", help="notes for --fake")
    ap.add_argument("-n", type=int, default=200, help="timed queries")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--mode", default=DEFAULT_MODE.value, choices=[m.value for m in Mode])
    ap.add_argument("--group", default=DEFAULT_GROUP.value, choices=[g.value for g in Group])
    ap.add_argument("--new-connections", action="store_true", help="open a new TCP connection for every query")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        index_dir = args.index
        if args.fake:
            if not args.corpus.exists():
                print(f"no notes at {args.corpus}; give --corpus", file=sys.stderr)
                return 2
            index_dir = Path(tmp) / "idx"
            subprocess.run([sys.executable, str(ROOT / "tests" / "fake_cli.py"), "index", str(args.corpus), "--index",
                            str(index_dir), "--model", "fake/trigram-64"], check=True, capture_output=True)
        elif live_generation(index_dir) is None:
            print(
                f"no index at {index_dir}; build one with\n"
                f"  review-search index {args.corpus} --index {index_dir}\n"
                "or run with --fake",
                file=sys.stderr,
            )
            return 2

        started = time.perf_counter()
        server = subprocess.Popen(serve_command(index_dir, args.fake), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            line = server.stdout.readline()
            startup = time.perf_counter() - started
            host, port = line.rsplit("http://", 1)[1].strip().rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port))
            connection.request("GET", "/health")
            health = connection.getresponse().read().decode("utf-8")

            def ask(query: str) -> float:
                nonlocal connection
                if args.new_connections:
                    connection.close()
                    connection = http.client.HTTPConnection(host, int(port))
                path = "/search?" + urlencode({"q": query, "k": args.k, "mode": args.mode, "group": args.group})
                t = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"HTTP {response.status} for {query!r}")
                return (time.perf_counter() - t) * 1000

            for q in QUERIES[:5]:
                ask(q)
            ms = np.array([ask(QUERIES[i % len(QUERIES)]) for i in range(args.n)])
            connection.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"index   {health}")
    print(f"startup {startup * 1000:.0f} ms (process start, index and model load)")
    print(
        f"{args.n} sequential queries, mode={args.mode} group={args.group} k={args.k}, "
        f"{'a new connection each' if args.new_connections else 'one kept-alive connection'}: "
        f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
        f"mean {ms.mean():.1f} ms, max {ms.max():.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
