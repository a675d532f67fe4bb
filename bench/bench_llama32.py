"""Llama-3.2-shaped models at their real size against llama.cpp on the same GGUF (2 threads).

For each GGUF made by llama.cpp's own quantizer (bench/llama32_models.py): file size, peak RSS with a
4,096-token context, prefill of 1,500 tokens, plain greedy decode, and a 520-token prompt plus 128 new
tokens end to end; ratios to llama.cpp measured in the same run, each engine in its own process.
`--builds` also measures `build.py` itself under /usr/bin/time -v (wall time, peak RSS, executable
size) on the Q4_K_M GGUF and the Hugging Face folder. The default model's Q4_K_M perplexity against
llama.cpp is bench/bench_wiki_ppl.py.

    python bench/bench_llama32.py [--shape 1b] [--types Q4_K_M,Q6_K,Q8_0] [--builds]

Random weights draft nothing useful, so speculation is measured on the default model (bench_fused.py).
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench_record import BenchRecord  # noqa: E402
import bench_fused  # noqa: E402
import llama32_models  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LLAMA = bench_fused.LLAMA
OURS = "ours"
# Two short documents: the build figures are about the model, not the index.
BUILD_DOCS = {"pump.md": "# Pump P-7\n\nPrime the pump by opening valve V12 for 30 seconds, then start it.\n",
              "shifts.txt": "The night shift checks the coolant level at 02:00 and writes it in the log book.\n"}


def build_ours(gguf: Path) -> Path:
    """The fused graph of `gguf` (exact blocks), built once per file and exporter code."""
    from bundler.code_digest import code_digest

    folder = gguf.with_name(f"{gguf.stem}.onnx-{code_digest('bundler.fused_export')[:12]}")
    if not (folder / "model" / "model.onnx").is_file():
        work = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        script = ("import sys; from bundler.fused_export import build_fused_model; "
                  "build_fused_model(sys.argv[1], 'gguf-exact', sys.argv[2])")
        subprocess.run([sys.executable, "-c", script, str(gguf), str(work)], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(work, folder)
    return folder / "model"


# ---- worker: one engine, one file, in its own process ----------------------------------------

def speed_worker(args) -> dict:
    from runtime.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.from_folder(args.tokenizer)
    ids = bench_fused.wiki_ids(Path(args.data), tokenizer, args.prefill)
    start = time.perf_counter()
    if args.engine == LLAMA:
        engine = bench_fused.LlamaEngine(Path(args.gguf), args.threads, args.context)
    else:
        engine = bench_fused.OurEngine(Path(args.model_dir), args.threads, args.context)
    result = {"load_seconds": time.perf_counter() - start}
    engine.prefill(ids[:16])  # first-call costs (allocations, prepacking) out of the figures
    start = time.perf_counter()
    engine.prefill(ids[:args.prefill])
    result[f"prefill{args.prefill}"] = args.prefill / (time.perf_counter() - start)
    # Random weights never stop on their own: exactly args.new tokens, the first from the prefill.
    start = time.perf_counter()
    first = engine.prefill(ids[:args.prompt])
    middle = time.perf_counter()
    tokens = engine.plain(first, args.new, frozenset())
    end = time.perf_counter()
    result["decode"] = (len(tokens) - 1) / (end - middle)
    result["e2e_seconds"] = end - start
    result["e2e"] = len(tokens) / (end - start)
    result["rss"] = bench_fused.peak_rss_mb()
    return result


def run_worker(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise RuntimeError(f"worker {argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(files: dict[str, Path], types: list[str], args) -> dict:
    results = {}
    for kind in types:
        model_dir = build_ours(files[kind])
        common = ["--worker", "--gguf", str(files[kind]), "--model-dir", str(model_dir), "--tokenizer",
                  str(model_dir), "--data", str(args.data), "--threads", str(args.threads), "--context",
                  str(args.context), "--prefill", str(args.prefill), "--prompt", str(args.prompt),
                  "--new", str(args.new)]
        row = {}
        for engine in (LLAMA, OURS):
            row[engine] = run_worker([*common, "--engine", engine])
            print(f"# {kind} {engine}: {json.dumps(row[engine])}", file=sys.stderr, flush=True)
        row[LLAMA]["mb"] = files[kind].stat().st_size / 1e6
        # the graph, its weights and the K-quant heads (runtime/kquant_expand.py): not the tokenizer files
        row[OURS]["mb"] = sum(f.stat().st_size for f in model_dir.iterdir()
                              if f.name.startswith(("model.onnx", "kquant."))) / 1e6
        results[kind] = row
    return results


def report_speed(results: dict, args) -> None:
    rows = [("file MB (≤1.15×)", "mb", True), (f"peak RSS MB, context {args.context} (≤1.2×)", "rss", True),
            (f"prefill tok/s, {args.prefill} tokens (≥2.0×)", f"prefill{args.prefill}", False),
            ("plain greedy decode tok/s (≥1.0×)", "decode", False),
            (f"{args.prompt}-token prompt + {args.new} new, end to end tok/s (≥1.4×)", "e2e", False),
            ("model load seconds (no target)", "load_seconds", True)]
    print(f"threads {args.threads}; ratio = ours / llama.cpp on the same file")
    print("| figure | " + " | ".join(f"{k} llama.cpp | {k} ours" for k in results) + " |")
    print("|---" * (1 + 2 * len(results)) + "|")
    for label, key, _ in rows:
        cells = []
        for row in results.values():
            base, ours = row[LLAMA][key], row[OURS][key]
            cells += [f"{base:.1f}", f"{ours:.1f} ({ours / base:.2f}×)"]
        print(f"| {label} | " + " | ".join(cells) + " |")


# ---- build figures ---------------------------------------------------------------------------

def measure_build(model: Path, label: str) -> dict:
    """build.py on `model` under /usr/bin/time -v, with a fresh model cache (the export is measured)."""
    with tempfile.TemporaryDirectory(prefix="bench-llama32-build.") as tmp:
        cache = Path(tmp) / "cache"
        shared_stubs = REPO / ".cache" / "build" / "stubs"
        if shared_stubs.is_dir():  # the runtime stub is not what this measures
            cache.mkdir()
            os.symlink(shared_stubs, cache / "stubs")
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for name, text in BUILD_DOCS.items():
            (docs / name).write_text(text, encoding="utf-8")
        out = Path(tmp) / f"bundle-{label}"
        command = ["/usr/bin/time", "-v", sys.executable, str(REPO / "build.py"), "--model", str(model),
                   "--docs", str(docs), "-o", str(out), "--cache-dir", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            raise RuntimeError(f"build of {model} failed:\n{done.stderr[-3000:]}")
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
        seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
        return {"model": model.name, "wall_s": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024),
                "executable_mb": round(out.stat().st_size / 1e6, 1), "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(llama32_models.SHAPES), default="1b")
    parser.add_argument("--types", default="Q4_K_M,Q6_K,Q8_0", help="GGUF types to compare ('' for none)")
    parser.add_argument("--builds", action="store_true", help="also measure build.py on Q4_K_M and the HF folder")
    parser.add_argument("--data", type=Path, default=bench_fused.DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--prefill", type=int, default=1500)
    parser.add_argument("--prompt", type=int, default=520)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--engine", choices=[LLAMA, OURS])
    parser.add_argument("--gguf")
    parser.add_argument("--model-dir")
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(speed_worker(args)))
        return
    shape = llama32_models.SHAPES[args.shape]
    types = [t for t in args.types.split(",") if t]
    # one results file per shape and set of types, so a run of one type does not replace another's
    with BenchRecord(f"llama32-{args.shape}-{'-'.join(types) or 'builds'}", vars(args)) as record:
        files = llama32_models.ensure_models(shape, sorted(set(types) | ({"Q4_K_M"} if args.builds else set())),
                                             progress=lambda line: print(line, file=sys.stderr, flush=True))
        if types:
            record.figures["speed"] = compare(files, types, args)
            report_speed(record.figures["speed"], args)
        if args.builds:
            record.figures["builds"] = [measure_build(files["Q4_K_M"], "gguf"), measure_build(files["hf"], "hf")]
            for build in record.figures["builds"]:
                print(f"build {build['model']}: {build['wall_s']:.0f} s, peak RSS {build['peak_rss_mb']} MB, "
                      f"executable {build['executable_mb']} MB")


if __name__ == "__main__":
    main()
