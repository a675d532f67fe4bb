"""Retrieval benchmark: quality per mode on two sets, query latency, build throughput, index size.

    python bench/bench_retrieval.py [--data ../shared/data] [--synthetic 100000,1000000] [--no-cranfield]
                                    [--no-python-faq] [--threads 2] [--queries N]

Prints nDCG@10, R@10, R@100 of document rankings for bm25 / dense / hybrid as the runtime ranks
them, and for alternative fusions and passage aggregations, on Cranfield (graded gains 5 - grade;
the set the settings were chosen on) and on the Python docs sections with the FAQ questions
(bench/python_faq_set.py; a set not used to choose them), query latency p50/p95 at Cranfield size and, on synthetic indexes, p50/p95, CPU time per query
and the search process's peak and current RSS (anonymous vs mapped file pages), build throughput in document
tokens per second (parsing, chunking, BM25 and embeddings; the one-off embedder export excluded)
and index bytes per chunk.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_record import BenchRecord  # noqa: E402
from python_faq_set import python_faq_set  # noqa: E402
os.environ["HF_HUB_OFFLINE"] = "1"

from tokenizers import Tokenizer  # noqa: E402

from bundler.chunking import ChunkingConfig  # noqa: E402
from bundler.embedder_export import export_embedder  # noqa: E402
from bundler.embedding_pool import EmbeddingPool  # noqa: E402
from bundler.index import build_index  # noqa: E402
from bundler.index_bm25 import write_postings  # noqa: E402
from runtime import layout  # noqa: E402
from runtime.bundle import Bundle  # noqa: E402
from bundler.index import DENSE_WEIGHT  # noqa: E402
from runtime.dense_search import quantize_vectors  # noqa: E402
from runtime.retrieval import FUSION_CANDIDATES, Candidates, Retriever, fuse, top_k  # noqa: E402
from runtime.text_terms import ANALYZER, terms  # noqa: E402

MODES = ("bm25", "dense", "hybrid")


def read_fields(path: Path) -> list[dict[str, str]]:
    records, field = [], None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        marker = re.match(r"^\.([ITABW])\b\s*(.*)$", line)
        if marker:
            field = marker.group(1)
            if field == "I":
                records.append({"I": marker.group(2).strip()})
            else:
                records[-1][field] = ""
            continue
        if field and field != "I":
            records[-1][field] += line + "\n"
    return records


def cranfield(data: Path):
    docs = {r["I"]: r.get("W", "") for r in read_fields(data / "cran.all.1400")}
    queries = {str(n): r["W"].replace("\n", " ").strip() for n, r in enumerate(read_fields(data / "cran.qry"), start=1)}
    qrels = []
    for line in (data / "cranqrel").read_text().split("\n"):
        parts = line.split()
        if len(parts) == 3:
            grade = int(parts[2])
            qrels.append((parts[0], parts[1], 5 - grade if 1 <= grade <= 4 else 0))
    return docs, queries, qrels


def doc_run(qid: str, ranked_docs: np.ndarray) -> list:
    """Ranked document ids (repeats allowed: a document ranks at its first place), top 100."""
    import ir_measures
    seen: list[str] = []
    for doc in ranked_docs:
        if doc and doc not in seen:
            seen.append(str(doc))
            if len(seen) == 100:
                break
    return [ir_measures.ScoredDoc(qid, doc, 100.0 - rank) for rank, doc in enumerate(seen)]


def rrf(first: np.ndarray, second: np.ndarray, k: int, constant: int = 60) -> np.ndarray:
    """Reciprocal rank fusion of two rankings (ids best first): the best k ids."""
    fused: dict[int, float] = {}
    for ranking in (first, second):
        for rank, chunk in enumerate(ranking):
            fused[int(chunk)] = fused.get(int(chunk), 0.0) + 1.0 / (constant + rank + 1)
    return np.array(sorted(fused, key=lambda c: (-fused[c], c))[:k])


def percentiles(samples: tuple[list[float], list[float]]) -> str:
    wall, cpu = (np.array(s) * 1000 for s in samples)
    return (f"p50 {np.percentile(wall, 50):6.2f} ms  p95 {np.percentile(wall, 95):6.2f} ms"
            f"  (CPU time of all threads per query: p50 {np.percentile(cpu, 50):6.2f} ms)")


def fuse_arrays(bm25: np.ndarray, dense: np.ndarray, dense_weight: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """fuse() of two scores for every passage, over the same candidates as a search."""
    depth = max(FUSION_CANDIDATES, k)
    return fuse(Candidates.of(bm25, depth, positive_only=True), Candidates.of(dense, depth), dense_weight, k)


def time_queries(retriever: Retriever, queries: list[str], mode: str, k: int = 10) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per query. On a shared machine the CPU time shows the work itself."""
    retriever.search(queries[0], k, mode)  # warm caches and the ONNX session
    wall, cpu = [], []
    for query in queries:
        start, start_cpu = time.perf_counter(), time.process_time()
        retriever.search(query, k, mode)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def time_parts(retriever: Retriever, queries: list[str]) -> str:
    """p50 of each step of a hybrid query, to show where the time goes on a loaded machine."""
    encoder, dense = retriever.dense.encoder, retriever.dense
    parts: dict[str, list[float]] = {"encode query": [], "bm25 scores": [], "dense scores": [], "fusion": []}
    for query in queries:
        t0 = time.perf_counter()
        vector = encoder.encode([query])[0]
        t1 = time.perf_counter()
        bm25 = retriever.bm25.scores(query)
        t2 = time.perf_counter()
        best = dense.best(vector, FUSION_CANDIDATES)
        t3 = time.perf_counter()
        fuse(Candidates.of(bm25, FUSION_CANDIDATES, positive_only=True),
             Candidates(*best, lambda ids: dense.exact(vector, ids)), retriever.dense_weight, FUSION_CANDIDATES)
        t4 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[name].append(seconds)
    return f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) p50 of the steps: " + ", ".join(f"{name} {np.median(v) * 1000:.2f} ms" for name, v in parts.items())


def embedder_reference(retriever: Retriever, tokenizer: Tokenizer, embedder) -> tuple[float, float]:
    """Throughput of the bare int8 embedder on chunk texts, run as the build runs them."""
    texts = [retriever.chunks[i].text for i in range(0, len(retriever.chunks), 5)]
    tokens = sum(len(e.ids) - 2 for e in tokenizer.encode_batch(texts))
    pool = EmbeddingPool(embedder.model, embedder.tokenizer, embedder.max_length)
    start, cpu = time.perf_counter(), time.process_time()
    pool.encode_each(texts)
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


def index_bytes(staging: Path) -> tuple[dict[str, int], int]:
    """(bytes of each per-chunk entry, fixed bytes of the embedder, its tokenizer and the settings)."""
    fixed = {layout.DENSE_MODEL, layout.DENSE_TOKENIZER, layout.SETTINGS}
    data = {p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted((staging / "index").rglob("*"))
            if p.is_file() and p.relative_to(staging).as_posix() not in fixed}
    return data, sum((staging / name).stat().st_size for name in fixed)


def build_collection(docs: dict[str, str], folder: Path, cache: Path, chunking: ChunkingConfig):
    """Each document as <name>.txt, indexed with a fresh document cache (the exported embedder reused):
    (staging folder, first build's IndexResult, its wall and CPU seconds)."""
    docs_dir = folder / "docs"
    docs_dir.mkdir(parents=True)
    for name, text in docs.items():
        (docs_dir / f"{name}.txt").write_text(text, encoding="utf-8")
    embedder = export_embedder(cache)
    build_cache = folder / "build-cache"
    (build_cache / "embedder").mkdir(parents=True)
    (build_cache / "embedder" / embedder.key).symlink_to(embedder.folder.resolve())
    staging = folder / "staging"
    start, cpu = time.perf_counter(), time.process_time()
    result = build_index(docs_dir, staging, build_cache, chunking=chunking)
    build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu
    return staging, result, build_s, build_cpu


def document_best(scores: np.ndarray, document: np.ndarray, documents: int, floor: float) -> np.ndarray:
    """Each document's best passage score (max-passage); `floor` for a document without passages."""
    best = np.full(documents, floor, dtype=np.float64)
    np.maximum.at(best, document, scores)
    return best


def best_plus_second(scores: np.ndarray, document: np.ndarray, documents: int, floor: float, weight: float) -> np.ndarray:
    """Best passage score plus `weight` times the second best (an alternative aggregation, measured)."""
    order = np.lexsort((-scores, document))
    grouped = document[order]
    first = np.r_[True, grouped[1:] != grouped[:-1]]
    second = order[~first][np.r_[True, grouped[~first][1:] != grouped[~first][:-1]]] if (~first).any() else order[:0]
    total = document_best(scores, document, documents, floor)
    total[document[second]] += weight * np.maximum(scores[second], 0)
    return total


def quality_table(title: str, retriever: Retriever, queries: dict[str, str], qrels: list[tuple[str, str, int]],
                  name_of: callable) -> list[str]:
    """nDCG@10, R@10, R@100 of document rankings: each mode as the runtime returns it (a document
    ranks by its best passage) and the alternatives measured against it. name_of: chunk path ->
    document id of the qrels."""
    import ir_measures
    from ir_measures import R, nDCG

    measures = [nDCG @ 10, R @ 10, R @ 100]
    starts = retriever.document_starts
    documents = len(starts) - 1
    document = np.searchsorted(starts, np.arange(len(retriever.chunks)), side="right") - 1
    names = np.array([name_of(retriever.chunks[int(starts[d])].source.path) if starts[d] < starts[d + 1] else ""
                      for d in range(documents)])
    ours = f"ours: weighted z-score (dense {DENSE_WEIGHT}), max-passage"
    runs: dict[str, list] = {}
    for qid, query in queries.items():
        bm25, dense = retriever.bm25.scores(query), retriever.dense.scores(query)
        doc_bm25, doc_dense = document_best(bm25, document, documents, 0.0), document_best(dense, document, documents, -1.0)
        rankings = {}
        for mode, label in (("bm25", "bm25"), ("dense", "dense (all-MiniLM-L6-v2)"), ("hybrid", ours)):
            hits = retriever.search(query, 100, mode)
            rankings[label] = document[[h.chunk.id for h in hits]]
        rankings["reciprocal rank fusion (k 60) of the passage lists, max-passage"] = document[
            rrf(top_k(bm25, 1000, positive_only=True), top_k(dense, 1000), 300)]
        for constant in (10, 60):
            rankings[f"reciprocal rank fusion (k {constant}) of the document lists (max-passage each)"] = rrf(
                top_k(doc_bm25, 1000, positive_only=True), top_k(doc_dense, 1000), 100, constant)
        for weight in (0.5, 0.8):
            rankings[f"weighted z-score (dense {weight}), max-passage"] = document[fuse_arrays(bm25, dense, weight, 300)[0]]
        rankings[f"weighted z-score (dense {DENSE_WEIGHT}) of the document lists (max-passage each)"] = \
            fuse_arrays(doc_bm25, doc_dense, DENSE_WEIGHT, 100)[0]
        rankings[f"weighted z-score (dense {DENSE_WEIGHT}), best passage + 0.1 x second"] = fuse_arrays(
            best_plus_second(bm25, document, documents, 0.0, 0.1), best_plus_second(dense, document, documents, -1.0, 0.1),
            DENSE_WEIGHT, 100)[0]
        for label, ranking in rankings.items():
            runs.setdefault(label, []).extend(doc_run(qid, names[ranking]))
    judged = [ir_measures.Qrel(*qrel) for qrel in qrels]
    lines = [title, "", "| mode | nDCG@10 | R@10 | R@100 |", "|---|---|---|---|"]
    for label, run in runs.items():
        scores = ir_measures.calc_aggregate(measures, judged, run)
        lines.append(f"| {label} | " + " | ".join(f"{scores[m]:.3f}" for m in measures) + " |")
    return lines


def bench_cranfield(data: Path, cache: Path, work: Path, threads: int, chunking: ChunkingConfig) -> list[str]:
    docs, queries, qrels = cranfield(data)
    embedder = export_embedder(cache)
    tokenizer = Tokenizer.from_file(str(embedder.tokenizer))
    tokenizer.no_truncation()
    tokens = sum(len(e.ids) - 2 for e in tokenizer.encode_batch(list(docs.values())))
    staging, result, build_s, build_cpu = build_collection({f"{int(d):04d}": t for d, t in docs.items()}, work / "cranfield", cache, chunking)
    start = time.perf_counter()
    rebuild = build_index(work / "cranfield" / "docs", staging, work / "cranfield" / "build-cache", chunking=chunking)
    rebuild_s = time.perf_counter() - start

    retriever = Retriever.from_bundle(Bundle.open(staging), threads=threads)
    lines = quality_table(f"Cranfield: {len(docs)} documents, {result.info.chunks} chunks, {len(queries)} queries, {tokens} document tokens",
                          retriever, queries, qrels, lambda path: str(int(Path(path).stem)))
    lines.append("")
    for mode in MODES:
        lines.append(f"latency {mode:6s} at {result.info.chunks} chunks, k=10: " + percentiles(time_queries(retriever, list(queries.values()), mode)))
    lines.append(time_parts(retriever, list(queries.values())))
    reference = embedder_reference(retriever, tokenizer, embedder)
    data_bytes, fixed = index_bytes(staging)
    lines += [
        "",
        f"build (fresh cache): {build_s:.1f} s wall, {tokens / build_s:,.0f} document tokens/s "
        f"({build_cpu:.1f} CPU s; parsed {result.parsed}, embedded {result.chunks_embedded} chunks)",
        f"  reference, the embedder alone on every 5th chunk: {reference[0]:,.0f} tokens/s wall, {reference[1]:,.0f} per CPU s; "
        f"build per CPU s: {tokens / build_cpu:,.0f} ({tokens / build_cpu / reference[1]:.2f}x the embedder alone)",
        f"rebuild, nothing changed: {rebuild_s:.1f} s (parsed {rebuild.parsed}, embedded {rebuild.chunks_embedded} chunks)",
        f"index bytes per chunk: {sum(data_bytes.values()) / result.info.chunks:,.0f} "
        f"(plus {fixed / 1e6:.1f} MB embedder model + tokenizer, once): "
        + ", ".join(f"{name.removeprefix('index/')} {size / result.info.chunks:,.0f}" for name, size in data_bytes.items()),
    ]
    return lines


def bench_python_faq(examples: Path, questions: Path, cache: Path, work: Path, threads: int, chunking: ChunkingConfig) -> list[str]:
    """The second set, not used to choose any setting (bench/python_faq_set.py)."""
    docs, queries, qrels = python_faq_set(examples, questions)
    staging, result, _, _ = build_collection(docs, work / "python-faq", cache, chunking)
    retriever = Retriever.from_bundle(Bundle.open(staging), threads=threads)
    title = (f"Python docs sections + FAQ questions: {len(docs)} documents, {result.info.chunks} chunks, "
             f"{len(queries)} queries, {len(qrels)} relevant (query, section) pairs")
    return quality_table(title, retriever, queries, qrels, lambda path: Path(path).stem)


def synthetic_postings(words: np.ndarray, chunks: int, rng: np.random.Generator, staging: Path) -> list[str]:
    """BM25 entries for chunks of 60-180 words drawn from Cranfield's word distribution, built with
    NumPy a slice at a time (a Counter per chunk would need ~10 GB at 1M chunks); returns the
    first words of each chunk as its record text."""
    unique, word_ids = np.unique(words, return_inverse=True)
    analysed = [terms(str(w)) for w in unique]
    vocab = {t: i for i, t in enumerate(sorted({a[0] for a in analysed if a}))}
    term_of_word = np.array([vocab[a[0]] if a else -1 for a in analysed], dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lengths, heads = np.zeros(chunks), []
    for first in range(0, chunks, 50_000):
        count = min(50_000, chunks - first)
        sizes = rng.integers(60, 180, size=count)
        picks = word_ids[rng.integers(0, len(words), size=int(sizes.sum()))]
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        heads += [" ".join(unique[picks[a : a + 12]]) for a in starts]
        term = term_of_word[picks]
        doc = np.repeat(np.arange(first, first + count, dtype=np.int64), sizes)
        keep = term >= 0
        lengths[first : first + count] = np.bincount(doc[keep] - first, minlength=count)
        keys, tf = np.unique(doc[keep] * len(vocab) + term[keep], return_counts=True)  # sorted by chunk, then term
        parts.append(((keys % len(vocab)).astype(np.int32), (keys // len(vocab)).astype(np.int32), tf.astype(np.float32)))
    term_ids, doc_ids, tf = (np.concatenate(column) for column in zip(*parts))
    del parts
    write_postings(vocab, term_ids, doc_ids, tf, lengths, staging)
    return heads


def build_synthetic(data: Path, cache: Path, work: Path, chunks: int) -> Path:
    """A large index from Cranfield's own word distribution and random unit vectors."""
    docs, _, _ = cranfield(data)
    words = np.array(" ".join(docs.values()).split())
    rng = np.random.default_rng(0)
    staging = work / f"synthetic-{chunks}"
    (staging / "index" / "dense").mkdir(parents=True)
    heads = synthetic_postings(words, chunks, rng, staging)
    offsets = [0]
    with open(staging / layout.CHUNKS, "wb") as out:
        for i, text in enumerate(heads):
            record = {"id": i, "text": text, "path": f"synthetic/{i // 100}.txt", "line_start": 1, "line_end": 1,
                      "page": None, "heading": "", "char_start": 0, "char_end": len(text)}
            line = json.dumps(record).encode() + b"\n"
            out.write(line)
            offsets.append(offsets[-1] + len(line))
    np.save(staging / layout.CHUNK_OFFSETS, np.array(offsets, dtype=np.int64))
    np.save(staging / layout.DOCUMENT_STARTS, np.r_[np.arange(0, chunks, 100), chunks].astype(np.int64))  # 100 chunks a file
    vectors = np.lib.format.open_memmap(staging / layout.DENSE_VECTORS, mode="w+", dtype=np.int8, shape=(chunks, 384))
    scales = np.zeros(chunks, dtype=np.float32)
    for first in range(0, chunks, 50_000):
        block = rng.standard_normal((min(50_000, chunks - first), 384)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[first : first + len(block)], scales[first : first + len(block)] = quantize_vectors(block)
    vectors.flush()
    del vectors
    np.save(staging / layout.DENSE_SCALES, scales)
    embedder = export_embedder(cache)
    shutil.copyfile(embedder.model, staging / layout.DENSE_MODEL)
    shutil.copyfile(embedder.tokenizer, staging / layout.DENSE_TOKENIZER)
    settings = {"format": layout.FORMAT, "analyzer": ANALYZER, "modes": ["bm25", "dense"],
                "dense": {"max_length": 256}, "fusion": {"dense_weight": DENSE_WEIGHT}}
    (staging / layout.SETTINGS).write_text(json.dumps(settings))
    return staging


def memory_mb() -> dict[str, float]:
    """This process's memory from /proc: peak and current resident set, split into anonymous
    (heap: what the search allocated) and file-backed (mapped index pages, reclaimable)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def measure_synthetic(staging: Path, data: Path, threads: int, count: int | None = None) -> dict:
    """Run in a fresh process so that peak RSS is the search's own, not the index build's."""
    _, queries, _ = cranfield(data)
    queries = dict(list(queries.items())[:count])
    before = memory_mb()
    start = time.perf_counter()
    retriever = Retriever.from_bundle(Bundle.open(staging), threads=threads)
    report = {"open_s": time.perf_counter() - start, "queries": len(queries), "memory_before_open_mb": before,
              "memory_after_open_mb": memory_mb()}
    for mode in MODES:
        wall, cpu = time_queries(retriever, list(queries.values()), mode)
        report[mode] = {"p50_ms": float(np.percentile(wall, 50)) * 1000, "p95_ms": float(np.percentile(wall, 95)) * 1000,
                        "cpu_p50_ms": float(np.percentile(cpu, 50)) * 1000}
    report["steps"] = time_parts(retriever, list(queries.values()))
    report["memory_after_queries_mb"] = memory_mb()
    return report


def bench_synthetic(data: Path, cache: Path, work: Path, chunks: int, threads: int, count: int | None) -> tuple[list[str], dict]:
    start = time.perf_counter()
    staging = build_synthetic(data, cache, work, chunks)
    built_s = time.perf_counter() - start
    child = subprocess.run([sys.executable, __file__, "--measure", str(staging), "--data", str(data.parent), "--threads", str(threads)]
                           + (["--queries", str(count)] if count else []),
                           capture_output=True, text=True, check=True)
    report = json.loads(child.stdout.strip().splitlines()[-1])
    shutil.rmtree(staging)
    memory, opened = report["memory_after_queries_mb"], report["memory_after_open_mb"]
    lines = ["", f"synthetic index, {chunks:,} chunks (built in {built_s:.0f} s), opened in {report['open_s']:.2f} s, {report['queries']} queries, "
             f"{threads} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"]
    for mode in MODES:
        m = report[mode]
        lines.append(f"  latency {mode:6s} k=10: p50 {m['p50_ms']:7.2f} ms  p95 {m['p95_ms']:7.2f} ms  CPU p50 {m['cpu_p50_ms']:7.2f} ms")
    lines.append(report["steps"])
    lines.append(f"  search RSS: peak {memory['VmHWM']:.0f} MB; after the queries {memory['VmRSS']:.0f} MB = "
                 f"{memory['RssAnon']:.0f} MB anonymous + {memory['RssFile']:.0f} MB mapped file pages "
                 f"(after opening: {opened['RssAnon']:.0f} + {opened['RssFile']:.0f} MB)")
    return lines, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder holding cranfield/")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "build" / "index", help="builder cache (the exported embedder is reused)")
    parser.add_argument("--synthetic", type=lambda text: [int(n) for n in text.split(",") if n], default=[100_000, 1_000_000],
                        help="comma-separated chunk counts of synthetic latency indexes (empty: skip)")
    parser.add_argument("--no-cranfield", action="store_true", help="only the synthetic latency indexes (and the Python FAQ set)")
    parser.add_argument("--no-python-faq", action="store_true", help="leave out the second quality set (Python docs + FAQ)")
    parser.add_argument("--threads", type=int, default=2, help="threads for query encoding and dense scoring")
    parser.add_argument("--max-tokens", type=int, default=ChunkingConfig.max_tokens, help="chunk budget")
    parser.add_argument("--overlap-tokens", type=int, default=ChunkingConfig.overlap_tokens, help="chunk overlap")
    parser.add_argument("--queries", type=int, default=None, help="time only the first N Cranfield queries on the synthetic indexes")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: time one synthetic index
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_synthetic(args.measure, args.data / "cranfield", args.threads, args.queries)))
        return
    with BenchRecord("retrieval", vars(args)) as record, tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        chunking = ChunkingConfig(args.max_tokens, args.overlap_tokens)
        record.figures["report"] = []
        if not args.no_cranfield:
            for line in bench_cranfield(args.data / "cranfield", args.cache, work, args.threads, chunking):
                print(line, flush=True)
                record.figures["report"].append(line)
        if not args.no_python_faq:
            for line in ["", *bench_python_faq(ROOT / "examples" / "python-docs", ROOT / "bench" / "data" / "python_faq_qa.jsonl",
                                               args.cache, work, args.threads, chunking)]:
                print(line, flush=True)
                record.figures["report"].append(line)
        for chunks in args.synthetic:
            lines, report = bench_synthetic(args.data / "cranfield", args.cache, work, chunks, args.threads, args.queries)
            record.figures[f"synthetic_{chunks}"] = report
            for line in lines:
                print(line, flush=True)
                record.figures["report"].append(line)


if __name__ == "__main__":
    main()
