"""K-quant weights travel at the GGUF's size: codes in the graph, per-block tensors computed exactly at start.

The oracle is `gguf.quants.dequantize` of the very bytes stored (random bytes in each type's block
layout, tests.gguf_files.random_tensor_bytes); sizes are checked against the formats' own arithmetic.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from bundler.block_quant import NBitsWeight, from_gguf
from bundler.gguf_reader import GgufTensor
from bundler.fused_export import model_info, save_model
from bundler.fused_graph import QuantizationPlan, build_graph
from bundler.llama_weights import load_llama
from bundler.onnx_relocate import unrelocate
from bundler.package import write_payload_file
from runtime import kquant_expand
from runtime.kquant_expand import DERIVED_ALIGNMENT
from runtime.bundle import MANIFEST_NAME, BundleError, DirectoryBundle, FileBundle
from runtime.fused_decoder import FusedDecoder
from runtime.manifest import BuildInfo, IndexInfo, Manifest
from tests.gguf_files import TYPED_SHAPE, random_tensor_bytes, write_typed_gguf

K_TYPES = ("Q4_K", "Q5_K", "Q6_K")
# Bits per weight of the graph's codes, of its per-block tensors (float32 scale, zero point, float32
# remainder; bundler/block_quant.py) and of the GGUF head stored instead of them (runtime/kquant_expand.py).
CODE_BITS = {"Q4_K": 4, "Q5_K": 8, "Q6_K": 8}
PER_BLOCK_BITS = {"Q4_K": (32 + 4 + 32) / 32, "Q5_K": (32 + 8 + 32) / 32, "Q6_K": (32 + 8) / 16}
HEAD_BITS = {"Q4_K": 16 * 8 / 256, "Q5_K": 16 * 8 / 256, "Q6_K": 18 * 8 / 256}
Q4_K_M = {"token_embd": "Q6_K", "attn_v": "Q6_K", "ffn_down": "Q6_K", "attn": "Q4_K", "ffn": "Q4_K"}
PROMPT = [int(i) for i in np.random.default_rng(7).integers(0, TYPED_SHAPE["vocab"], 20)]


def _recipe(kind: str, rows: int, cols: int, layouts=("matmul", "gather")) -> dict:
    outputs = [{"name": f"{field}.{layout}", "field": field, "layout": layout}
               for layout in layouts for field in ("scales", "zeros", "remainder")
               if not (field == "remainder" and kind == "Q6_K")]
    return {"format": kquant_expand.FORMAT,
            "weights": [{"type": kind, "parts": [{"offset": 0, "rows": rows, "cols": cols}], "outputs": outputs}]}


@pytest.mark.parametrize("kind", K_TYPES)
def test_k_quant_heads_expand_to_exactly_what_the_gguf_package_dequantizes(kind):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows, cols = 40, 768
    raw = random_tensor_bytes(kind, rows, cols, np.random.default_rng(3))
    expected = dequantize(raw, GGMLQuantizationType[kind]).reshape(rows, cols)
    heads = np.ascontiguousarray(raw.reshape(rows, cols // 256, -1)[..., slice(*kquant_expand.HEADS[kind])])
    tensors = kquant_expand.expand(_recipe(kind, rows, cols), heads.reshape(-1))
    codes = from_gguf(GgufTensor("w", kind, (rows, cols), raw))  # the graph's codes; its tensors unused
    remainder = tensors["remainder.matmul"].T if kind != "Q6_K" else None
    weight = NBitsWeight(codes.bits, codes.block, rows, cols, codes.packed, tensors["scales.matmul"].reshape(rows, -1),
                         zero_points=tensors["zeros.matmul"].reshape(rows, -1), remainder=remainder)
    assert np.abs(weight.dequantize() - expected).max() == 0
    assert np.abs(expected).max() > 0
    # The embedding's layout (GatherBlockQuantized) holds the same numbers.
    assert np.array_equal(tensors["scales.gather"][..., 0], weight.scales)
    assert np.array_equal(tensors["zeros.gather"][..., 0], weight.zeros())
    if remainder is not None:
        assert np.array_equal(tensors["remainder.gather"], weight.remainder)


def test_recipe_of_another_format_is_refused_with_one_line(tmp_path):
    with pytest.raises(kquant_expand.RecipeError) as error:
        kquant_expand.expand({**_recipe("Q4_K", 1, 256), "format": 99}, np.zeros(144, np.uint8))
    assert "format 99 is not supported" in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def q4_k_folders(tmp_path_factory):
    """A Q4_K GGUF built both ways: {"compact": folder, "full": folder}, and the GGUF path."""
    root = tmp_path_factory.mktemp("kquant")
    path = write_typed_gguf(root / "q4k.gguf", {"": "Q4_K"})
    weights = load_llama(path)
    folders = {}
    for label, compact in (("compact", True), ("full", False)):
        folders[label] = root / label
        folders[label].mkdir()
        save_model(build_graph(weights, QuantizationPlan("gguf-exact"), compact=compact), folders[label])
    return folders, path


def test_q4_k_model_is_stored_at_the_gguf_size_not_the_graph_tensor_size(q4_k_folders):
    folders, path = q4_k_folders
    weights = load_llama(path)
    k_weights = [t for t in weights.tensors.values() if getattr(t, "type", "") == "Q4_K"]
    count = sum(t.shape[0] * t.shape[1] for t in k_weights)
    heads = np.load(folders["compact"] / kquant_expand.DATA_FILE, mmap_mode="r")
    assert heads.nbytes == count * HEAD_BITS["Q4_K"] / 8
    full = (folders["full"] / "model.onnx.data").stat().st_size
    compact = (folders["compact"] / "model.onnx.data").stat().st_size + heads.nbytes
    # Codes, norms and rotary tables are the same in both; the tied lm_head has per-block tensors of
    # its own in the full form (the GatherBlockQuantized and MatMulNBits layouts differ).
    embedding = weights.tensors["model.embed_tokens.weight"].shape
    lm_head_extra = embedding[0] * embedding[1] * PER_BLOCK_BITS["Q4_K"] / 8
    saved = count * (PER_BLOCK_BITS["Q4_K"] - HEAD_BITS["Q4_K"]) / 8 + lm_head_extra
    assert abs((full - compact) - saved) <= 4096 * len(k_weights)  # external data alignment at most
    # Q4_K at the GGUF's 4.5 bits per weight instead of 6.125 (+ the lm_head's own 2.125).
    assert (CODE_BITS["Q4_K"] + HEAD_BITS["Q4_K"]) == 4.5
    assert compact <= full * (4.5 / 6.125) + 4096 * len(k_weights)


def test_build_budget_counts_a_compact_model_as_loaded_not_as_stored(q4_k_folders):
    from bundler.budget import _folder_bytes, _model_bytes

    folders, _ = q4_k_folders
    recipe = folders["compact"] / kquant_expand.RECIPE_FILE
    outputs = sum(len(w["outputs"]) for w in json.loads(recipe.read_text())["weights"])
    slack = DERIVED_ALIGNMENT * outputs + recipe.stat().st_size  # each computed tensor starts aligned
    full = _folder_bytes(folders["full"])
    # the computed tensors are the full graph's per-block tensors: the same bytes once loaded
    assert _folder_bytes(folders["compact"]) < full - slack
    assert full <= _model_bytes(folders["compact"]) <= full + slack
    assert _model_bytes(folders["full"]) == full


def test_compact_and_full_graphs_give_the_same_logits(q4_k_folders):
    folders, _ = q4_k_folders
    compact = FusedDecoder.from_model_dir(folders["compact"], threads=2, max_length=64).forward(PROMPT)
    full = FusedDecoder.from_model_dir(folders["full"], threads=2, max_length=64).forward(PROMPT)
    assert np.array_equal(compact, full)
    # the tensors' file is gone once the session exists (onnxruntime has read what it keeps)
    assert not list(folders["compact"].glob(".edgebundle-kquant-*"))


def _staging(root, path) -> None:
    weights = load_llama(path)
    plan = QuantizationPlan("gguf-exact")
    save_model(build_graph(weights, plan, compact=True), root / "model")
    manifest = Manifest(model=model_info(weights, plan), index=IndexInfo(documents=0, chunks=0, modes=[]),
                        build=BuildInfo(created="2026-01-01T00:00:00+00:00", builder_version="test", host="test",
                                        python="3"), target="host")
    (root / MANIFEST_NAME).write_text(manifest.to_json())


def test_packed_k_quant_bundle_runs_from_its_digested_entries(tmp_path):
    path = write_typed_gguf(tmp_path / "q4km.gguf", Q4_K_M)
    staging = tmp_path / "staging"
    (staging / "model").mkdir(parents=True)
    _staging(staging, path)
    payload = write_payload_file(staging, tmp_path / "station.payload")
    bundle = FileBundle(payload)
    entries = {e.name: e for e in bundle.manifest.entries}
    assert {kquant_expand.KQUANT_DATA, kquant_expand.KQUANT_RECIPE} <= set(entries)
    assert all(len(entries[n].sha256) == 64 for n in (kquant_expand.KQUANT_DATA, kquant_expand.KQUANT_RECIPE))
    logits = FusedDecoder.from_bundle(bundle, threads=2, max_length=64).forward(PROMPT)
    expected = FusedDecoder.from_model_dir(staging / "model", threads=2, max_length=64).forward(PROMPT)
    assert np.array_equal(logits, expected)

    # An update restages the model: its weights point at their entries again, the computed tensors stay placeholders.
    spans = {e.name: (e.offset, e.size) for e in bundle.manifest.entries}
    restaged = onnx.load_from_string(unrelocate(bytes(bundle.read("model/model.onnx")), "model/model.onnx", spans, "old"))
    locations = {e.value for t in restaged.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data", kquant_expand.DERIVED_PLACEHOLDER.decode()}

    # A damaged head is caught by the entry digests like any other weight.
    with open(payload, "r+b") as handle:
        handle.seek(entries[kquant_expand.KQUANT_DATA].offset + entries[kquant_expand.KQUANT_DATA].size - 1)
        last = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([last[0] ^ 0x01]))
    with pytest.raises(BundleError) as error:
        FileBundle(payload).verify()
    assert kquant_expand.KQUANT_DATA in str(error.value)


def test_bundle_with_a_recipe_of_another_format_names_the_bundle_and_the_format(tmp_path):
    path = write_typed_gguf(tmp_path / "q4k.gguf", {"": "Q4_K"})
    staging = tmp_path / "staging"
    (staging / "model").mkdir(parents=True)
    _staging(staging, path)
    recipe = staging / kquant_expand.KQUANT_RECIPE
    recipe.write_text(json.dumps({**json.loads(recipe.read_text()), "format": 2}))
    with pytest.raises(BundleError) as error:
        FusedDecoder.from_bundle(DirectoryBundle(staging), threads=2, max_length=64)
    message = str(error.value)
    assert "\n" not in message and str(staging) in message and "format 2 is not supported" in message
    shutil.rmtree(staging)
