"""Names of the retrieval index entries inside a bundle: one definition for builder and runtime."""
from __future__ import annotations

SETTINGS = "index/index.json"            # format, analyzer, dense model settings, fusion weight
# Layout of the index entries; a runtime refuses any other. 2: dense vectors as .npy entries
# (1 held them inside an ONNX scorer graph).
FORMAT = 2
CHUNKS = "index/chunks.jsonl"            # one JSON record per chunk, in id order
CHUNK_OFFSETS = "index/chunk_offsets.npy"  # int64 [chunks + 1]: byte offsets of records in CHUNKS

BM25_VOCAB = "index/bm25/vocab.json"     # {term: term id}
BM25_INDPTR = "index/bm25/indptr.npy"    # int64 [terms + 1]: postings of term t are [indptr[t], indptr[t+1])
BM25_DOC_IDS = "index/bm25/doc_ids.npy"  # int32 [postings]: chunk id of each posting
BM25_WEIGHTS = "index/bm25/weights.npy"  # float32 [postings]: BM25 contribution of the term to the chunk

DENSE_MODEL = "index/dense/model.onnx"          # sentence embedder, int8 weights
DENSE_TOKENIZER = "index/dense/tokenizer.json"  # its Hugging Face tokenizers file
# Chunk vectors, memory-mapped at query time: unit vectors ≈ vectors * scales[:, None].
DENSE_VECTORS = "index/dense/vectors.npy"  # int8 [chunks, dim], each row scaled by 127 / max |x|
DENSE_SCALES = "index/dense/scales.npy"    # float32 [chunks]
