"""The fused decoder graph: ONNX Runtime contrib operators, one node per real job.

Per layer: SkipSimplifiedLayerNormalization, one MatMulNBits for q/k/v, GroupQueryAttention
(rotary inside, KV cache shared in place), MatMulNBits for the output projection, one for
gate+up, SiLU, one for down. Inputs:

  input_ids [1, S] int64, seqlens_k [1] int32 (cache length after this step - 1),
  total_sequence_length [] int32, logits_rows [1] int64 (trailing rows that need logits),
  past_key_values.{i}.key/value [1, kv_heads, max_length, head_dim] float32

Outputs: logits [logits_rows, vocab], present.{i}.key/value (the same buffers when bound so).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Optional, Union

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bundler.block_quant import INT4_METHODS, NBitsWeight, from_gguf, quantize_float, quantize_symmetric8
from bundler.gguf_reader import BLOCK_TYPES, GgufTensor
from bundler.llama_weights import LlamaWeights
from bundler.model_spec import ModelSpec
from runtime.decoder import FUSED_GRAPH
from runtime.kquant_expand import DERIVED_PLACEHOLDER, FORMAT as KQUANT_FORMAT, HEADS, SUPER_BLOCK

GRAPH_NAME = FUSED_GRAPH
QUANTIZATIONS = ("gguf-exact", "int4", "int8", "fp32")
MS = "com.microsoft"
# A compact graph (build_graph(compact=True)) carries its K-quant block heads to bundler.fused_export.save_model
# as initializers named KQUANT_STASH + number, described by the metadata entry KQUANT_METADATA.
KQUANT_STASH = "kquant_blocks/"
KQUANT_METADATA = "edgebundle.kquant"
# MatMulNBits accuracy level 4: int8 activations, MLAS's fast kernels on x86 and ARM.
ACCURACY_LEVEL = 4


@dataclass
class QuantizationPlan:
    mode: str = "gguf-exact"
    block: int = 32
    method: str = "rtn"  # int4 only: one of INT4_METHODS
    # 0 keeps activations in float32: exact but ~10x slower; for checking the graph's wiring.
    accuracy_level: int = ACCURACY_LEVEL

    def check(self) -> None:
        if self.mode not in QUANTIZATIONS:
            raise ValueError(f"quantization {self.mode!r} is not supported (supported: {', '.join(QUANTIZATIONS)})")
        if self.mode == "int4":
            if self.block < 16 or self.block > 256 or self.block & (self.block - 1):
                raise ValueError(f"block size {self.block} is not a power of two in 16..256")
            if self.method not in INT4_METHODS:
                raise ValueError(f"int4 method {self.method!r} is not supported (supported: {', '.join(INT4_METHODS)})")

    @property
    def label(self) -> str:
        return f"int4-{self.method}-b{self.block}" if self.mode == "int4" else self.mode


Linear = Union[NBitsWeight, np.ndarray]  # float weights are [N, K]


EXTERNAL_BYTES = 1024  # initializers from this size go to the external data file (as onnx.save_model's threshold)
EXTERNAL_ALIGN = 4096  # each tensor starts on its own page: a reader that maps the file can map it alone


@dataclass
class ExternalData:
    """The open external data file initializers are streamed into, and its name beside model.onnx."""

    file: BinaryIO
    location: str

    def tensor(self, name: str, value: np.ndarray) -> TensorProto:
        """Write `value` at the next aligned offset; a TensorProto that points at it."""
        offset = -(-self.file.tell() // EXTERNAL_ALIGN) * EXTERNAL_ALIGN
        self.file.write(b"\0" * (offset - self.file.tell()))
        self.file.write(memoryview(value.reshape(-1)).cast("B"))
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype),
                             dims=value.shape, data_location=TensorProto.EXTERNAL)
        for key, text in (("location", self.location), ("offset", str(offset)), ("length", str(value.nbytes))):
            tensor.external_data.add(key=key, value=text)
        return tensor


@dataclass
class _Graph:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    count: int = 0
    accuracy_level: int = ACCURACY_LEVEL
    compact: bool = False
    kquant: dict = field(default_factory=dict)  # GGUF names of a weight's parts -> recipe entry (runtime/kquant_expand.py)
    stash: list = field(default_factory=list)  # (GgufTensor part, stash name) in recipe order
    external: Optional[ExternalData] = None

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        value = np.ascontiguousarray(value)
        if self.external is not None and value.nbytes >= EXTERNAL_BYTES:
            self.initializers.append(self.external.tensor(name, value))
        else:
            self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight_const(self, weight: "NBitsWeight", part: str, layout: str, stem: str, value: np.ndarray) -> str:
        """A per-block initializer of `weight`: for a K-quant weight of a compact graph, one the runtime
        computes from the GGUF block heads (a placeholder at DERIVED_PLACEHOLDER plus a recipe output)."""
        if not (self.compact and weight.gguf_parts):
            return self.const(stem, value)
        name = self.name(stem)
        placeholder = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype),
                                  dims=value.shape, data_location=TensorProto.EXTERNAL)
        # the offset in the runtime's file is set by bundler.fused_export.save_model
        for key, text in (("location", DERIVED_PLACEHOLDER.decode()), ("offset", "0"), ("length", str(value.nbytes))):
            entry = placeholder.external_data.add()
            entry.key, entry.value = key, text
        self.initializers.append(placeholder)
        key = tuple(tensor.name for tensor in weight.gguf_parts)
        if key not in self.kquant:
            parts = []
            for tensor in weight.gguf_parts:
                stash = f"{KQUANT_STASH}{len(self.stash)}"
                self.stash.append((tensor, stash))
                parts.append({"stash": stash, "rows": tensor.shape[0], "cols": tensor.shape[1]})
            self.kquant[key] = {"type": weight.gguf_parts[0].type, "parts": parts, "outputs": []}
        self.kquant[key]["outputs"].append({"name": name, "field": part, "layout": layout})
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs) -> list[str]:
        names = [self.name(op) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, names, name=self.name(op + "_node"), domain=domain, **attrs))
        return names


def build_graph(weights: LlamaWeights, plan: QuantizationPlan, progress=None, compact: bool = False,
                external: Optional[ExternalData] = None) -> onnx.ModelProto:
    """`compact`: the per-block tensors of K-quant weights are left to the runtime, which computes
    them at session start from the GGUF's block heads (runtime/kquant_expand.py); only
    bundler.fused_export writes such a graph, and bundler.fused_lowering takes only full ones.
    `external`: initializers are written to it as they are made (then memory holds one layer's weights,
    not the model's: a 3B Q4_K_M held whole and serialized peaked at 12.7 GB); else held in memory."""
    plan.check()
    spec = weights.spec
    g = _Graph(accuracy_level=plan.accuracy_level, compact=compact, external=external)
    convert = _Converter(weights, plan)

    # The embedding is one unit: quantizing a 128,256-token table takes as long as a few layers.
    steps = 1 + spec.num_layers
    if progress:
        progress("fused graph", 0, steps)
    cos, sin = spec.rotary_tables()
    cos_name, sin_name = g.const("cos_cache", cos), g.const("sin_cache", sin)
    hidden = _embedding(g, convert, spec)
    if progress:
        progress("fused graph", 1, steps)

    residual = None
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}."
        norm = g.const("attn_norm", weights.float(prefix + "input_layernorm.weight"))
        if residual is None:
            (x,) = g.node("SimplifiedLayerNormalization", [hidden, norm], axis=-1, epsilon=spec.rms_eps)
            residual = hidden
        else:
            x, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [hidden, residual, norm], 4,
                                       domain=MS, epsilon=spec.rms_eps)
        # Hidden states are 2-D [S, hidden] (one sequence) so that the Q4_1 remainder is one
        # Gemm; attention alone wants a batch axis.
        qkv = _linear(g, x, convert.fused([prefix + f"self_attn.{p}_proj.weight" for p in "qkv"]))
        (qkv,) = g.node("Unsqueeze", [qkv, g.const("axis0", np.array([0], dtype=np.int64))])
        attn, _, _ = g.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{layer}.key", f"past_key_values.{layer}.value",
             "seqlens_k", "total_sequence_length", cos_name, sin_name],
            ["attn_out_%d" % layer, f"present.{layer}.key", f"present.{layer}.value"],
            domain=MS, num_heads=spec.num_heads, kv_num_heads=spec.num_kv_heads,
            do_rotary=1, rotary_interleaved=0, scale=float(spec.head_dim ** -0.5),
        )
        (attn,) = g.node("Squeeze", [attn, g.const("axis0", np.array([0], dtype=np.int64))])
        attn = _linear(g, attn, convert.fused([prefix + "self_attn.o_proj.weight"]))
        norm = g.const("mlp_norm", weights.float(prefix + "post_attention_layernorm.weight"))
        x, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [attn, residual, norm], 4,
                                   domain=MS, epsilon=spec.rms_eps)
        gate_up = _linear(g, x, convert.fused([prefix + "mlp.gate_proj.weight", prefix + "mlp.up_proj.weight"]))
        split = g.const("split", np.array([spec.intermediate_size] * 2, dtype=np.int64))
        gate, up = g.node("Split", [gate_up, split], 2, axis=-1)
        (sig,) = g.node("Sigmoid", [gate])
        (act,) = g.node("Mul", [gate, sig])
        (act,) = g.node("Mul", [act, up])
        hidden = _linear(g, act, convert.fused([prefix + "mlp.down_proj.weight"]))
        if progress:
            progress("fused graph", layer + 2, steps)

    norm = g.const("final_norm", weights.float("model.norm.weight"))
    final, _, _, _ = g.node("SkipSimplifiedLayerNormalization", [hidden, residual, norm], 4,
                            domain=MS, epsilon=spec.rms_eps)
    (start,) = g.node("Neg", ["logits_rows"])
    end = g.const("end", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    axis = g.const("axis", np.array([0], dtype=np.int64))
    (last,) = g.node("Slice", [final, start, end, axis])
    _lm_head(g, convert, spec, last)
    return _model(g, spec)


class _Converter:
    """Turns named source weights into the plan's representation."""

    def __init__(self, weights: LlamaWeights, plan: QuantizationPlan):
        self.weights = weights
        self.plan = plan
        self.embedding: Linear | None = None  # set by _embedding, read by _lm_head to share blocks
        self.embedding_name = ""

    def one(self, name: str) -> Linear:
        tensor = self.weights.tensors[name]
        mode = self.plan.mode
        if mode == "gguf-exact":
            if not isinstance(tensor, GgufTensor):
                raise ValueError("gguf-exact needs a GGUF source (use int4, int8 or fp32 for float weights)")
            if tensor.type in BLOCK_TYPES:
                return from_gguf(tensor)
            return tensor.dequantize()
        values = self.weights.float(name)
        if mode == "fp32":
            return values
        if mode == "int8":
            return quantize_symmetric8(values, 32)
        return quantize_float(values, 4, self.plan.block, self.plan.method)

    def fused(self, names: list[str]) -> list[Linear]:
        """Concatenate along the outputs where the parts share one representation."""
        parts = [self.one(n) for n in names]
        if len(parts) == 1:
            return parts
        if all(isinstance(p, np.ndarray) for p in parts):
            return [np.concatenate(parts, axis=0)]
        if all(isinstance(p, NBitsWeight) for p in parts) and _same_layout(parts):
            return [_concat_nbits(parts)]
        return parts


def _same_layout(parts: list[NBitsWeight]) -> bool:
    first = parts[0]
    return all(
        p.bits == first.bits and p.block == first.block and p.k == first.k
        and (p.zero_points is None) == (first.zero_points is None)
        and (p.remainder is None) == (first.remainder is None)
        for p in parts
    )


def _concat_nbits(parts: list[NBitsWeight]) -> NBitsWeight:
    first = parts[0]
    def cat(attr):
        values = [getattr(p, attr) for p in parts]
        return None if values[0] is None else np.concatenate(values, axis=0)
    same_type = all(p.gguf_parts for p in parts) and len({q.type for p in parts for q in p.gguf_parts}) == 1
    return NBitsWeight(first.bits, first.block, sum(p.n for p in parts), first.k, cat("packed"),
                       cat("scales"), zero_points=cat("zero_points"), remainder=cat("remainder"),
                       gguf_parts=tuple(q for p in parts for q in p.gguf_parts) if same_type else ())


def _linear(g: _Graph, x: str, parts: list[Linear]) -> str:
    outputs = [_one_linear(g, x, p) for p in parts]
    if len(outputs) == 1:
        return outputs[0]
    return g.node("Concat", outputs, axis=-1)[0]


def _one_linear(g: _Graph, x: str, weight: Linear, packed: str = "", output: str = "") -> str:
    """x @ weight.T; `packed` names an existing initializer holding the codes (the tied embedding's)."""
    outputs = [output] if output else 1
    if isinstance(weight, np.ndarray):
        return g.node("MatMul", [x, g.const("w", weight.T.astype(np.float32))], outputs)[0]
    inputs = [x, packed or g.const("w_q", weight.packed),
              g.weight_const(weight, "scales", "matmul", "w_scale", weight.scales.reshape(-1))]
    if weight.zero_points is not None:
        inputs.append(g.weight_const(weight, "zeros", "matmul", "w_zero", weight.zero_points.reshape(-1)))
    (y,) = g.node("MatMulNBits", inputs, 1 if weight.remainder is not None else outputs, domain=MS,
                  K=weight.k, N=weight.n, bits=weight.bits, block_size=weight.block, accuracy_level=g.accuracy_level)
    if weight.remainder is None:
        return y
    # Remainder of the types with a minimum: sum x over each block, times each output's per-block remainder.
    blocks = weight.k // weight.block
    shape = g.const("block_shape", np.array([-1, blocks, weight.block], dtype=np.int64))
    (xb,) = g.node("Reshape", [x, shape])
    (sums,) = g.node("ReduceSum", [xb, g.const("last_axis", np.array([-1], dtype=np.int64))], keepdims=0)
    remainder = g.weight_const(weight, "remainder", "matmul", "w_rem", weight.remainder.T.copy())
    return g.node("Gemm", [sums, remainder, y], outputs)[0]


def _embedding_weight(convert: _Converter) -> Linear:
    """GGUF blocks exactly where the source has them; float types as float values; else 8-bit."""
    name = "model.embed_tokens.weight"
    tensor = convert.weights.tensors[name]
    if isinstance(tensor, GgufTensor):
        if tensor.type in BLOCK_TYPES and convert.plan.mode == "gguf-exact":
            return from_gguf(tensor)
        if convert.plan.mode in ("gguf-exact", "fp32"):
            return tensor.dequantize()
    values = convert.weights.float(name)
    if convert.plan.mode == "fp32":
        return values
    return quantize_symmetric8(values, 32)


def _embedding(g: _Graph, convert: _Converter, spec: ModelSpec) -> str:
    weight = _embedding_weight(convert)
    convert.embedding = weight
    shape = g.const("hidden_shape", np.array([-1, spec.hidden_size], dtype=np.int64))
    if isinstance(weight, np.ndarray):
        convert.embedding_name = g.const("embed", weight)
        (rows,) = g.node("Gather", [convert.embedding_name, "input_ids"], axis=0)
    else:
        # One [vocab, blocks, bytes per block] initializer serves this and the tied lm_head's MatMulNBits.
        blocks = weight.k // weight.block
        convert.embedding_name = g.const("embed_q", weight.packed)
        inputs = [convert.embedding_name, "input_ids",
                  g.weight_const(weight, "scales", "gather", "embed_scale", weight.scales.reshape(weight.n, blocks, 1))]
        if weight.zero_points is not None:
            # Along the quantized axis there is one block per row of the last axis: one zero point
            # byte each (the low nibble for 4 bits).
            zeros = weight.zeros().astype(np.uint8).reshape(weight.n, blocks, 1)
            inputs.append(g.weight_const(weight, "zeros", "gather", "embed_zero", zeros))
        (rows,) = g.node("GatherBlockQuantized", inputs, domain=MS, gather_axis=0, quantize_axis=2,
                         block_size=weight.block, bits=weight.bits)
        if weight.remainder is not None:
            # [1, S, blocks, block] + the gathered per-block remainders broadcast over each block.
            remainder = g.weight_const(weight, "remainder", "gather", "embed_rem", weight.remainder)
            (rem,) = g.node("Gather", [remainder, "input_ids"], axis=0)
            (rem,) = g.node("Unsqueeze", [rem, g.const("last_axis", np.array([-1], dtype=np.int64))])
            (rows,) = g.node("Add", [rows, rem])
    return g.node("Reshape", [rows, shape])[0]


def _lm_head(g: _Graph, convert: _Converter, spec: ModelSpec, x: str) -> None:
    shared = convert.embedding
    if not convert.weights.has("lm_head.weight") and isinstance(shared, NBitsWeight):
        # Tied: the lm_head reads the embedding's own blocks (one copy in the file).
        _one_linear(g, x, shared, packed=convert.embedding_name, output="logits")
        return
    if not convert.weights.has("lm_head.weight") and convert.plan.mode in ("gguf-exact", "fp32"):
        # Tied float table: x @ E^T straight from the embedding's initializer, no second copy.
        g.node("Gemm", [x, convert.embedding_name], ["logits"], transB=1)
        return
    if convert.weights.has("lm_head.weight"):
        weight = convert.one("lm_head.weight")
    elif convert.plan.mode == "fp32":
        weight = shared
    else:
        weight = quantize_symmetric8(convert.weights.float("model.embed_tokens.weight"), 32)
    out = _one_linear(g, x, weight)
    g.node("Identity", [out], ["logits"])


def _model(g: _Graph, spec: ModelSpec) -> onnx.ModelProto:
    kv = [1, spec.num_kv_heads, "max_length", spec.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("logits_rows", TensorProto.INT64, [1]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", spec.vocab_size])]
    for layer in range(spec.num_layers):
        for part in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{part}", TensorProto.FLOAT, kv))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{part}", TensorProto.FLOAT, kv))
    stash = [numpy_helper.from_array(_heads(t), name) for t, name in g.stash]
    graph = helper.make_graph(g.nodes, GRAPH_NAME, inputs, outputs, g.initializers + stash)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
                              producer_name="edgebundle")
    model.ir_version = 10
    if g.kquant:
        recipe = {"format": KQUANT_FORMAT, "weights": list(g.kquant.values())}
        helper.set_model_props(model, {KQUANT_METADATA: json.dumps(recipe)})
    return model


def _heads(tensor: GgufTensor) -> np.ndarray:
    """The non-code bytes of each block of a K-quant tensor (runtime.kquant_expand.HEADS), flat."""
    rows, cols = tensor.shape
    blocks = np.ascontiguousarray(tensor.blocks).reshape(rows, cols // SUPER_BLOCK, -1)
    return np.ascontiguousarray(blocks[..., slice(*HEADS[tensor.type])]).reshape(-1)


def effective_weights(weights: LlamaWeights, plan: QuantizationPlan) -> LlamaWeights:
    """The float weights the graph of `plan` represents (for checking it against PyTorch)."""
    convert = _Converter(weights, plan)
    tensors = {}
    for name in weights.tensors:
        if name == "model.embed_tokens.weight":
            value = _embedding_weight(convert)
        elif name.endswith("norm.weight"):
            value = weights.float(name)
        else:
            value = convert.one(name)
        tensors[name] = value.dequantize() if isinstance(value, NBitsWeight) else value
    return LlamaWeights(weights.spec, tensors, weights.source, "effective")
