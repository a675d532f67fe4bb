"""Model path figures: export time and size, decode speed through runtime.generation, greedy agreement.

The reference, measured in the same run on the same weights and threads, is PyTorch (transformers,
fp32, KV cache). Prints figures and ratios; asserts nothing.

    python bench/bench_model.py [--model PATH] [--data ../shared/data] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from bench_record import BenchRecord  # noqa: E402

from bundler.export_onnx import export_model  # noqa: E402
from bundler.gguf_convert import convert_gguf  # noqa: E402
from bundler.model_source import default_model_path, resolve_model  # noqa: E402
from runtime.bundle import Bundle  # noqa: E402
from runtime.decoder import load_decoder  # noqa: E402
from runtime.generation import GenerationConfig, generate  # noqa: E402
from runtime.tokenizer import ChatTokenizer  # noqa: E402
from tests.fixtures_model import write_model_info  # noqa: E402


def prompt_ids(tokenizer: ChatTokenizer, data: Path, count: int) -> list[int]:
    text = (data / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")
    return tokenizer.encode(text[:20000])[:count]


def time_ort(decoder, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy through runtime.generation: tokens, prefill seconds, decode seconds (tokens 2..n)."""
    config = GenerationConfig(max_new_tokens=new_tokens, speculative=False)
    started = time.perf_counter()
    tokens, first = [], 0.0
    for token in generate(decoder, prompt, config):
        tokens.append(token)
        if len(tokens) == 1:
            first = time.perf_counter()
    return tokens, first - started, time.perf_counter() - first


def time_torch(model, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    import torch

    with torch.no_grad():
        started = time.perf_counter()
        out = model(torch.tensor([prompt]), use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        first = time.perf_counter()
        past = out.past_key_values
        while len(tokens) < new_tokens:
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens, first - started, time.perf_counter() - first


def agreement(a: list[int], b: list[int]) -> str:
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{prefix}/{len(b)} identical before the first difference"


def forced_agreement(decoder, prompt: list[int], reference: list[int]) -> float:
    """Share of positions where the decoder's top-1, fed the reference's own text, is the reference's token."""
    decoder.reset()
    logits = [decoder.forward(prompt[start : start + 64]) for start in range(0, len(prompt), 64)][-1][-1:]
    rows = [logits] + [decoder.forward(reference[start : start + 64]) for start in range(0, len(reference) - 1, 64)]
    predicted = np.concatenate(rows)[: len(reference)].argmax(-1)
    return float((predicted == np.asarray(reference)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file or HF folder (default: SmolLM2-135M)")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep exports here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse the exports already in --work (no export timing)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    source = resolve_model(args.model or default_model_path())
    with BenchRecord("model", vars(args)) as record, tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        work = args.work or Path(tmp)
        stagings = {}
        for quantization in ("fp32", "int4"):
            stagings[quantization] = work / quantization
            if not args.reuse:
                started = time.perf_counter()
                info = export_model(source, quantization, work / quantization / "model")
                print(f"export {quantization}: {time.perf_counter() - started:.1f} s")
                write_model_info(work / quantization, info)
            sizes = {p.name: p.stat().st_size / 1e6 for p in (work / quantization / "model").glob("model.onnx*")}
            print(f"size {quantization}: model.onnx {sizes['model.onnx']:.1f} MB + "
                  f"model.onnx.data {sizes['model.onnx.data']:.1f} MB = {sum(sizes.values()):.1f} MB")

        hf_dir = source.path
        if source.kind == "gguf":
            hf_dir = work / "hf" if args.reuse else convert_gguf(source.path, work / "hf")
        tokenizer = ChatTokenizer.from_folder(hf_dir)
        prompt = prompt_ids(tokenizer, args.data, args.prompt_tokens)
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        print(f"prompt {len(prompt)} tokens (WikiText-2 test), {args.new_tokens} new tokens, {args.threads} threads, "
              f"median of {args.repeats}")

        results, forced = {}, {"torch": 1.0}
        for name in ("torch", "fp32", "int4"):
            runs = []
            if name == "torch":
                for _ in range(args.repeats):
                    runs.append(time_torch(model, prompt, args.new_tokens))
            else:
                decoder = load_decoder(Bundle.open(stagings[name]), threads=args.threads)
                for _ in range(args.repeats):
                    runs.append(time_ort(decoder, prompt, args.new_tokens))
                forced[name] = forced_agreement(decoder, prompt, results["torch"][0])
                del decoder
            prefill = statistics.median(r[1] for r in runs)
            decode = statistics.median(r[2] for r in runs)
            results[name] = (runs[0][0], len(prompt) / prefill, (args.new_tokens - 1) / decode)
            record.figures[name] = {"prefill_tok_s": results[name][1], "decode_tok_s": results[name][2],
                                    "top1_on_reference_text": forced[name]}
        reference = results["torch"]
        for name, (tokens, prefill_rate, decode_rate) in results.items():
            label = "PyTorch fp32 (reference)" if name == "torch" else f"ORT {name} via runtime.generation"
            print(f"{label:34s} prefill {prefill_rate:7.1f} tok/s ({prefill_rate / reference[1]:.2f}x)  "
                  f"decode {decode_rate:6.1f} tok/s ({decode_rate / reference[2]:.2f}x)  "
                  f"greedy vs PyTorch: {agreement(tokens, reference[0])}, "
                  f"top-1 on PyTorch's text {forced[name]:.1%}")


if __name__ == "__main__":
    main()
