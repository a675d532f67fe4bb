"""GGUF files for tests: a Hugging Face Llama folder written as llama.cpp's converter lays it out, and
Llama GGUFs of random weights in any tensor type (the `gguf` package has no quantizer for the K types)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

# Tokenizer keys a Llama GGUF carries; copied as they are from another GGUF.
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")
# Hugging Face tensor-name parts -> llama.cpp's, per layer.
LAYER_TENSORS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved per rotary pair (convert_hf_to_gguf's permute)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def copy_tokenizer(writer, source: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key in TOKENIZER_KEYS:
        field = reader.get_field(key)
        if field is None:
            continue
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


def _add_shape(writer, layers: int, context: int, hidden: int, ffn: int, heads: int, kv_heads: int, eps: float,
               theta: float) -> None:
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_rope_freq_base(theta)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_llama_gguf(path: Path, hf_folder: Path, tokenizer_gguf: Path, types: Optional[dict[str, str]] = None,
                     naming: Optional[tuple[str, str, str]] = None) -> Path:
    """A GGUF of a Hugging Face Llama folder as llama.cpp's converter writes it (permuted q/k rows,
    rope_freqs for llama3 scaling), with `tokenizer_gguf`'s vocabulary. `types` maps a tensor-name
    fragment to a GGUF type the `gguf` package can quantize (default F32); `naming` is
    (general.name, basename, size label)."""
    import gguf
    from safetensors.numpy import load_file

    from bundler.gguf_convert import llama3_rope_factors

    config = json.loads((hf_folder / "config.json").read_text())
    state = load_file(str(hf_folder / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    types = types or {}
    writer = gguf.GGUFWriter(str(path), "llama")
    if naming is not None:
        # As published GGUFs: general.name is often a training-run name, the model's own name is
        # basename + size label.
        name, basename, size = naming
        writer.add_name(name)
        writer.add_basename(basename)
        writer.add_size_label(size)
    _add_shape(writer, config["num_hidden_layers"], config["max_position_embeddings"], config["hidden_size"],
               config["intermediate_size"], heads, kv_heads, config["rms_norm_eps"], config["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    if not types:
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    copy_tokenizer(writer, tokenizer_gguf)
    if config.get("rope_scaling"):
        factors = llama3_rope_factors(config["rope_theta"], head_dim, config["rope_scaling"])
        writer.add_tensor("rope_freqs.weight", factors.astype(np.float32))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for name, value in state.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        if name in names:
            gname = names[name]
        else:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:-1])
            gname = f"blk.{layer}.{LAYER_TENSORS[rest]}.weight"
        if "attn_q" in gname:
            value = llama_cpp_permute(value, heads)
        elif "attn_k" in gname:
            value = llama_cpp_permute(value, kv_heads)
        kind = next((t for fragment, t in types.items() if fragment in gname), "F32")
        if value.ndim == 1 or kind == "F32":
            writer.add_tensor(gname, value.astype(np.float32))
        elif kind == "F16":
            writer.add_tensor(gname, value.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(gname, gguf.quants.quantize(value.astype(np.float32), qtype), raw_dtype=qtype)
    _finish(writer)
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
    _add_shape(writer, s["layers"], s["context"], s["hidden"], s["ffn"], s["heads"], s["kv_heads"], 1e-5, 500000.0)
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
    _finish(writer)
    return path
