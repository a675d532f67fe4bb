"""The exported sentence embedder: its vectors against the fp32 source model, and batching order."""
from __future__ import annotations

import random
import shutil

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from bundler.embedding_pool import EmbeddingPool
from runtime import layout
from runtime.bundle import DirectoryBundle
from runtime.dense_search import DenseSearch, SentenceEncoder, encoder_session_options

SENTENCES = [
    "Prime the coolant pump before starting the generator.",
    "The antenna points at azimuth 212 degrees.",
    "Diesel tank refilled on Monday; level at ninety percent.",
    "Charge the battery bank weekly and log the voltage.",
    "A list comprehension builds a new list from an iterable in one expression, optionally filtering items.",
]


def _encoder(embedder) -> SentenceEncoder:
    session = ort.InferenceSession(str(embedder.model), encoder_session_options(), providers=["CPUExecutionProvider"])
    return SentenceEncoder(session, Tokenizer.from_file(str(embedder.tokenizer)), embedder.max_length)


def _torch_fp32_vectors(texts: list[str]) -> np.ndarray:
    """The sentence-transformers recipe computed independently: fp32 model, mean pooling, L2 norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bundler.embedder_export import source_folder

    source = source_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def _pool(embedder, workers: int = 2) -> EmbeddingPool:
    return EmbeddingPool(embedder.model, embedder.tokenizer, embedder.max_length, workers)


def test_exported_embedder_agrees_with_the_fp32_model(shared_embedder):
    ours = _pool(shared_embedder).encode_each(SENTENCES)
    reference = _torch_fp32_vectors(SENTENCES)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.998, cosines  # 0.995 before smoothing; python-docs chunks: mean 0.9995
    # and the sentences stay told apart: each vector is nearest its own reference
    assert list((ours @ reference.T).argmax(axis=1)) == list(range(len(SENTENCES)))


def test_a_chunks_vector_depends_only_on_its_own_text_not_on_the_texts_embedded_with_it(shared_embedder):
    """The int8 embedder scales activations per run; batches made a vector move with its batch-mates."""
    words = "station pump antenna battery diesel valve radio log generator filter".split()
    rng = random.Random(7)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) + f" item {n}" for n in range(40)]
    rng.shuffle(texts)
    one_worker = _pool(shared_embedder, workers=1)
    alone = np.concatenate([one_worker.encode_each([text]) for text in texts])
    together = _pool(shared_embedder, workers=2).encode_each(texts)
    assert together.dtype == np.float32 and together.shape == alone.shape
    assert np.array_equal(together, alone)  # bit for bit, in input order
    assert np.array_equal(one_worker.encode_each(texts[5:9]), alone[5:9])
    # a batched run (the build before) shifts them: what this guards against
    batched = _encoder(shared_embedder).encode(texts)
    assert not np.array_equal(batched, alone) and (batched * alone).sum(axis=1).min() >= 0.98


def test_encode_each_reports_progress_up_to_the_total(shared_embedder):
    seen = []
    texts = SENTENCES * 30  # more than one report interval
    _pool(shared_embedder).encode_each(texts, lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, len(texts)) and seen[-1] == (len(texts), len(texts)) and len(seen) > 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_the_query_side_embeds_a_text_exactly_as_the_index_build_did(shared_embedder, tmp_path):
    """The runtime opens the embedder from the bundle with its own session; a query that repeats a
    chunk's text must get that chunk's vector, bit for bit."""
    dense = tmp_path / layout.DENSE_MODEL
    dense.parent.mkdir(parents=True)
    shutil.copyfile(shared_embedder.model, dense)  # the bundle refuses entries that lead outside it
    shutil.copyfile(shared_embedder.tokenizer, tmp_path / layout.DENSE_TOKENIZER)
    np.save(tmp_path / layout.DENSE_VECTORS, np.zeros((1, 384), dtype=np.int8))
    np.save(tmp_path / layout.DENSE_SCALES, np.ones(1, dtype=np.float32))
    query_side = DenseSearch.from_bundle(DirectoryBundle(tmp_path), shared_embedder.max_length, size=1, threads=1).encoder
    built = _pool(shared_embedder).encode_each(SENTENCES)
    for text, vector in zip(SENTENCES, built):
        assert np.array_equal(query_side.encode([text])[0], vector)


def test_the_exported_embedder_holds_no_float_word_table(shared_embedder):
    """Every bundle carries the embedder: the 30,522 x 384 word table is int8 rows (+ a scale each),
    not 47 MB of float32."""
    import onnx

    model = onnx.load(str(shared_embedder.model))
    floats = [init for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT]
    assert max(int(np.prod(init.dims)) for init in floats) < 30522 * 384 // 10
    assert any(init.data_type == onnx.TensorProto.INT8 and list(init.dims) == [30522, 384] for init in model.graph.initializer)
    assert shared_embedder.model.stat().st_size < 40_000_000


def test_the_quantized_products_read_uint8_weights(shared_embedder):
    """uint8 x uint8 kernels are exact on every CPU; the uint8 x int8 kernel of x86 CPUs without VNNI
    saturates (the same text got another vector on an AVX2 station than on the VNNI builder)."""
    import onnx

    model = onnx.load(str(shared_embedder.model))
    types = {init.name: init.data_type for init in model.graph.initializer}
    weights = [node.input[1] for node in model.graph.node if node.op_type in ("MatMulInteger", "QAttention")]
    assert len(weights) == 18  # per layer: QKV (QAttention), attention output, feed-forward input
    assert all(types[name] == onnx.TensorProto.UINT8 for name in weights)
