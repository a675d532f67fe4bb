"""Index build throughput on a local Ray cluster with 1 and 2 workers, against the local build.

    python bench/bench_ray_build.py [--docs examples/python-docs] [--workers 1,2]

Each build starts from a fresh document cache (the exported embedder is reused), so every document
is parsed and embedded: locally (one process, ONNX Runtime on every core), then on a local Ray
cluster of N worker CPUs (`bundler.ray_build`, one embedder actor per CPU, one thread each). Reports
wall seconds and chunk tokens per wall second, the time to start the cluster apart, and whether the
index equals the local one (BM25 and chunk entries byte for byte, vectors within 1e-6). A real cluster
gains by adding machines; on one shared machine the figures show the overhead of the Ray path.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_record import BenchRecord  # noqa: E402
os.environ["HF_HUB_OFFLINE"] = "1"

from tokenizers import Tokenizer  # noqa: E402

from bundler.embedder_export import export_embedder  # noqa: E402
from bundler.index import build_index  # noqa: E402
from runtime import layout  # noqa: E402

SAME_BYTES = (layout.SETTINGS, layout.CHUNKS, layout.CHUNK_OFFSETS, layout.DOCUMENT_STARTS, layout.BM25_VOCAB,
              layout.BM25_INDPTR, layout.BM25_DOC_IDS, layout.BM25_WEIGHTS)


def fresh_cache(folder: Path, embedder) -> Path:
    (folder / "embedder").mkdir(parents=True)
    (folder / "embedder" / embedder.key).symlink_to(embedder.folder.resolve())
    return folder


def same_index(first: Path, second: Path) -> str:
    """'identical' or what differs: the BM25 and chunk entries byte for byte, vectors within 1e-6."""
    differ = [name for name in SAME_BYTES if (first / name).read_bytes() != (second / name).read_bytes()]
    vectors = [np.load(side / layout.DENSE_VECTORS) * np.load(side / layout.DENSE_SCALES)[:, None] for side in (first, second)]
    gap = float(np.abs(vectors[0] - vectors[1]).max())
    return "identical" if not differ and gap <= 1e-6 else f"differs: {differ}, vectors up to {gap:.2e}"


def chunk_tokens(staging: Path, tokenizer: Tokenizer) -> int:
    texts = [json.loads(line)["text"] for line in (staging / layout.CHUNKS).read_text(encoding="utf-8").splitlines()]
    return sum(len(e.ids) - 2 for e in tokenizer.encode_batch(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=ROOT / "examples" / "python-docs")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "build" / "index", help="builder cache (the exported embedder is reused)")
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2])
    args = parser.parse_args()
    import ray

    from bundler.ray_build import LOCAL, connect

    embedder = export_embedder(args.cache)
    tokenizer = Tokenizer.from_file(str(embedder.tokenizer))
    tokenizer.no_truncation()
    with BenchRecord("ray_build", {k: str(v) for k, v in vars(args).items()}) as record, tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        start = time.perf_counter()
        local = build_index(args.docs, work / "local", fresh_cache(work / "local-cache", embedder))
        local_s = time.perf_counter() - start
        tokens = chunk_tokens(work / "local", tokenizer)
        lines = [f"{args.docs}: {local.info.documents} documents, {local.info.chunks} chunks, {tokens:,} chunk tokens; "
                 f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                 "", "| build | wall s | chunk tokens/s | cluster start s | index |", "|---|---|---|---|---|",
                 f"| local (one process) | {local_s:.1f} | {tokens / local_s:,.0f} | - | reference |"]
        for workers in args.workers:
            start = time.perf_counter()
            connect(LOCAL, cpus=workers)
            started_s = time.perf_counter() - start
            try:
                start = time.perf_counter()
                build_index(args.docs, work / f"ray-{workers}", fresh_cache(work / f"ray-cache-{workers}", embedder), ray=LOCAL)
                build_s = time.perf_counter() - start
            finally:
                ray.shutdown()
            same = same_index(work / "local", work / f"ray-{workers}")
            lines.append(f"| ray, {workers} worker{'s' if workers > 1 else ''} | {build_s:.1f} | {tokens / build_s:,.0f} | {started_s:.1f} | {same} |")
            record.figures[f"ray_{workers}"] = {"build_s": build_s, "tokens_per_s": tokens / build_s, "start_s": started_s, "index": same}
        record.figures["local"] = {"build_s": local_s, "tokens_per_s": tokens / local_s, "tokens": tokens}
        lines.append(f"load average after: {os.getloadavg()[0]:.1f}")
        record.figures["report"] = lines
        print("\n".join(lines))


if __name__ == "__main__":
    main()
