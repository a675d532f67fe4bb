"""Every file of a bundle, by name: one definition for the builder that writes them and the runtime
that reads them (a staging folder holds the same names as files)."""
from __future__ import annotations

MANIFEST = "manifest.json"               # runtime.manifest.Manifest; in a file bundle, after the entries
# A folder holding only an exported model (the builder's model cache, before the manifest exists)
# describes it here: runtime.manifest.ModelInfo as JSON. A packaged bundle's manifest carries it instead.
MODEL_INFO = "model_info.json"

# The language model (model/): graph, weights as its external data, Hugging Face tokenizer files.
MODEL_FOLDER = "model"
MODEL_ONNX = f"{MODEL_FOLDER}/model.onnx"
MODEL_DATA = f"{MODEL_FOLDER}/model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"                 # names inside MODEL_FOLDER (and a Hugging Face folder)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"   # chat template, bos/eos, add_bos_token
GENERATION_CONFIG_FILE = "generation_config.json"  # eos_token_id list; optional

# The retrieval index (index/).

SETTINGS = "index/index.json"            # format, analyzer, dense model settings, fusion weight
# Layout of the index entries; a runtime refuses any other. 3: DOCUMENT_STARTS (2 had none: hits
# were passages without regard to their document); 2: dense vectors as .npy entries (1 held them
# inside an ONNX scorer graph).
FORMAT = 3
CHUNKS = "index/chunks.jsonl"            # one JSON record per chunk, in id order
CHUNK_OFFSETS = "index/chunk_offsets.npy"  # int64 [chunks + 1]: byte offsets of records in CHUNKS
# int64 [documents + 1]: the chunks of document d (files in path order) are [starts[d], starts[d+1])
DOCUMENT_STARTS = "index/document_starts.npy"
# The builder's record of each parsed file (path, content key, warnings, skip reason), for updates
# (bundler/index_reuse.py); the runtime does not read it.
DOCUMENTS = "index/documents.json"

BM25_VOCAB = "index/bm25/vocab.json"     # {term: term id}
BM25_INDPTR = "index/bm25/indptr.npy"    # int64 [terms + 1]: postings of term t are [indptr[t], indptr[t+1])
BM25_DOC_IDS = "index/bm25/doc_ids.npy"  # int32 [postings]: chunk id of each posting
BM25_WEIGHTS = "index/bm25/weights.npy"  # float32 [postings]: BM25 contribution of the term to the chunk

DENSE_MODEL = "index/dense/model.onnx"          # sentence embedder, int8 weights
DENSE_TOKENIZER = "index/dense/tokenizer.json"  # its Hugging Face tokenizers file
# Chunk vectors, memory-mapped at query time: unit vectors ≈ vectors * scales[:, None].
DENSE_VECTORS = "index/dense/vectors.npy"  # int8 [chunks, dim], each row scaled by 127 / max |x|
DENSE_SCALES = "index/dense/scales.npy"    # float32 [chunks]
