"""Fused-graph fixtures: the tiny Llama-3.2-shaped model (tests/fixtures_model.py) as a GGUF with exact blocks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests import gguf_files
from tests.gguf_files import write_llama_gguf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "fused"


def _key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True) + Path(__file__).read_text() + Path(gguf_files.__file__).read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


GGUF_TYPES = {"token_embd": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q4_1",
              "attn_output": "Q4_0", "ffn_gate": "Q4_1", "ffn_up": "Q4_1", "ffn_down": "Q8_0"}


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama_dir) -> Path:
    """The tiny Llama-3.2-shaped model as GGUF: Q4_0, Q4_1 and Q8_0 tensors, rope_freqs."""
    from bundler.model_source import default_model_path

    digest = hashlib.sha256((tiny_llama_dir / "model.safetensors").read_bytes()).hexdigest()
    path = CACHE / f"tiny-{_key(GGUF_TYPES, digest)}.gguf"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_llama_gguf(tmp, tiny_llama_dir, default_model_path(), types=GGUF_TYPES)
        os.replace(tmp, path)
    return path
