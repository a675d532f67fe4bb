"""Fused-room fixtures: the model room's tiny Llama-3.2-shaped model also as a GGUF with exact blocks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "fused"


def _key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True) + Path(__file__).read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (what its converter writes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _copy_tokenizer_metadata(writer, source: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(source))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    writer.add_tokenizer_model(field("tokenizer.ggml.model"))
    writer.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    writer.add_token_list(field("tokenizer.ggml.tokens"))
    writer.add_token_types(field("tokenizer.ggml.token_type"))
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
    writer.add_eos_token_id(field("tokenizer.ggml.eos_token_id"))
    writer.add_pad_token_id(field("tokenizer.ggml.padding_token_id"))
    writer.add_add_bos_token(field("tokenizer.ggml.add_bos_token"))
    writer.add_chat_template(field("tokenizer.chat_template"))


def write_tiny_gguf(path: Path, hf_folder: Path, types: dict[str, str], tokenizer_gguf: Path) -> Path:
    """A GGUF of a tiny HF model with `tokenizer_gguf`'s vocabulary; `types` maps a tensor-name
    fragment to its GGUF type (default F32)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((hf_folder / "config.json").read_text())
    state = load_file(str(hf_folder / "model.safetensors"))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    _copy_tokenizer_metadata(writer, tokenizer_gguf)
    if config.get("rope_scaling"):
        # Llama 3 GGUFs carry their rope scaling as per-frequency divisors.
        from bundler.model_spec import ModelSpec

        spec = ModelSpec(0, config["hidden_size"], 0, config["num_attention_heads"], 0,
                         config["head_dim"], 0, 0.0, config["rope_theta"], 0, True)
        plain = spec.inverse_frequencies()
        spec.rope_scaling = config["rope_scaling"]
        writer.add_tensor("rope_freqs.weight", (plain / spec.inverse_frequencies()).astype(np.float32))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, value in state.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        if name in names:
            gname = names[name]
        else:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:-1])
            gname = f"blk.{layer}.{parts[rest]}.weight"
        if "attn_q" in gname:
            value = _permute(value, config["num_attention_heads"])
        elif "attn_k" in gname:
            value = _permute(value, config["num_key_value_heads"])
        kind = next((t for frag, t in types.items() if frag in gname), "F32")
        qtype = gguf.GGMLQuantizationType[kind]
        if value.ndim == 1 or kind == "F32":
            writer.add_tensor(gname, value.astype(np.float32))
        elif kind == "F16":
            writer.add_tensor(gname, value.astype(np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(value.astype(np.float32), qtype),
                              raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


GGUF_TYPES = {"token_embd": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q4_1",
              "attn_output": "Q4_0", "ffn_gate": "Q4_1", "ffn_up": "Q4_1", "ffn_down": "Q8_0"}


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama_dir) -> Path:
    """The model room's tiny Llama-3.2-shaped model as GGUF: Q4_0, Q4_1 and Q8_0 tensors, rope_freqs."""
    from bundler.model_source import default_model_path

    digest = hashlib.sha256((tiny_llama_dir / "model.safetensors").read_bytes()).hexdigest()
    path = CACHE / f"tiny-{_key(GGUF_TYPES, digest)}.gguf"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_tiny_gguf(tmp, tiny_llama_dir, GGUF_TYPES, default_model_path())
        os.replace(tmp, path)
    return path


# Random GGUF tensors in every block layout, for types the `gguf` package cannot quantize (K types).
# Float16 fields of each block: (byte offset, low, high). Scales positive, Q4_1/Q5_1 minimums signed;
# every other byte random.
_F16_FIELDS = {
    "Q4_0": [(0, 0.002, 0.02)], "Q8_0": [(0, 2e-4, 2e-3)], "Q5_0": [(0, 0.001, 0.01)],
    "Q4_1": [(0, 0.002, 0.02), (2, -0.15, 0.0)], "Q5_1": [(0, 0.001, 0.01), (2, -0.15, 0.0)],
    "Q4_K": [(0, 2e-4, 8e-4), (2, 1e-3, 5e-3)], "Q5_K": [(0, 1e-4, 4e-4), (2, 1e-3, 5e-3)],
    "Q6_K": [(208, 2e-5, 1e-4)],
}
# A K-type row must be a multiple of 256 wide: the smallest Llama shape that allows it.
TYPED_SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 320, "context": 256}


def random_tensor_bytes(qtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, bytes per row] of a valid `qtype` tensor (or the float values for float types)."""
    import gguf

    from bundler.gguf_reader import FLOAT_TYPES

    kind = gguf.GGMLQuantizationType[qtype]
    if qtype in FLOAT_TYPES:
        values = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        return gguf.quants.quantize(values, kind)
    per_block, size = gguf.GGML_QUANT_SIZES[kind]
    blocks = rng.integers(0, 256, (rows, cols // per_block, size), dtype=np.uint8)
    for offset, low, high in _F16_FIELDS[qtype]:
        field = rng.uniform(low, high, blocks.shape[:2]).astype(np.float16)
        blocks[..., offset:offset + 2] = field[..., None].view(np.uint8)
    return blocks.reshape(rows, -1)


def write_typed_gguf(path: Path, types: dict[str, str], seed: int = 0, shape: Optional[dict] = None,
                     metadata: Optional[Callable] = None) -> Path:
    """A tied-embedding Llama GGUF with random weights whose matrices have the given types
    (name fragment -> type; "" matches all); `metadata(writer)` adds more keys (a tokenizer)."""
    import gguf

    rng = np.random.default_rng(seed)
    s = shape or TYPED_SHAPE
    head_dim = s["hidden"] // s["heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(s["layers"])
    writer.add_context_length(s["context"])
    writer.add_embedding_length(s["hidden"])
    writer.add_feed_forward_length(s["ffn"])
    writer.add_head_count(s["heads"])
    writer.add_head_count_kv(s["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(500000.0)
    if metadata is not None:
        metadata(writer)
    shapes = {"token_embd.weight": (s["vocab"], s["hidden"]), "output_norm.weight": (s["hidden"],)}
    for layer in range(s["layers"]):
        p = f"blk.{layer}."
        shapes.update({
            p + "attn_norm.weight": (s["hidden"],), p + "ffn_norm.weight": (s["hidden"],),
            p + "attn_q.weight": (s["hidden"], s["hidden"]),
            p + "attn_k.weight": (s["kv_heads"] * head_dim, s["hidden"]),
            p + "attn_v.weight": (s["kv_heads"] * head_dim, s["hidden"]),
            p + "attn_output.weight": (s["hidden"], s["hidden"]),
            p + "ffn_gate.weight": (s["ffn"], s["hidden"]), p + "ffn_up.weight": (s["ffn"], s["hidden"]),
            p + "ffn_down.weight": (s["hidden"], s["ffn"]),
        })
    for name, dims in shapes.items():
        if len(dims) == 1:
            writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(dims)).astype(np.float32))
            continue
        qtype = next((t for fragment, t in types.items() if fragment in name), "F32")
        data = random_tensor_bytes(qtype, *dims, rng)
        if qtype in ("F32", "F16"):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
