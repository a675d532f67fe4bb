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
from tests import gguf_files
from tests.gguf_files import write_llama_gguf
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
    digest.update(Path(gguf_files.__file__).read_bytes())
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


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama_dir) -> Path:
    """The tiny Llama-3.2-shaped model as an F32 GGUF file (llama.cpp layout, llama3 rope_freqs)."""
    from bundler.model_source import default_model_path

    def write(folder: Path) -> None:
        write_llama_gguf(folder / "tiny.gguf", tiny_llama_dir, default_model_path(),
                         naming=("Tiny Run 7 Ep2", "Tiny-Llama-3.2", "3M"))

    folder = cached_folder("tiny-gguf", _digest(TINY_LLAMA, TINY_SEED, "gguf", "basename"), write)
    return folder / "tiny.gguf"
