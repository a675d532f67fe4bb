"""Parsing and embedding documents on a Ray cluster (Ray Data), for builds too big for one machine.

The driver walks the folder, reads each file and keys it as the local build does; documents missing
from the builder cache go through `map_batches` to a pool of actors (`ActorPoolStrategy`), each of
which loads the ONNX embedder once, parses a document (in a forked child with the same limits) and
embeds each of its chunks on its own, one text per run, exactly as `bundler.index` does. The driver
stores what comes back in the same cache entries; `build_index` then writes the index from the
cache, so BM25 and the index files are the local build's. Ray is an optional extra
(`pip install -e '.[ray]'`), imported only here.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundler.chunking import ChunkingConfig
from bundler.errors import BuildError
from bundler.ingest import SourceFile
from bundler.isolated_parse import ParseLimitExceeded, ParseLimits, run_isolated
from bundler.progress import ProgressCallback, no_progress

LOCAL = "local"  # --ray local: start a Ray instance on this machine
STEP = "parse and embed on ray"


@dataclass
class RemoteWork:
    parsed: int = 0           # documents parsed on the cluster
    embedded: int = 0         # documents embedded on the cluster
    chunks_embedded: int = 0
    workers: int = 0          # actors in the pool


def connect(address: str, cpus: int | None = None) -> None:
    """ray.init for `--ray ADDRESS` (or "local", with `cpus` CPUs: default all of this machine's);
    a session already open (a test's, a bench's) is used as is."""
    ray = _import_ray()
    if ray.is_initialized():
        return
    import bundler
    import runtime

    local = address == LOCAL
    # the driver's own code on every worker: the parse code is part of each document's cache key
    # workers load onnxruntime too: its telemetry must be off there before it loads, as in this process
    code = {"py_modules": [os.path.dirname(bundler.__file__), os.path.dirname(runtime.__file__)],
            "env_vars": {"ORT_DISABLE_TELEMETRY": "1"}}
    ray.init(address=None if local else address, num_cpus=cpus if local else None, runtime_env=code,
             include_dashboard=False if local else None, log_to_driver=False, configure_logging=False)


def prepare_on_ray(
    address: str,
    sources: list[SourceFile],
    cache_dir: Path,
    chunking: ChunkingConfig,
    max_file_bytes: int,
    limits: ParseLimits,
    embed: bool,
    progress: ProgressCallback = no_progress,
) -> RemoteWork:
    """Fills the builder cache with the entries (and vectors) of every document not yet in it.

    The pool has one actor per CPU of the cluster, each running the embedder on one thread. A
    document whose parse hits a limit gets no entry: the local pass meets it again.
    """
    from bundler import index  # the cache layout and the per-document steps of the local build

    ray = _import_ray()
    embedder = None
    if embed:
        from bundler.embedder_export import export_embedder

        embedder = export_embedder(cache_dir, progress)
    folder = index.vectors_folder(cache_dir, embedder.key) if embedder else None
    items = []
    for source in sources:
        raw = source.path.read_bytes()
        key = index.document_key(source, raw, chunking, max_file_bytes)
        entry = index.read_entry(index.entry_path(cache_dir, key))
        needs_vectors = embedder is not None and (entry is None or "skip" not in entry) and \
            index.read_vectors(folder, key, embedder.key) is None
        if entry is None or needs_vectors:
            items.append({"key": key, "relative": source.relative, "format": source.format, "raw": raw})
    if not items:
        return RemoteWork()
    connect(address)
    work = RemoteWork(workers=max(1, int(ray.cluster_resources().get("CPU", 1))))
    # the build reports through `progress`; Ray Data would also log every 10 s where stdout is no terminal
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    dataset = ray.data.from_items(items).map_batches(
        DocumentWorker,
        fn_constructor_kwargs={
            "model": embedder.model.read_bytes() if embedder else None,
            "tokenizer": embedder.tokenizer.read_text(encoding="utf-8") if embedder else None,
            "max_length": embedder.max_length if embedder else 0,
            "chunking": chunking, "max_file_bytes": max_file_bytes, "limits": limits,
        },
        batch_size=1,  # one document per call: its entry and vectors come back together
        compute=ray.data.ActorPoolStrategy(size=work.workers),
        num_cpus=1,
    )
    progress(STEP, 0, len(items))
    for done, row in enumerate(dataset.iter_rows(), start=1):
        progress(STEP, done, len(items))
        if not row["entry"]:
            continue  # parse limit: left to the local pass
        key, entry = row["key"], json.loads(row["entry"])
        if index.read_entry(index.entry_path(cache_dir, key)) is None:
            index.store_entry(cache_dir, key, entry)
            work.parsed += 1
        if row["vectors"]:
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(entry["chunks"]), -1)
            index.store_vectors(folder, key, vectors, embedder.key)
            work.embedded += 1
            work.chunks_embedded += len(vectors)
    return work


class DocumentWorker:
    """A Ray Data actor: the embedder is loaded once, then each batch (one document) is parsed and embedded."""

    def __init__(self, model: bytes | None, tokenizer: str | None, max_length: int, chunking: ChunkingConfig,
                 max_file_bytes: int, limits: ParseLimits):
        self.encoder = None
        if model is not None:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            from runtime.dense_search import SentenceEncoder, encoder_session_options

            options = encoder_session_options(threads=1)  # one actor per CPU
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            self.encoder = SentenceEncoder(session, Tokenizer.from_str(tokenizer), max_length)
        self.chunking, self.max_file_bytes, self.limits = chunking, max_file_bytes, limits

    def __call__(self, batch: dict) -> dict:
        from bundler import index
        from runtime.retrieval import Chunk, SourceSpan

        out: dict[str, list] = {"key": [], "entry": [], "vectors": []}
        for key, relative, form, raw in zip(batch["key"], batch["relative"], batch["format"], batch["raw"]):
            source = SourceFile(Path(relative), str(relative), str(form))
            try:
                entry = run_isolated(index.parse_document, (source, bytes(raw), self.chunking, self.max_file_bytes), self.limits)
            except ParseLimitExceeded:
                out["key"].append(key), out["entry"].append(""), out["vectors"].append(b"")
                continue
            vectors = b""
            if self.encoder is not None and "skip" not in entry:
                texts = [index.index_text(Chunk(0, c["text"], SourceSpan(path=source.relative, **{k: v for k, v in c.items() if k != "text"})))
                         for c in entry["chunks"]]
                vectors = np.ascontiguousarray(self.encoder.encode_many(texts), dtype=np.float32).tobytes()
            out["key"].append(key), out["entry"].append(json.dumps(entry, ensure_ascii=False)), out["vectors"].append(vectors)
        return {name: np.array(values, dtype=object) for name, values in out.items()}


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the ray[data] extra)
    except ImportError:
        raise BuildError(None, "--ray needs Ray Data on this machine and the workers: "
                               "pip install -e '.[ray]' (ray[data]==2.60.0)") from None
    return ray
