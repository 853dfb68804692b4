"""Vectors and passages on disk: the index generation (FAISS vectors, SQLite
passages, manifest, checksums) and its atomic writer (`index`), BM25 over
Korean morphemes (`bm25`) and the compressed token states for MaxSim
(`tokens`). Builds on `notes` (the records) and `model` (which tokens count)."""
