"""Embedding throughput of the index build, and how close the exported embedder's vectors stay.

    python bench/bench_embedding.py [--docs examples/python-docs] [--cache DIR] [--threads 2] [--sample 4]

Builds the index of --docs with a fresh document cache (the exported embedder is reused from --cache)
and reports document tokens embedded per wall second and per CPU second of the build, then the
embedder alone on the same chunk texts: the first recipe (unfused graph, batches of 32 texts sorted by
characters), the exported (smoothed int8) model in token-length batches of one --threads session (the
build's batching until 2026-12-02), and now (the same model, one text per run on --threads
single-threaded sessions, as bundler/embedding_pool.py runs the build). Vectors of every --sample-th chunk are compared, by
cosine, with the fp32 ONNX model and the earlier int8 runs.
Tokens per CPU second is the fairer figure on a shared machine; the load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_record import BenchRecord  # noqa: E402
os.environ["HF_HUB_OFFLINE"] = "1"

import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from bundler.embedder_export import MAX_LENGTH, export_embedder, source_folder  # noqa: E402
from bundler.embedding_pool import EmbeddingPool  # noqa: E402
from bundler.index import build_index, index_text  # noqa: E402
from runtime import layout  # noqa: E402
from runtime.dense_search import SentenceEncoder, encoder_session_options  # noqa: E402
from runtime.retrieval import Chunk  # noqa: E402


def reference_models(work: Path) -> tuple[Path, Path]:
    """(fp32 ONNX, int8 of the previous recipe: quantize_dynamic per channel of the unfused graph)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    main_export(str(source_folder()), work / "fp32", task="feature-extraction", opset=17,
                library_name="transformers", local_files_only=True, do_validation=False)
    logging.disable(logging.WARNING)
    quantize_dynamic(work / "fp32" / "model.onnx", work / "previous-int8.onnx", weight_type=QuantType.QInt8, per_channel=True)
    logging.disable(logging.NOTSET)
    return work / "fp32" / "model.onnx", work / "previous-int8.onnx"


def encoder(model: Path, tokenizer: Path, threads: int) -> SentenceEncoder:
    session = ort.InferenceSession(str(model), encoder_session_options(threads), providers=["CPUExecutionProvider"])
    return SentenceEncoder(session, Tokenizer.from_file(str(tokenizer)), MAX_LENGTH)


def token_length_batches(encoder: SentenceEncoder, texts: list[str], batch_tokens: int = 4096) -> np.ndarray:
    """The build's batching before one text per run: by token length, ~4,096 tokens a batch."""
    lengths = [len(e.ids) for e in encoder.tokenizer.encode_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = np.empty((len(texts), 384), dtype=np.float32)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * lengths[order[stop]] <= batch_tokens:
            stop += 1
        out[order[start:stop]] = encoder.encode([texts[i] for i in order[start:stop]])
        start = stop
    return out


def previous_batching(encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
    """The build's batching before token-length batches: 32 texts at a time, sorted by characters."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), 384), dtype=np.float32)
    for start in range(0, len(order), 32):
        rows = order[start : start + 32]
        out[rows] = encoder.encode([texts[i] for i in rows])
    return out


def timed(run) -> tuple[np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    vectors = run()
    return vectors, time.perf_counter() - wall, time.process_time() - cpu


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    c = (a * b).sum(axis=1)
    return {"min": round(float(c.min()), 5), "mean": round(float(c.mean()), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=ROOT / "examples" / "python-docs")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "build" / "index", help="builder cache (the exported embedder is reused)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample", type=int, default=4, help="compare vectors of every n-th chunk")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    embedder = export_embedder(args.cache)
    with BenchRecord("embedding", vars(args), args.out) as record, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        (cache / "embedder").mkdir(parents=True)
        (cache / "embedder" / embedder.key).symlink_to(embedder.folder.resolve())
        staging = work / "staging"
        _, build_s, build_cpu = timed(lambda: build_index(args.docs, staging, cache))
        records = (staging / layout.CHUNKS).read_text(encoding="utf-8").splitlines()
        texts = [index_text(Chunk.from_record(json.loads(line))) for line in records]
        tokenizer = Tokenizer.from_file(str(embedder.tokenizer))  # truncates at MAX_LENGTH, as the build does
        tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts))
        load = os.getloadavg()[0]
        record.figures["build"] = {"chunks": len(texts), "document_tokens": tokens, "wall_s": round(build_s, 2),
                                   "cpu_s": round(build_cpu, 2), "tokens_per_s": round(tokens / build_s),
                                   "tokens_per_cpu_s": round(tokens / build_cpu), "load_average": load}
        print(f"build of {args.docs.name} (fresh document cache, load average {load:.1f} on {os.cpu_count()} cores): "
              f"{len(texts)} chunks, {tokens:,} tokens, {build_s:.1f} s wall, {build_cpu:.1f} CPU s: "
              f"{tokens / build_s:,.0f} tokens/s wall, {tokens / build_cpu:,.0f} per CPU s")

        fp32_model, previous_model = reference_models(work)
        def one_per_run(model: Path):
            return EmbeddingPool(model, embedder.tokenizer, MAX_LENGTH, args.threads).encode_each

        runs = {
            "previous (unfused int8, 32 texts by characters)": lambda: partial(previous_batching, encoder(previous_model, embedder.tokenizer, args.threads)),
            "smoothed int8, token-length batches (the build before one per run)": lambda: partial(token_length_batches, encoder(embedder.model, embedder.tokenizer, args.threads)),
            "now (smoothed int8, one text per run on --threads sessions)": lambda: one_per_run(embedder.model),
            "fp32 ONNX, one text per run": lambda: one_per_run(fp32_model),
        }
        vectors, record.figures["embedder_alone"] = {}, {}
        for name, make in runs.items():
            run = make()
            run(texts[:8])  # warm up
            vectors[name], wall, cpu = timed(lambda: run(texts))
            load = os.getloadavg()[0]
            record.figures["embedder_alone"][name] = {"tokens_per_s": round(tokens / wall), "tokens_per_cpu_s": round(tokens / cpu),
                                                     "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_average": load}
            print(f"embedder alone, {name}: {tokens / wall:,.0f} tokens/s wall, {tokens / cpu:,.0f} per CPU s (load average {load:.1f})")
        previous, batched, now, fp32 = (vectors[name][:: args.sample] for name in runs)
        record.figures["cosine_on_every_nth_chunk"] = {
            "n": args.sample, "now_vs_fp32": cosines(now, fp32), "batched_vs_fp32": cosines(batched, fp32),
            "now_vs_batched": cosines(now, batched), "now_vs_previous_int8": cosines(now, previous),
            "previous_int8_vs_fp32": cosines(previous, fp32)}
        for name, value in record.figures["cosine_on_every_nth_chunk"].items():
            if name != "n":
                print(f"cosine {name.replace('_', ' ')} (every {args.sample}th chunk): min {value['min']:.4f}, mean {value['mean']:.4f}")


if __name__ == "__main__":
    main()
