"""WikiText-2 perplexity of the default model's Q4_K_M file: our runtime against llama.cpp on the same file.

The package ships SmolLM2-135M-Instruct as Q4_1 only; llama.cpp's quantizer makes the Q4_K_M from it
with `--allow-requantize` (it dequantizes the Q4_1 blocks to fp32 and quantizes those), as a user
holding only that file would. Our side is the graph a build makes from that GGUF (fused, gguf-exact).

Protocol, llama.cpp's `llama-perplexity` (the model adds no BOS, so chunks are the plain ids): the
whole of wiki.test.raw tokenized once, cut into non-overlapping windows of --ppl-context tokens, each
window evaluated from an empty cache; "second half" scores the last half of each window's predictions
as llama-perplexity does, "full window" every prediction in it. Both engines get the same ids, after a
check that llama.cpp's tokenizer and ours tokenize the text identically. Each engine runs in its own
process. Perplexity does not depend on the thread count (the same figures with 1 and 2 threads); on a
loaded machine `--threads 1` keeps llama.cpp's spinning worker threads from crawling.

    python bench/bench_wiki_ppl.py [--windows 0 (all)] [--ppl-context 512] [--gguf FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench_record import BenchRecord  # noqa: E402
import bench_fused  # noqa: E402
import llama32_models  # noqa: E402

LLAMA, OURS = bench_fused.LLAMA, "ours"
WIKI = Path("wikitext-2") / "wiki.test.raw"


def default_q4_k_m() -> Path:
    """The default model's Q4_K_M, requantized from the packaged Q4_1 by llama.cpp's quantizer (made once)."""
    from bundler.model_source import default_model_path

    gguf = llama32_models.CACHE / "smollm2-135m" / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    if not gguf.is_file():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        llama32_models.quantize(default_model_path(), gguf, "Q4_K_M")
    return gguf


def token_ids(gguf: Path, tokenizer_dir: Path, text: str) -> np.ndarray:
    """Our tokenizer's ids for `text`, after checking llama.cpp's tokenizer gives the same ones."""
    import llama_cpp
    from runtime.tokenizer import ChatTokenizer

    ours = ChatTokenizer.from_folder(tokenizer_dir).encode(text)
    vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    theirs = vocab.tokenize(text.encode("utf-8"), add_bos=vocab.metadata.get("tokenizer.ggml.add_bos_token") == "true",
                            special=False)
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise SystemExit(f"tokenizers differ at id {first} of {len(ours)}/{len(theirs)}: ours "
                         f"{ours[first:first + 8]}, llama.cpp {theirs[first:first + 8]}")
    return np.asarray(ours, dtype=np.int64)


# ---- worker: one engine scores the windows ------------------------------------------------------

def score_worker(args) -> dict:
    ids = np.load(args.ids)
    context = args.ppl_context
    if args.engine == LLAMA:
        engine = bench_fused.LlamaEngine(Path(args.gguf), args.threads, context, logits_all=True)
    else:
        engine = bench_fused.OurEngine(Path(args.model_dir), args.threads, context)
    windows = len(ids) // context if args.windows == 0 else min(args.windows, len(ids) // context)
    half = context // 2
    totals = {"full": [0.0, 0], "second_half": [0.0, 0]}
    started = time.monotonic()
    for w in range(windows):
        window = ids[w * context:(w + 1) * context].tolist()
        logits = engine.all_logits(window)[:-1].astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        nll = norm - logits[np.arange(context - 1), window[1:]]
        totals["full"][0] += float(nll.sum())
        totals["full"][1] += context - 1
        # llama-perplexity: logits at positions half .. context-2, predicting tokens half+1 .. context-1
        totals["second_half"][0] += float(nll[half:].sum())
        totals["second_half"][1] += context - 1 - half
        elapsed = time.monotonic() - started
        print(f"{args.engine}: window {w + 1}/{windows}, ppl {math.exp(totals['second_half'][0] / totals['second_half'][1]):.4f}"
              f", {elapsed:.0f} s, ETA {elapsed / (w + 1) * (windows - w - 1):.0f} s", file=sys.stderr, flush=True)
    result = {f"ppl_{k}": math.exp(nll / count) for k, (nll, count) in totals.items()}
    result.update({"windows": windows, "scored_second_half": totals["second_half"][1],
                   "scored_full": totals["full"][1], "seconds": time.monotonic() - started})
    return result


def run_worker(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"worker {argv[-2:]} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="GGUF to compare on (default: the default model's Q4_K_M)")
    parser.add_argument("--data", type=Path, default=bench_fused.DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ppl-context", type=int, default=512)
    parser.add_argument("--windows", type=int, default=0, help="windows to score (0: the whole test set)")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--engine", choices=[LLAMA, OURS])
    parser.add_argument("--ids")
    parser.add_argument("--model-dir")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(score_worker(args)))
        return
    from bench_llama32 import build_ours

    gguf = args.gguf or default_q4_k_m()
    with BenchRecord(f"wiki-ppl-{gguf.stem}", vars(args)) as record:
        model_dir = build_ours(gguf)
        text = (args.data / WIKI).read_text(encoding="utf-8")
        ids = token_ids(gguf, model_dir, text)
        with tempfile.TemporaryDirectory(prefix="bench-wiki-ppl.") as tmp:
            ids_file = Path(tmp) / "ids.npy"
            np.save(ids_file, ids)
            common = ["--worker", "--ids", str(ids_file), "--gguf", str(gguf), "--model-dir", str(model_dir),
                      "--threads", str(args.threads), "--ppl-context", str(args.ppl_context),
                      "--windows", str(args.windows)]
            results = {engine: run_worker([*common, "--engine", engine]) for engine in (LLAMA, OURS)}
        record.figures.update({
            "gguf": gguf.name, "gguf_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
            "text_tokens": len(ids), "tokenizers_identical": True, **results,
            "ratio_second_half": results[OURS]["ppl_second_half"] / results[LLAMA]["ppl_second_half"],
            "ratio_full": results[OURS]["ppl_full"] / results[LLAMA]["ppl_full"]})
        f = record.figures
        print(f"{gguf.name}, WikiText-2 test, {f[LLAMA]['windows']} windows of {args.ppl_context} tokens "
              f"({len(ids)} tokens in the text; tokenizers identical)")
        print("| scoring | llama.cpp | ours | ratio (≤1.01) |\n|---|---|---|---|")
        for key, label in (("second_half", "second half of each window (llama-perplexity)"),
                           ("full", "every prediction in the window")):
            print(f"| {label} | {f[LLAMA]['ppl_' + key]:.4f} | {f[OURS]['ppl_' + key]:.4f} | "
                  f"{f['ratio_' + key]:.4f} |")


if __name__ == "__main__":
    main()
