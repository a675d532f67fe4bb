"""GGUF file -> Hugging Face folder (safetensors weights + fixed tokenizer files).

Weights go through transformers' GGUF loader (dequantized to fp32); the tokenizer is rebuilt
from the GGUF metadata by `bundler.gguf_tokenizer` and checked token for token against a
reference BPE over the GGUF's own vocabulary.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from bundler.errors import BuildError
from bundler.fs import atomic_folder
from bundler.gguf_tokenizer import GgufVocabulary, build_tokenizer, read_vocabulary, reference_tokenizer, write_tokenizer_files
from bundler.silence import silence_third_party
from bundler.progress import ProgressCallback, no_progress

# Digits, punctuation, accents, CJK, emoji, whitespace runs, contractions, a control string as text.
TOKENIZER_CHECK_TEXT = (
    "Hello, world! In 2024 the pump ran 1,234.5 hours at 37.5\u00b0C;   three spaces,\ttab\t\tand\n\nnew lines.\n"
    "Na\u00efve caf\u00e9 \u00dcber \u6771\u4eac \U0001f680 it's we'll they'd I'M <|im_start|> x=3.14159 $1,000 --flag=on"
)


def check_tokenizer(path: Path, vocab: GgufVocabulary, text: str = TOKENIZER_CHECK_TEXT) -> None:
    """Raise BuildError unless the built tokenizer gives the reference BPE's ids on `text`."""
    tokenizer = build_tokenizer(vocab)
    tokenizer.encode_special_tokens = True
    built = tokenizer.encode(text, add_special_tokens=False).ids
    expected = reference_tokenizer(vocab).encode(text)
    if built != expected:
        at = next((i for i, (a, b) in enumerate(zip(built, expected)) if a != b), min(len(built), len(expected)))
        raise BuildError(path, f"converted tokenizer disagrees with the GGUF vocabulary at token {at}")


# Llama 3 rope parameters llama.cpp's converter could have baked into `rope_freqs.weight`; any set
# that reproduces the stored factors gives the same rotary frequencies, hence the same model.
_LLAMA3_ORIGINAL_CONTEXTS = (8192, 4096, 2048, 16384, 1024, 512, 256, 32768)
_LLAMA3_FREQ_FACTORS = ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0), (0.5, 4.0))


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    """Per-frequency divisors as llama.cpp's converter writes them for rope_type llama3."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    original = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    mixed = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mixed))


def rope_scaling_from_gguf(path: Path, reader, theta: float, head_dim: int) -> Optional[dict]:
    """The Hugging Face `rope_scaling` matching the GGUF's rope_freqs tensor (None when it has none).

    transformers' GGUF loader ignores this tensor, which would silently change Llama 3.1+ models.
    """
    tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None
    stored = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    for original in _LLAMA3_ORIGINAL_CONTEXTS:
        for low, high in _LLAMA3_FREQ_FACTORS:
            scaling = {
                "rope_type": "llama3",
                "factor": float(stored.max()),
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original,
            }
            if np.allclose(llama3_rope_factors(theta, head_dim, scaling), stored, rtol=1e-5, atol=0):
                return scaling
    raise BuildError(path, "rope_freqs.weight matches no llama3 rope scaling this converter knows")


def convert_gguf(gguf_path: Path, out_dir: Path, progress: ProgressCallback = no_progress) -> Path:
    """Write a Hugging Face folder for `gguf_path` into `out_dir` (created atomically) and return it."""
    import torch
    from transformers import AutoModelForCausalLM

    from bundler.gguf_reader import open_reader

    progress("convert gguf", 0, 3)
    reader = open_reader(gguf_path)
    vocab = read_vocabulary(gguf_path, reader)
    check_tokenizer(gguf_path, vocab)
    progress("convert gguf", 1, 3)
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as work:
        try:
            with silence_third_party():
                model = AutoModelForCausalLM.from_pretrained(
                    str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
                )
        except Exception as exc:  # transformers raises many kinds on files it cannot map
            raise BuildError(gguf_path, f"transformers cannot load the GGUF weights: {exc}") from None
        progress("convert gguf", 2, 3)
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        scaling = rope_scaling_from_gguf(gguf_path, reader, config.rope_theta, head_dim)
        if scaling is not None:
            model.config.rope_scaling = scaling
        model.config.bos_token_id = vocab.bos_id
        model.config.eos_token_id = vocab.stop_ids[0] if len(vocab.stop_ids) == 1 else vocab.stop_ids
        model.config.pad_token_id = vocab.pad_id
        model.generation_config.bos_token_id = vocab.bos_id
        model.generation_config.eos_token_id = vocab.stop_ids
        model.generation_config.pad_token_id = vocab.pad_id
        model.save_pretrained(str(work), safe_serialization=True)
        write_tokenizer_files(vocab, work)
    progress("convert gguf", 3, 3)
    return out_dir
