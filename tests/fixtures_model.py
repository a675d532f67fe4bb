"""Shared model fixtures: a tiny random Llama-3.2-shaped model, its exports, the default model.

Everything expensive is built once and cached under <repo>/.cache/test-models/<hash of inputs>,
where the inputs include the source of the bundler modules that produce it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from bundler.code_digest import code_digest
from runtime import layout
from runtime.manifest import ModelInfo

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / ".cache" / "test-models"
# The builder code these fixtures run: their import closure (and this file) keys the cache.
BUILDER_MODULES = ("bundler.gguf_tokenizer", "bundler.gguf_convert", "bundler.export_onnx", "bundler.model_source")
DONE_MARK = ".complete"

# Llama 3.2's shape in miniature: llama3 rope scaling, tied embeddings, grouped-query attention.
TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    },
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    # wider than the usual 0.02 so that logits have clear winners and greedy paths are stable
    "initializer_range": 0.1,
}
TINY_SEED = 0


def _digest(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\0")
    digest.update(code_digest(*BUILDER_MODULES).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:20]


def cached_folder(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` once per key; later calls (and sessions) get the finished folder."""
    dest = CACHE_ROOT / f"{name}-{key}"
    if (dest / DONE_MARK).is_file():
        return dest
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=CACHE_ROOT))
    try:
        build(work)
        (work / DONE_MARK).touch()
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def write_model_info(folder: Path, info: ModelInfo) -> None:
    """Describe the model exported into `folder`/model, as the builder's model cache does (runtime/layout.py)."""
    (folder / layout.MODEL_INFO).write_text(info.to_json(), encoding="utf-8")


def build_tiny_llama(folder: Path) -> None:
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bundler.gguf_tokenizer import read_vocabulary, write_tokenizer_files
    from bundler.model_source import default_model_path

    gguf_path = default_model_path()
    vocab = read_vocabulary(gguf_path, gguf.GGUFReader(str(gguf_path)))
    config = LlamaConfig(
        vocab_size=len(vocab.tokens), bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, **TINY_LLAMA
    )
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    write_tokenizer_files(vocab, folder)


def export_staging(source_dir: Path, quantization: str, folder: Path) -> None:
    from bundler.export_onnx import export_model
    from bundler.model_source import resolve_model

    info = export_model(resolve_model(source_dir), quantization, folder / "model")
    write_model_info(folder, info)


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """Hugging Face folder: tiny random Llama-3.2-shaped weights + the SmolLM2 tokenizer (vocab 49152, ChatML)."""
    return cached_folder("tiny-llama", _digest(TINY_LLAMA, TINY_SEED), build_tiny_llama)


@pytest.fixture(scope="session")
def tiny_model_staging(tiny_llama_dir) -> Callable[[str], Path]:
    """tiny_model_staging("fp32" | "int4" | "int8") -> folder with model/ and its model_info.json."""

    def staging(quantization: str) -> Path:
        key = _digest(TINY_LLAMA, TINY_SEED, quantization)
        return cached_folder(f"tiny-staging-{quantization}", key, lambda f: export_staging(tiny_llama_dir, quantization, f))

    return staging


@pytest.fixture(scope="session")
def default_model_hf_dir() -> Path:
    """The default GGUF (SmolLM2-135M-Instruct) converted to a Hugging Face folder."""
    from bundler.fs import sha256_file
    from bundler.gguf_convert import convert_gguf
    from bundler.model_source import default_model_path

    gguf_path = default_model_path()
    key = _digest(sha256_file(gguf_path))
    return cached_folder("default-hf", key, lambda f: convert_gguf(gguf_path, f / "hf")) / "hf"


@pytest.fixture(scope="session")
def default_model_staging(default_model_hf_dir) -> Callable[[str], Path]:
    """default_model_staging(quantization) -> staging folder with the default model exported."""

    def staging(quantization: str) -> Path:
        key = _digest(str(default_model_hf_dir), quantization)
        return cached_folder(
            f"default-staging-{quantization}", key, lambda f: export_staging(default_model_hf_dir, quantization, f)
        )

    return staging


def _llama_cpp_permute(weights, heads: int):
    """llama.cpp stores q/k rows interleaved per rotary pair (convert_hf_to_gguf's permute)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_llama_gguf(hf_dir: Path, path: Path) -> None:
    """An F32 GGUF of a Hugging Face Llama folder, laid out as llama.cpp's converter writes it
    (permuted q/k, rope_freqs for llama3 scaling), with the default model's vocabulary."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from bundler.gguf_convert import llama3_rope_factors
    from bundler.model_source import default_model_path

    config = json.loads((hf_dir / "config.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    source = gguf.GGUFReader(str(default_model_path()))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads

    writer = gguf.GGUFWriter(str(path), "llama")
    # As published GGUFs: general.name is often a training-run name, the model's own name is
    # basename + size label.
    writer.add_name("Tiny Run 7 Ep2")
    writer.add_basename("Tiny-Llama-3.2")
    writer.add_size_label("3M")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        field = source.get_field(key)
        value = field.contents()
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            writer.add_array(key, value)
        elif key == "tokenizer.ggml.token_type":
            writer.add_token_types(value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if config.get("rope_scaling"):
        factors = llama3_rope_factors(config["rope_theta"], head_dim, config["rope_scaling"])
        writer.add_tensor("rope_freqs.weight", factors.astype(np.float32))
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        writer.add_tensor(f"blk.{layer}.attn_q.weight", _llama_cpp_permute(weights[prefix + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{layer}.attn_k.weight", _llama_cpp_permute(weights[prefix + "self_attn.k_proj.weight"], kv_heads))
        for ours, theirs in names.items():
            writer.add_tensor(f"blk.{layer}.{ours}.weight", weights[prefix + theirs + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama_dir) -> Path:
    """The tiny Llama-3.2-shaped model as an F32 GGUF file (llama.cpp layout, llama3 rope_freqs)."""
    folder = cached_folder("tiny-gguf", _digest(TINY_LLAMA, TINY_SEED, "gguf", "basename"), lambda f: write_llama_gguf(tiny_llama_dir, f / "tiny.gguf"))
    return folder / "tiny.gguf"
